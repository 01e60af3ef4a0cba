"""rlhf_core: SFT, reward, DPO, KTO and PPO trainers in the shape TRL users know, with fused loss kernels.

Public names are re-exported here and imported lazily, so `import rlhf_core` stays cheap and loads
neither prefect nor mlflow (the pipeline layers above import those).
"""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "rlhf_core.trainers": (
            "SFTConfig SFTTrainer RewardConfig RewardTrainer DPOConfig DPOTrainer KTOConfig KTOTrainer "
            "PPOConfig PPOTrainer GRPOConfig GRPOTrainer RLOOConfig RLOOTrainer NonFiniteLossError"
        ),
        "rlhf_core.models.value_head": "AutoModelForCausalLMWithValueHead",
        "rlhf_core.models.reference": "create_reference_model",
        "rlhf_core.kernels": "fused_linear_logprobs fused_linear_cross_entropy",
        "rlhf_core.data": (
            "SyntheticTask judge_responses DataFormat DataFormatError load_hh_rlhf pack_dataset SFTCollator "
            "PreferenceCollator PromptCollator"
        ),
        "rlhf_core.models.tiny": "TINY_MODEL tiny_model_path",
    },
)
