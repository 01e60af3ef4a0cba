"""The models of an online run: the policy (loaded by name or given), its tokenizer, and the reference if beta != 0.

``beta=0`` keeps no reference model at all. A PEFT policy has no reference copy either: its base model with the
adapters disabled is the reference (as in TRL and PPOTrainer; see ``ppo.experience.reference_logprobs``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlhf_core.models.module_state import disable_dropout, freeze
from rlhf_core.models.reference import create_reference_model
from rlhf_core.trainers.model_setup import apply_peft, is_peft_model, load_model, load_processing_class

__all__ = ["build_models", "sync_reference"]


def build_models(
    model: Any, args: Any, processing_class: Any, peft_config: Any
) -> tuple[nn.Module, Any, Any]:
    """(policy, reference model or None, tokenizer) from what the user passed."""
    if model is None:
        raise ValueError("a model is required (a causal LM object, a name/path or 'rlhf-tiny')")
    kwargs = dict(args.model_init_kwargs or {})
    if args.trust_remote_code:
        kwargs["trust_remote_code"] = True
    tokenizer = load_processing_class(model, processing_class)
    policy = load_model(model, model_init_kwargs=kwargs or None)
    policy = apply_peft(policy, peft_config, gradient_checkpointing=bool(args.gradient_checkpointing))
    ref_model = None
    if args.beta != 0.0 and not is_peft_model(policy):
        ref_model = freeze(create_reference_model(policy))
    if args.disable_dropout:
        for module in (policy, ref_model):
            disable_dropout(module)
    return policy, ref_model, tokenizer


@torch.no_grad()
def sync_reference(ref_model: nn.Module, policy: nn.Module, alpha: float) -> None:
    """TR-DPO's soft update (arXiv:2404.09656 eq. 3): ref <- alpha * policy + (1 - alpha) * ref."""
    for ref_param, param in zip(ref_model.parameters(), policy.parameters()):
        ref_param.mul_(1.0 - alpha).add_(param.detach().to(ref_param.dtype), alpha=alpha)
