"""Group-relative policy optimisation: advantages from groups of completions and the clipped policy losses.

Shapes: ``N`` completions = ``P`` prompts x ``G`` completions per prompt, laid out prompt-major (rows
``p * G ... p * G + G - 1`` answer prompt ``p``); ``T`` completion tokens; ``F`` reward functions. A ``mask`` is 1 on
real completion tokens. A reward of NaN means "this function abstains on this completion" (a reward function
returned None); a completion where every function abstains is *unscorable* and gets advantage 0.

Papers:
- GRPO, Shao et al. 2024 (DeepSeekMath, arXiv:2402.03300, eq. 3 and sec. 4.1.2): advantage = (r - mean_group) /
  std_group, per-sequence token-mean of the clipped surrogate, k3 KL to a reference inside the loss.
- Dr. GRPO, Liu et al. 2025 (arXiv:2503.20783, sec. 3.1): no std scaling, a constant normaliser
  (rows x max completion length) instead of each sequence's length.
- DAPO, Yu et al. 2025 (arXiv:2503.14476, eq. 8 and 10): token-level normalisation over the whole batch and
  clip-higher (``epsilon_high > epsilon_low``).
- GSPO, Zheng et al. 2025 (arXiv:2507.18071, eq. 7): a sequence-level importance ratio, the length-normalised
  ``exp(mean_t log(pi / pi_old))``.
- RLOO, Ahmadian et al. 2024 (arXiv:2402.14740, eq. 6; Kool et al. 2019): the leave-one-out baseline
  ``b_i = (sum_j r_j - r_i) / (G - 1)``; TRL's RLOO clips a sequence-level ratio of summed log-probs.
- Two-sided clipping (``delta``), INTELLECT-2 (arXiv:2505.07291, sec. 4.1).

Each loss returns a NamedTuple whose ``loss`` carries the gradient and whose other fields are detached statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from rlhf_core.losses.ppo import kl_k3, masked_mean

__all__ = [
    "GRPO_LOSS_TYPES",
    "GroupAdvantages",
    "PolicyLossOutput",
    "group_advantages",
    "grpo_policy_loss",
    "importance_log_weights",
    "register_grpo_loss_type",
    "rloo_advantages",
    "rloo_policy_loss",
    "weighted_rewards",
]

STD_EPS = 1e-4  # TRL's: keeps a zero-variance group's advantages at 0 instead of dividing by 0


def _nanstd(values: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaNs, over ``dim`` (None: all values; NaN if < 2 values)."""
    if dim is None:
        values, dim = values.reshape(-1), 0
    count = (~torch.isnan(values)).sum(dim, keepdim=True)
    mean = torch.nanmean(values, dim, keepdim=True)
    std = torch.sqrt(torch.nansum((values - mean) ** 2, dim, keepdim=True) / (count - 1))
    return std if keepdim else std.squeeze(dim)


