"""rlhf_core.losses: pure loss functions (tensors in, keyword-only hyperparameters, detached stats out).

One module per trainer: ``sft`` (here), ``reward`` and ``dpo`` (preference losses, the ``DPO_LOSSES`` registry),
``kto`` (unpaired preference losses, ``KTO_LOSSES``), ``ppo`` (masked statistics, KL estimators, GAE, clipped losses). Names are resolved lazily so that importing one
loss module never depends on another.
"""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "rlhf_core.losses.sft": "SFTLossOutput sft_loss",
        "rlhf_core.losses.reward": "RewardLossOutput reward_loss",
        "rlhf_core.losses.dpo": "DPOLossOutput DPO_LOSSES dpo_loss register_dpo_loss",
        "rlhf_core.losses.kto": "KTOLossOutput KTO_LOSSES kto_loss kto_reference_point register_kto_loss",
        "rlhf_core.losses.ppo": (
            "KL_ESTIMATORS clipped_policy_loss clipped_value_loss gae kl_estimate masked_mean masked_var "
            "masked_whiten"
        ),
    },
)
