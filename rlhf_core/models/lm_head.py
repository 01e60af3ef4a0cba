"""The LM head of a causal LM, and whether the fused kernels may use its weight directly.

The fused "linear -> log-prob / cross-entropy" kernels (``rlhf_core.kernels``) read the head's ``weight`` and
``bias``; that is the head's own function only for a plain ``nn.Linear``. Any other head (LoRA on ``lm_head``, a
quantised or custom projection) hides its effective weight: callers then fall back to the model's (or the
head's) own forward, which builds the logits. ``fusable_lm_head`` is that one check, for SFT, DPO, KTO, PPO and
generation alike.
"""

from __future__ import annotations

from torch import nn

__all__ = ["fusable_lm_head", "is_plain_linear", "lm_head_of"]


def lm_head_of(model: nn.Module) -> nn.Module:
    """The vocabulary projection (``get_output_embeddings``) of a causal LM, PEFT and value-head wrappers included."""
    while not hasattr(model, "get_output_embeddings") and isinstance(
        getattr(model, "module", None), nn.Module
    ):
        model = model.module  # DDP / accelerate wrappers
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise TypeError(
            f"{type(model).__name__} has no output embeddings (lm head) to compute log-probs from"
        )
    return head


def is_plain_linear(head: nn.Module) -> bool:
    """True when ``head``'s function is exactly ``x @ weight.T + bias`` (a plain ``nn.Linear``, no subclass)."""
    return type(head) is nn.Linear


def fusable_lm_head(model: nn.Module) -> nn.Linear | None:
    """The LM head when the fused kernels may use its weight (a plain ``nn.Linear``), else None."""
    try:
        head = lm_head_of(model)
    except TypeError:
        return None
    return head if is_plain_linear(head) else None
