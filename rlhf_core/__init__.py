"""rlhf_core: SFT, reward, DPO, KTO and PPO trainers in the shape TRL users know, with fused loss kernels.

Public names are re-exported here and imported lazily, so `import rlhf_core` stays cheap and loads
neither prefect nor mlflow (the pipeline layers above import those).
"""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # trainers and their configs
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
    "NonFiniteLossError": "rlhf_core.trainers.base",
    # models
    "AutoModelForCausalLMWithValueHead": "rlhf_core.models.value_head",
    "create_reference_model": "rlhf_core.models.reference",
    # kernels
    "fused_linear_logprobs": "rlhf_core.kernels",
    "fused_linear_cross_entropy": "rlhf_core.kernels",
    # data
    "SyntheticTask": "rlhf_core.data.synthetic",
    "judge_responses": "rlhf_core.data.synthetic",
    "TINY_MODEL": "rlhf_core.models.tiny",
    "tiny_model_path": "rlhf_core.models.tiny",
    "DataFormat": "rlhf_core.data.formats",
    "DataFormatError": "rlhf_core.data.formats",
    "load_hh_rlhf": "rlhf_core.data.hh_rlhf",
    "pack_dataset": "rlhf_core.data.packing",
    "SFTCollator": "rlhf_core.data.collators",
    "PreferenceCollator": "rlhf_core.data.collators",
    "PromptCollator": "rlhf_core.data.collators",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
