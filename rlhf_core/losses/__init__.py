"""rlhf_core.losses: pure loss functions (tensors in, keyword-only hyperparameters, detached stats out).

One module per trainer: ``sft`` (here), ``reward`` and ``dpo`` (preference losses, the ``DPO_LOSSES`` registry),
``kto`` (unpaired preference losses, ``KTO_LOSSES``), ``ppo`` (masked statistics, KL estimators, GAE, clipped losses). Names are resolved lazily so that importing one
loss module never depends on another.
"""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "SFTLossOutput": "rlhf_core.losses.sft",
    "sft_loss": "rlhf_core.losses.sft",
    "RewardLossOutput": "rlhf_core.losses.reward",
    "reward_loss": "rlhf_core.losses.reward",
    "DPOLossOutput": "rlhf_core.losses.dpo",
    "DPO_LOSSES": "rlhf_core.losses.dpo",
    "dpo_loss": "rlhf_core.losses.dpo",
    "register_dpo_loss": "rlhf_core.losses.dpo",
    "KTOLossOutput": "rlhf_core.losses.kto",
    "KTO_LOSSES": "rlhf_core.losses.kto",
    "kto_loss": "rlhf_core.losses.kto",
    "kto_reference_point": "rlhf_core.losses.kto",
    "register_kto_loss": "rlhf_core.losses.kto",
    "KL_ESTIMATORS": "rlhf_core.losses.ppo",
    "clipped_policy_loss": "rlhf_core.losses.ppo",
    "clipped_value_loss": "rlhf_core.losses.ppo",
    "gae": "rlhf_core.losses.ppo",
    "kl_estimate": "rlhf_core.losses.ppo",
    "masked_mean": "rlhf_core.losses.ppo",
    "masked_var": "rlhf_core.losses.ppo",
    "masked_whiten": "rlhf_core.losses.ppo",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
