"""rlhf_core.trainers: the SFT, reward, DPO and PPO trainers, their configs and the shared trainer base.

Names are imported lazily so that importing one trainer never imports (or breaks on) another.
"""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
