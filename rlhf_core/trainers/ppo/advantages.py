"""The rewards-and-advantages half of a PPO ``Experience``: KL-penalised per-token rewards, GAE, whitening.

Per-token reward (Ziegler et al. 2019, arXiv:1909.08593 eq. 2; Stiennon et al. 2020, arXiv:2009.01325):
``r_t = -kl_coef * KL_t`` on every response token, plus the sequence score on its last token. ``KL_t`` is the
estimator chosen in the config, and that same tensor is what gets logged as ``objective/kl``. Advantages: GAE
(arXiv:1506.02438), whitened over the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf_core.losses.ppo import gae, kl_estimate, masked_whiten
from rlhf_core.rollout.logprobs import ResponseBatch

AllReduce = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["AllReduce", "Experience", "build_experience", "kl_penalised_rewards", "with_values"]


@dataclass
class Experience:
    """One batch of episodes, filled stage by stage. Token tensors are [B, R]; ``scores`` is [B].

    Sampling sets ``batch`` (and, when it could read them off the sampling pass, the old ``logprobs`` and
    ``values``); scoring sets ``scores``; ``build_experience`` fills in everything else.
    """

    batch: ResponseBatch
    logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    # Set while the values are left to the first training forward: ``finish(values [B, R])`` returns this
    # experience with its values, advantages and returns.
    finish: Callable[[torch.Tensor], Experience] | None = None

    @property
    def mask(self) -> torch.Tensor:
        """The tokens learned from (``ResponseBatch.learn_mask``)."""
        return self.batch.learn_mask

    def __len__(self) -> int:
        return len(self.batch)


def _whiten_if_possible(
    values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool, all_reduce: AllReduce | None = None
) -> torch.Tensor:
    """``masked_whiten`` over the global batch: with ``all_reduce`` (a sum over processes) the mean and variance
    are those of every process's tokens together, so N processes whiten as one process with their whole batch."""
    if all_reduce is None:
        # Whitening needs a variance: with fewer than two tokens (a one-token answer to `step`) keep the values.
        if mask.sum() < 2:
            return values
        return masked_whiten(values, mask, shift_mean=shift_mean) * mask
    weights = mask.to(values.dtype)
    count, total = all_reduce(torch.stack([weights.sum(), (values * weights).sum()])).unbind()
    if count < 2:
        return values
    mean = total / count
    variance = all_reduce(((values - mean) ** 2 * weights).sum()) / (count - 1)  # Bessel, as masked_var
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return (whitened if shift_mean else whitened + mean) * weights


@torch.no_grad()
def kl_penalised_rewards(
    batch: ResponseBatch,
    *,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    kl_coef: float,
    kl_estimator: str,
    whiten_rewards: bool = False,
    all_reduce: AllReduce | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token KL estimate, per-token reward ``-kl_coef * KL`` plus the score on the last learned token)."""
    learn = batch.learn_mask
    mask = learn.to(logprobs.dtype)
    kl = kl_estimate(logprobs, ref_logprobs, estimator=kl_estimator) * mask
    rewards = -kl_coef * kl
    # The score goes on the last learned token (TRL's last non-masked index), which a gapped mask puts after
    # its gaps, not at mask.sum() - 1.
    positions = torch.arange(learn.shape[1], device=learn.device)
    last = (positions * learn.long()).argmax(-1)
    rows = torch.arange(len(batch), device=rewards.device)
    # A response with no token at all (cannot happen with max_new_tokens >= 1) would get its score nowhere.
    rewards[rows, last] += scores.to(rewards.dtype) * (learn.sum(-1) > 0)
    if whiten_rewards:
        rewards = _whiten_if_possible(rewards, mask, shift_mean=False, all_reduce=all_reduce)
    return kl, rewards


@torch.no_grad()
def with_values(
    exp: Experience,
    values: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    whiten_advantages: bool = True,
    all_reduce: AllReduce | None = None,
) -> Experience:
    """``exp`` (rewards known) completed with ``values`` [B, R]: GAE advantages (whitened) and value targets."""
    mask = exp.mask.to(exp.rewards.dtype)
    values = values * mask
    advantages, returns = gae(exp.rewards, values, mask, gamma=gamma, lam=lam)
    if whiten_advantages:
        advantages = _whiten_if_possible(advantages, mask, shift_mean=True, all_reduce=all_reduce)
    return dataclasses.replace(exp, values=values, advantages=advantages, returns=returns, finish=None)


@torch.no_grad()
def build_experience(
    batch: ResponseBatch,
    *,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor | None,
    scores: torch.Tensor,
    kl_coef: float,
    kl_estimator: str,
    gamma: float,
    lam: float,
    whiten_rewards: bool = False,
    whiten_advantages: bool = True,
    all_reduce: AllReduce | None = None,
) -> Experience:
    """KL-penalised per-token rewards, then GAE advantages (whitened) and value targets.

    ``values=None`` leaves the advantages to ``exp.finish(values)`` (see ``RolloutEngine.defers_values``).
    """
    mask = batch.learn_mask.to(logprobs.dtype)
    kl, rewards = kl_penalised_rewards(
        batch, logprobs=logprobs, ref_logprobs=ref_logprobs, scores=scores, kl_coef=kl_coef,
        kl_estimator=kl_estimator, whiten_rewards=whiten_rewards, all_reduce=all_reduce,
    )  # fmt: skip
    exp = Experience(
        batch=batch,
        logprobs=logprobs * mask,
        ref_logprobs=ref_logprobs * mask,
        scores=scores,
        kl=kl,
        rewards=rewards,
    )
    finish = functools.partial(
        with_values, exp, gamma=gamma, lam=lam, whiten_advantages=whiten_advantages, all_reduce=all_reduce
    )
    if values is None:
        exp.finish = finish
        return exp
    return finish(values)
