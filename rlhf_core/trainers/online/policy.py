"""The trained module of GRPO/RLOO: a causal LM whose forward returns completion log-probs (no value model).

The forward runs the transformer body once and projects the completion positions through the fused log-prob
kernel (``rlhf_core.rollout.logprobs``), so the [tokens, vocab] logits are never materialised. Because that
computation is this module's ``forward``, ``accelerator.prepare`` wraps it in DDP and the gradients are
all-reduced (calling the body and the head of an unwrapped model directly would skip the reduction).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from rlhf_core.models.value_head import backbone
from rlhf_core.rollout.logprobs import ResponseBatch, lm_head_of, response_hidden_states, token_logprobs

__all__ = ["CompletionPolicy"]


class CompletionPolicy(nn.Module):
    """``policy`` (a causal LM, possibly PEFT-wrapped); ``forward`` gives per-token log-probs and entropies."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    @property
    def config(self) -> Any:
        return self.policy.config

    def forward(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        *,
        temperature: float = 1.0,
        return_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probs [B, R] at ``temperature``, 0 where masked; entropies [B, R] detached, or None)."""
        batch = ResponseBatch(prompt_ids, prompt_mask, response_ids, response_mask)
        hidden = response_hidden_states(backbone(self.policy), batch)
        return token_logprobs(
            hidden, lm_head_of(self.policy), response_ids, response_mask,
            temperature=temperature, return_entropy=return_entropy,
        )  # fmt: skip

    def save_pretrained(self, directory: str | os.PathLike[str], **kwargs: Any) -> None:
        self.policy.save_pretrained(directory, **kwargs)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        if hasattr(self.policy, "gradient_checkpointing_enable"):
            self.policy.gradient_checkpointing_enable(**kwargs)
