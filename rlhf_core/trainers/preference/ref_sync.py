"""TR-DPO reference synchronisation (Gorbatovski et al. 2024, arXiv:2404.09656): a callback that, every
``ref_model_sync_steps`` optimizer steps, moves the reference towards the policy,
``ref <- alpha * policy + (1 - alpha) * ref`` (the paper's soft update, eq. 3; alpha = 1 is its hard update)."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback

from rlhf_core.trainers.online.models import sync_reference

__all__ = ["SyncReferenceCallback", "check_reference_sync"]


def check_reference_sync(args: Any, ref_model: nn.Module | None) -> None:
    """Clear errors where TR-DPO cannot apply: no separate reference model to update."""
    if not 0.0 <= args.ref_model_mixup_alpha <= 1.0:
        raise ValueError(f"ref_model_mixup_alpha must be in [0, 1], got {args.ref_model_mixup_alpha}")
    if args.ref_model_sync_steps < 1:
        raise ValueError(f"ref_model_sync_steps must be >= 1, got {args.ref_model_sync_steps}")
    if args.precompute_ref_log_probs:
        raise ValueError(
            "sync_ref_model=True needs reference log-probs of the updated reference: it cannot be used with "
            "precompute_ref_log_probs=True"
        )
    if ref_model is None:
        raise ValueError(
            "sync_ref_model=True needs a separate reference model to update; a PEFT policy's reference is its base "
            "model (adapter disabled): pass ref_model= or train without PEFT"
        )


class SyncReferenceCallback(TrainerCallback):
    """Soft-updates ``ref_model`` from the trained model every ``args.ref_model_sync_steps`` optimizer steps."""

    def __init__(self, ref_model: nn.Module, accelerator: Any) -> None:
        self.ref_model, self.accelerator = ref_model, accelerator

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any):
        if model is None or state.global_step % args.ref_model_sync_steps:
            return control
        unwrap = self.accelerator.unwrap_model
        sync_reference(unwrap(self.ref_model), unwrap(model), args.ref_model_mixup_alpha)
        return control
