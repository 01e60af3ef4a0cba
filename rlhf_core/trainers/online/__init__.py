"""rlhf_core.trainers.online: GRPOTrainer and RLOOTrainer with their configs (TRL 1.16's API), no value model."""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "rlhf_core.trainers.online.config": "GRPOConfig RLOOConfig",
        "rlhf_core.trainers.online.grpo": "GRPOTrainer",
        "rlhf_core.trainers.online.rloo": "RLOOTrainer",
    },
)