def weighted_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over reward functions, abstentions (NaN) skipped: [N, F], [F] -> [N].

    A completion where every function abstains stays NaN (unscorable) rather than becoming 0.
    """
    total = (rewards_per_func * weights.to(rewards_per_func)).nansum(dim=1)
    return total.masked_fill(torch.isnan(rewards_per_func).all(dim=1), float("nan"))


class GroupAdvantages(NamedTuple):
    advantages: torch.Tensor  # [N], 0 for unscorable completions
    rewards: torch.Tensor  # [N] the aggregated reward (NaN where unscorable)
    std: torch.Tensor  # [N] the std each advantage was (or, with scale "none", would have been) divided by
    zero_std: torch.Tensor  # [N] bool: its group (or the batch) had no reward spread


def group_advantages(
    rewards_per_func: torch.Tensor,
    weights: torch.Tensor,
    *,
    num_generations: int,
    scale_rewards: str = "group",
    aggregation: str = "sum_then_normalize",
) -> GroupAdvantages:
    """GRPO advantages (arXiv:2402.03300 sec. 4.1.2): ``A_i = (r_i - mean_group(r)) / (std + 1e-4)``.

    rewards_per_func: [N, F] (NaN = abstains), weights: [F]. ``scale_rewards``: "group" divides by the group's
    std, "batch" by the std of the whole batch, "none" not at all (Dr. GRPO, arXiv:2503.20783). ``aggregation``:
    "sum_then_normalize" weights and sums the functions first; "normalize_then_sum" normalises each function
    within its group, sums with the weights, then normalises the sum over the batch (GDPO-style multi-reward).
    Means and stds skip NaNs; stds are Bessel-corrected as torch.std.
    """
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards={scale_rewards!r}: use 'group', 'batch' or 'none'")
    n, funcs = rewards_per_func.shape
    if n % num_generations:
        raise ValueError(f"{n} completions do not form groups of num_generations={num_generations}")
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    if aggregation == "sum_then_normalize":
        rewards = weighted_rewards(rewards_per_func, weights)
        grouped = rewards.view(-1, num_generations)
        mean = torch.nanmean(grouped, dim=1, keepdim=True).expand_as(grouped).reshape(-1)
        if scale_rewards == "batch":
            std = _nanstd(rewards).expand_as(rewards)
        else:
            std = _nanstd(grouped, dim=1, keepdim=True).expand_as(grouped).reshape(-1)
        advantages = rewards - mean
        if scale_rewards != "none":
            advantages = advantages / (std + STD_EPS)
    elif aggregation == "normalize_then_sum":
        grouped = rewards_per_func.view(-1, num_generations, funcs)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        per_func = ((grouped - mean_k) / (_nanstd(grouped, dim=1, keepdim=True) + STD_EPS)).view(-1, funcs)
        rewards = weighted_rewards(per_func, weights)
        std = _nanstd(rewards).expand_as(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std + STD_EPS)
    else:
        raise ValueError(
            f"multi_objective_aggregation={aggregation!r}: use 'sum_then_normalize' or 'normalize_then_sum'"
        )
    zero_std = torch.isclose(torch.nan_to_num(std, nan=0.0), torch.zeros_like(std))
    advantages = torch.nan_to_num(advantages.masked_fill(unscorable, 0.0), nan=0.0)
    return GroupAdvantages(advantages, rewards, std, zero_std)


def rloo_advantages(rewards: torch.Tensor, *, num_generations: int, normalize: bool = False) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (arXiv:2402.14740 eq. 6): ``A_i = r_i - (sum_j r_j - r_i) / (k - 1)``.

    rewards: [N] (NaN = unscorable: left out of its siblings' baselines; ``k`` counts the scorable completions of
    the group). ``normalize`` whitens the advantages over the batch (mean 0, std 1 + 1e-4). Unscorable
    completions, and any completion without a scorable sibling, get 0. Returns [N].
    """
    if num_generations < 2:
        return torch.zeros_like(rewards)
    grouped = rewards.view(-1, num_generations)
    scorable = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    baselines = (torch.nansum(grouped, dim=1, keepdim=True) - grouped) / (scorable - 1)
    advantages = (grouped - baselines).reshape(-1)
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (_nanstd(advantages) + STD_EPS)
    return torch.nan_to_num(advantages, nan=0.0, posinf=0.0, neginf=0.0)


def importance_log_weights(
    logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, *, level: str = "token"
) -> torch.Tensor:
    """log(pi / pi_old) per token ([N, T], "token") or its masked mean per sequence ([N, 1], "sequence", GSPO
    arXiv:2507.18071 eq. 7)."""
    log_ratio = logps - old_logps
    if level == "token":
        return log_ratio
    if level == "sequence":
        mask = mask.to(log_ratio.dtype)
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level={level!r}: use 'token' or 'sequence'")


class PolicyLossOutput(NamedTuple):
    loss: torch.Tensor  # 0-d, differentiable (already divided for gradient accumulation)
    policy_loss: torch.Tensor  # the same before the accumulation division, detached
    kl: torch.Tensor  # token-mean k3 KL to the reference (0 without one)
    clip_low: torch.Tensor  # fraction of tokens (sequences for level "sequence") clipped below, A < 0
    clip_high: torch.Tensor  # ... clipped above, A > 0
    clip_region: torch.Tensor  # either


# (per-token loss [N, T] or [N, 1] broadcast, mask [N, T], keywords) -> 0-d loss for one micro-batch
Aggregation = Callable[..., torch.Tensor]


def _sequence_mean(per_token: torch.Tensor, mask: torch.Tensor, **_: object) -> torch.Tensor:
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor, **_: object) -> torch.Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _constant_length(per_token: torch.Tensor, mask: torch.Tensor, *, max_completion_length: int, **_: object):
    return (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)


def _window_tokens(per_token: torch.Tensor, mask: torch.Tensor, *, num_items: float | None, **_: object):
    # num_items: the tokens of the whole accumulation window (a micro-batch alone: its own tokens).
    return (per_token * mask).sum() / (
        mask.sum().clamp(min=1.0) if num_items is None else max(num_items, 1.0)
    )


# loss_type -> (aggregation, whether it is already normalised over the accumulation window)
GRPO_LOSS_TYPES: dict[str, tuple[Aggregation, bool]] = {
    "grpo": (_sequence_mean, False),  # arXiv:2402.03300 eq. 3: mean over sequences of token means
    "bnpo": (_token_mean, False),  # token mean over the micro-batch
    "dr_grpo": (_constant_length, False),  # arXiv:2503.20783: rows x max_completion_length
    "dapo": (_window_tokens, True),  # arXiv:2503.14476 eq. 8: token mean over the accumulation window
}


