"""rlhf_core.trainers: the SFT, reward, DPO and PPO trainers, their configs and the shared trainer base.

Names are imported lazily so that importing one trainer never imports (or breaks on) another.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ConfigDefaultsMixin": "rlhf_core.trainers.config_defaults",
    "NonFiniteLossError": "rlhf_core.trainers.base",
    "TokenNormalisedTrainer": "rlhf_core.trainers.base",
    "SFTConfig": "rlhf_core.trainers.sft.config",
    "SFTTrainer": "rlhf_core.trainers.sft.trainer",
    "RewardConfig": "rlhf_core.trainers.preference.reward_config",
    "RewardTrainer": "rlhf_core.trainers.preference.reward",
    "DPOConfig": "rlhf_core.trainers.preference.dpo_config",
    "DPOTrainer": "rlhf_core.trainers.preference.dpo",
    "KTOConfig": "rlhf_core.trainers.preference.kto_config",
    "KTOTrainer": "rlhf_core.trainers.preference.kto",
    "PPOConfig": "rlhf_core.trainers.ppo.config",
    "PPOTrainer": "rlhf_core.trainers.ppo.trainer",
    "GRPOConfig": "rlhf_core.trainers.online.config",
    "GRPOTrainer": "rlhf_core.trainers.online.grpo",
    "RLOOConfig": "rlhf_core.trainers.online.config",
    "RLOOTrainer": "rlhf_core.trainers.online.rloo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'rlhf_core.trainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
