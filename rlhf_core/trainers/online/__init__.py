"""rlhf_core.trainers.online: GRPOTrainer and RLOOTrainer with their configs (TRL 1.16's API), no value model."""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "GRPOConfig": "rlhf_core.trainers.online.config",
    "RLOOConfig": "rlhf_core.trainers.online.config",
    "GRPOTrainer": "rlhf_core.trainers.online.grpo",
    "RLOOTrainer": "rlhf_core.trainers.online.rloo",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
