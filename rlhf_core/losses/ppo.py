"""PPO building blocks as pure functions: masked statistics, KL estimators, GAE, clipped losses.

Shapes: ``B`` rows (episodes), ``T`` response tokens. A ``mask`` is 1 on real response tokens
and 0 on padding (for GAE: a prefix of ones per row). Every loss returns a NamedTuple whose
``loss`` carries the gradient and whose other fields are detached statistics.

Papers: PPO, Schulman et al. 2017 (arXiv:1707.06347, eq. 7 for the clipped surrogate, eq. 9 for
the value term); GAE, Schulman et al. 2015 (arXiv:1506.02438, eq. 16); KL-penalised reward,
Ziegler et al. 2019 (arXiv:1909.08593, eq. 2); the k1/k2/k3 estimators, J. Schulman,
"Approximating KL divergence" (2020, http://joschu.net/blog/kl-approx.html).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

# ---------------------------------------------------------------------------------------------
# masked statistics


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is non-zero (over all axes, or one axis).

    values, mask: same shape. Returns a 0-d tensor, or the shape of ``values`` without ``axis``.
    An all-zero mask gives 0 rather than NaN: an empty mini-batch contributes nothing.
    """
    mask = mask.to(values.dtype)
    if axis is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(axis) / mask.sum(axis).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` over masked positions (Bessel-corrected when ``unbiased``). 0-d tensor.

    The unbiased estimate needs at least two masked positions; with fewer it raises, because the
    callers (whitening) would otherwise divide by a meaningless variance.
    """
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count < 2:
            raise ValueError(
                f"masked_var(unbiased=True) needs at least 2 unmasked values, got {int(count)}; "
                "use a larger mini-batch or longer responses"
            )
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``values`` to unit variance over masked positions (zero mean when ``shift_mean``).

    With ``shift_mean=False`` the mean is kept (used to whiten rewards without changing their sign
    on average). Masked-out positions are transformed too; callers zero them when they matter.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


# ---------------------------------------------------------------------------------------------
# per-token KL estimators of KL(pi || pi_ref), from samples of pi


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(a) - log pi_ref(a). Unbiased, high variance, negative on some samples. [B, T]."""
    return logps - ref_logps


def kl_k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi(a) - log pi_ref(a))^2 / 2. Biased, low variance, never negative. [B, T]."""
    return 0.5 * (logps - ref_logps) ** 2


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = pi_ref(a) / pi(a). Unbiased, low variance, never negative. [B, T]."""
    log_ratio = ref_logps - logps
    return torch.expm1(log_ratio) - log_ratio


KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, *, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate by name from :data:`KL_ESTIMATORS`. [B, T] in, [B, T] out."""
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; choose one of {sorted(KL_ESTIMATORS)}"
        ) from None
    return fn(logps, ref_logps)


# ---------------------------------------------------------------------------------------------
# generalised advantage estimation


class GAEOutput(NamedTuple):
    advantages: torch.Tensor  # [B, T], 0 where mask is 0
    returns: torch.Tensor  # [B, T] = advantages + values, 0 where mask is 0


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> GAEOutput:
    """Generalised advantage estimates (arXiv:1506.02438, eq. 16) and the value targets.

    rewards, values, mask: [B, T]. Rewards and values are zeroed where ``mask`` is 0 and the recursion runs
    through every position, as TRL's classic PPOTrainer computed it: after a row's last unmasked token everything
    is 0, so the episode ends there (terminal value 0), and a gap inside the mask (a tool output or another
    speaker's turn) carries the advantage across instead of cutting the episode. Advantages and returns are 0
    where ``mask`` is 0.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[-1]
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[..., 0])
    for t in reversed(range(steps)):
        next_value = values[..., t + 1] if t + 1 < steps else torch.zeros_like(next_advantage)
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[..., t] = next_advantage
    advantages = advantages * mask
    return GAEOutput(advantages=advantages, returns=(advantages + values) * mask)


# ---------------------------------------------------------------------------------------------
# losses


class PolicyLossOutput(NamedTuple):
    loss: torch.Tensor  # 0-d, differentiable
    clipfrac: torch.Tensor  # fraction of tokens where the clipped term was active
    approxkl: torch.Tensor  # 0.5 * mean((log pi - log pi_old)^2), the k2 estimate of KL(pi_old || pi)
    ratio_mean: torch.Tensor


def _normaliser(mask: torch.Tensor, num_items: float | torch.Tensor | None) -> torch.Tensor | float:
    # Dividing by the token count of the whole mini-batch (not of this micro-batch) makes the summed
    # gradients of its micro-batches equal the gradient of one pass over the whole mini-batch.
    if num_items is None:
        return mask.sum().clamp(min=1)
    return num_items


def clipped_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float = 0.2,
    num_items: float | torch.Tensor | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate (arXiv:1707.06347, eq. 7), negated to be minimised.

    logps (with grad), old_logps, advantages, mask: [B, T]. The loss is the sum over masked tokens of
    ``max(-A * r, -A * clip(r, 1 - eps, 1 + eps))`` with ``r = exp(logps - old_logps)``, divided by
    ``num_items`` (default: the number of masked tokens here).
    """
    mask = mask.to(logps.dtype)
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    loss = (per_token * mask).sum() / _normaliser(mask, num_items)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(logps.dtype), mask)
        approxkl = 0.5 * masked_mean(log_ratio.detach() ** 2, mask)
        ratio_mean = masked_mean(ratio.detach(), mask)
    return PolicyLossOutput(loss=loss, clipfrac=clipfrac, approxkl=approxkl, ratio_mean=ratio_mean)


class ValueLossOutput(NamedTuple):
    loss: torch.Tensor  # 0-d, differentiable
    clipfrac: torch.Tensor  # fraction of tokens where the clipped error was the larger one
    values_mean: torch.Tensor  # mean predicted value over masked tokens


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range_value: float = 0.2,
    num_items: float | torch.Tensor | None = None,
) -> ValueLossOutput:
    """Clipped value loss (arXiv:1707.06347 sec. 5 as implemented in the OpenAI baselines):

        0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)

    summed over masked tokens and divided by ``num_items`` (default: the masked token count).
    values (with grad), old_values, returns, mask: [B, T].
    """
    mask = mask.to(values.dtype)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    per_token = 0.5 * torch.maximum(unclipped_error, clipped_error)
    loss = (per_token * mask).sum() / _normaliser(mask, num_items)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
        values_mean = masked_mean(values.detach(), mask)
    return ValueLossOutput(loss=loss, clipfrac=clipfrac, values_mean=values_mean)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution given by ``logits`` [..., V] -> [...] (nats)."""
    logps = torch.log_softmax(logits.float(), dim=-1)
    return -(logps.exp() * logps).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels]: [..., V] and [...] long -> [...]. The naive reference path."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
