"""rlhf_core.trainers.online: GRPOTrainer and RLOOTrainer with their configs (TRL 1.16's API), no value model."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "GRPOConfig": "rlhf_core.trainers.online.config",
    "RLOOConfig": "rlhf_core.trainers.online.config",
    "GRPOTrainer": "rlhf_core.trainers.online.grpo",
    "RLOOTrainer": "rlhf_core.trainers.online.rloo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'rlhf_core.trainers.online' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
