"""The trained module of GRPO/RLOO: a causal LM whose forward returns completion log-probs (no value model).

The forward runs the transformer body and projects the completion positions through the fused log-prob kernel
(``rlhf_core.rollout.logprobs.policy_logprobs``, PPO's path too), so the [tokens, vocab] logits are never
materialised. Because that computation is this module's ``forward``, ``accelerator.prepare`` wraps it in DDP and
the gradients are all-reduced (calling the body and the head of an unwrapped model directly would skip it).

A micro-batch of GRPO holds several completions of the same prompt, and prompts are most of the tokens (HH
prompts: ~100 tokens for 32 completion tokens). ``shared_prompt_hidden_states`` runs each distinct prompt once,
repeats its KV cache (autograd flows back through the repeat into the one prompt pass) and runs the completions
on it: the same log-probs and gradients as the joint forward, for far fewer positions.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from rlhf_core.models.value_head import backbone
from rlhf_core.rollout.generation import _cache_kwarg, position_ids_from_mask
from rlhf_core.rollout.logprobs import ResponseBatch, policy_logprobs

__all__ = ["CompletionPolicy", "shared_prompt_hidden_states"]


def shared_prompt_hidden_states(body: nn.Module, batch: ResponseBatch) -> torch.Tensor | None:
    """The hidden states [B, R, H] predicting the response tokens, each distinct prompt of ``batch`` run once.

    None when no two rows share a prompt (the joint forward is as cheap), or when gradient checkpointing is on
    (transformers drops the cache of a checkpointed layer, so the completions could not attend to the prompt).
    """
    checkpointing = getattr(body, "is_activation_checkpointing", None)  # transformers 5's name of the flag
    if checkpointing is None:
        checkpointing = getattr(body, "is_gradient_checkpointing", False)
    if checkpointing and body.training and torch.is_grad_enabled():
        return None
    prompt_len, response_len = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    keys = torch.cat([batch.prompt_ids, batch.prompt_mask.to(batch.prompt_ids.dtype)], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    if unique.shape[0] == len(batch):
        return None
    ids, mask = unique[:, :prompt_len], unique[:, prompt_len:]
    out = body(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True)
    first = out.last_hidden_state[inverse, -1:]  # the last prompt position predicts response token 0
    if response_len == 1:
        return first
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    cache.batch_select_indices(inverse)
    full_mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)[:, :-1]
    rest = body(
        input_ids=batch.response_ids[:, :-1], attention_mask=full_mask,
        position_ids=position_ids_from_mask(full_mask)[:, prompt_len:], use_cache=True,
        **{_cache_kwarg(type(body)): cache},
    )  # fmt: skip
    return torch.cat([first, rest.last_hidden_state], dim=1)


class CompletionPolicy(nn.Module):
    """``policy`` (a causal LM, possibly PEFT-wrapped); ``forward`` gives per-token log-probs and entropies."""

    def __init__(self, policy: nn.Module, *, share_prompts: bool = True) -> None:
        super().__init__()
        self.policy = policy
        self.share_prompts = share_prompts

    @property
    def config(self) -> Any:
        return self.policy.config

    def forward(
        self, batch: ResponseBatch, *, temperature: float = 1.0, return_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probs [B, R] of ``batch``'s responses at ``temperature``, 0 where masked; entropies [B, R] detached,
        or None)."""
        hidden = shared_prompt_hidden_states(backbone(self.policy), batch) if self.share_prompts else None
        logps, entropy, _ = policy_logprobs(
            self.policy, batch, temperature=temperature, return_entropy=return_entropy, hidden=hidden
        )
        return logps, entropy

    def save_pretrained(self, directory: str | os.PathLike[str], **kwargs: Any) -> None:
        self.policy.save_pretrained(directory, **kwargs)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        if hasattr(self.policy, "gradient_checkpointing_enable"):
            self.policy.gradient_checkpointing_enable(**kwargs)
