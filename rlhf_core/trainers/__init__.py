"""rlhf_core.trainers: the SFT, reward, DPO and PPO trainers, their configs and the shared trainer base.

Names are imported lazily so that importing one trainer never imports (or breaks on) another.
"""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "rlhf_core.trainers.config_defaults": "ConfigDefaultsMixin",
        "rlhf_core.trainers.base": "NonFiniteLossError TokenNormalisedTrainer",
        "rlhf_core.trainers.sft.config": "SFTConfig",
        "rlhf_core.trainers.sft.trainer": "SFTTrainer",
        "rlhf_core.trainers.preference.reward_config": "RewardConfig",
        "rlhf_core.trainers.preference.reward": "RewardTrainer",
        "rlhf_core.trainers.preference.dpo_config": "DPOConfig",
        "rlhf_core.trainers.preference.dpo": "DPOTrainer",
        "rlhf_core.trainers.preference.kto_config": "KTOConfig",
        "rlhf_core.trainers.preference.kto": "KTOTrainer",
        "rlhf_core.trainers.ppo.config": "PPOConfig",
        "rlhf_core.trainers.ppo.trainer": "PPOTrainer",
        "rlhf_core.trainers.online.config": "GRPOConfig RLOOConfig",
        "rlhf_core.trainers.online.grpo": "GRPOTrainer",
        "rlhf_core.trainers.online.rloo": "RLOOTrainer",
    },
)
