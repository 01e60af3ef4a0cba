"""One PPO batch of experience: rollout tensors, KL-penalised rewards, advantages and returns; mini-batch order.

Per-token reward (Ziegler et al. 2019, arXiv:1909.08593 eq. 2; Stiennon et al. 2020, arXiv:2009.01325):
``r_t = -kl_coef * KL_t`` on every response token, plus the sequence score on its last token. ``KL_t`` is the
estimator chosen in the config, and that same tensor is what gets logged as ``objective/kl``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rlhf_core.losses.ppo import gae, kl_estimate, masked_whiten
from rlhf_core.rollout.logprobs import ResponseBatch

__all__ = ["Experience", "build_experience", "mini_batch_indices"]


@dataclass
class Experience:
    """Everything the PPO epochs need about one batch. Token tensors are [B, R]; ``scores`` is [B]."""

    batch: ResponseBatch
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.response_mask

    def __len__(self) -> int:
        return len(self.batch)


def _whiten_if_possible(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool) -> torch.Tensor:
    # Whitening needs a variance: with fewer than two tokens (a one-token answer given to `step`) keep the values.
    if mask.sum() < 2:
        return values
    return masked_whiten(values, mask, shift_mean=shift_mean) * mask


@torch.no_grad()
def build_experience(
    batch: ResponseBatch,
    *,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor,
    scores: torch.Tensor,
    kl_coef: float,
    kl_estimator: str,
    gamma: float,
    lam: float,
    whiten_rewards: bool = False,
    whiten_advantages: bool = True,
) -> Experience:
    """KL-penalised per-token rewards, then GAE advantages (whitened) and value targets."""
    mask = batch.response_mask.to(logprobs.dtype)
    kl = kl_estimate(logprobs, ref_logprobs, estimator=kl_estimator) * mask
    rewards = -kl_coef * kl
    last = (batch.response_mask.sum(-1) - 1).clamp(min=0)
    rows = torch.arange(len(batch), device=rewards.device)
    # A response with no token at all (cannot happen with max_new_tokens >= 1) would get its score nowhere.
    rewards[rows, last] += scores.to(rewards.dtype) * (batch.response_mask.sum(-1) > 0)
    if whiten_rewards:
        rewards = _whiten_if_possible(rewards, mask, shift_mean=False)
    values = values * mask
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    if whiten_advantages:
        advantages = _whiten_if_possible(advantages, mask, shift_mean=True)
    return Experience(
        batch=batch,
        logprobs=logprobs * mask,
        ref_logprobs=ref_logprobs * mask,
        values=values,
        scores=scores,
        kl=kl,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
    )


def mini_batch_indices(
    n: int, mini_batch_size: int, micro_batch_size: int, generator: torch.Generator | None = None
) -> Iterator[list[torch.Tensor]]:
    """One shuffled epoch: yields each mini-batch as its list of micro-batch row indices.

    A last mini-batch shorter than ``mini_batch_size`` (``step`` given fewer episodes) is still used.
    """
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, mini_batch_size):
        rows = order[start : start + mini_batch_size]
        yield [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