def register_grpo_loss_type(name: str, aggregation: Aggregation, *, window_normalised: bool = False) -> None:
    """Add a loss_type: how the per-token clipped loss of one micro-batch is reduced to a scalar."""
    GRPO_LOSS_TYPES[name] = (aggregation, window_normalised)


def _clip_stats(coef: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, low: float, high: float):
    is_low = ((coef < 1 - low) & (advantages < 0)).to(mask.dtype)
    is_high = ((coef > 1 + high) & (advantages > 0)).to(mask.dtype)
    if coef.shape[-1] == 1:  # sequence level: one ratio per sequence
        return is_low.mean(), is_high.mean(), torch.maximum(is_low, is_high).mean()
    full = mask.expand_as(coef)
    return (
        masked_mean(is_low, full),
        masked_mean(is_high, full),
        masked_mean(torch.maximum(is_low, is_high), full),
    )


def grpo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    bias_corrected_kl: bool = True,
    max_completion_length: int | None = None,
    num_items: float | None = None,
    gradient_accumulation_steps: int = 1,
) -> PolicyLossOutput:
    """The clipped GRPO objective of one micro-batch, negated (arXiv:2402.03300 eq. 3; see the module doc).

    logps (with grad), old_logps, mask: [N, T]; advantages: [N]; ref_logps: [N, T] when ``beta != 0``.
    Per token: ``-min(w * A, clip(w, 1 - epsilon_low, 1 + epsilon_high) * A) + beta * KL_k3`` with
    ``w = exp(importance_log_weights)`` (capped at ``delta`` when given) and, with ``bias_corrected_kl``, the KL
    multiplied by ``w`` (the samples come from pi_old). Reduced by ``GRPO_LOSS_TYPES[loss_type]``: "grpo" and
    "bnpo" and "dr_grpo" are divided by ``gradient_accumulation_steps``; "dapo" by ``num_items`` (the tokens of
    the whole accumulation window; default: this micro-batch's tokens x gradient_accumulation_steps).
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: choose one of {sorted(GRPO_LOSS_TYPES)}")
    mask = mask.to(logps.dtype)
    coef = torch.exp(importance_log_weights(logps, old_logps, mask, level=importance_sampling_level))
    adv = advantages.to(logps.dtype).unsqueeze(-1)
    clipped = torch.clamp(coef, 1 - epsilon_low, 1 + epsilon_high)
    capped = torch.clamp(coef, max=delta) if delta is not None else coef
    per_token = -torch.minimum(capped * adv, clipped * adv)
    kl = torch.zeros((), dtype=logps.dtype, device=logps.device)
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps")
        per_token_kl = kl_k3(logps, ref_logps)
        if bias_corrected_kl:
            per_token_kl = per_token_kl * coef
        per_token = per_token + beta * per_token_kl
        kl = masked_mean(per_token_kl.detach(), mask)
    aggregate, window_normalised = GRPO_LOSS_TYPES[loss_type]
    if window_normalised and num_items is None:
        num_items = float(mask.sum()) * gradient_accumulation_steps
    loss = aggregate(per_token.expand_as(mask), mask, max_completion_length=max_completion_length,
                     num_items=num_items)  # fmt: skip
    policy_loss = loss.detach()
    if not window_normalised:
        loss = loss / gradient_accumulation_steps
    with torch.no_grad():
        low, high, region = _clip_stats(coef.detach(), adv, mask, epsilon_low, epsilon_high)
    return PolicyLossOutput(loss, policy_loss, kl, low, high, region)


def rloo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    gradient_accumulation_steps: int = 1,
) -> PolicyLossOutput:
    """RLOO's clipped sequence-level surrogate (arXiv:2402.14740 with PPO clipping, as TRL 1.16's RLOOTrainer).

    logps (with grad), old_logps, mask: [N, T]; advantages: [N]. ``w = exp(sum_t log pi - sum_t log pi_old)``
    per sequence; loss = mean over sequences of ``-min(w * A, clip(w, 1 - eps_low, 1 + eps_high) * A)``, divided
    by ``gradient_accumulation_steps``. The KL penalty of RLOO lives in the reward (see ``rloo_advantages``).
    """
    mask = mask.to(logps.dtype)
    log_ratio = ((logps - old_logps) * mask).sum(-1)
    coef = torch.exp(log_ratio)
    adv = advantages.to(logps.dtype)
    per_sequence = -torch.minimum(coef * adv, torch.clamp(coef, 1 - epsilon_low, 1 + epsilon_high) * adv)
    loss = per_sequence.mean()
    with torch.no_grad():
        low, high, region = _clip_stats(coef.detach()[:, None], adv[:, None], mask, epsilon_low, epsilon_high)
    zero = torch.zeros((), dtype=logps.dtype, device=logps.device)
    return PolicyLossOutput(loss / gradient_accumulation_steps, loss.detach(), zero, low, high, region)
