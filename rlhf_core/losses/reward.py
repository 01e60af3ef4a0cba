"""Pairwise reward-model loss (Bradley-Terry), as a pure function on tensors.

The loss is the Bradley-Terry negative log-likelihood of the preferred response used to train reward models in
InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, Eq. 1), with the optional per-pair margin of Llama 2 (Touvron
et al. 2023, arXiv:2307.09288, Eq. 2) and the optional reward-centering penalty of Eisenstein et al. 2023
(arXiv:2312.09244, Sec. 3) that keeps the rewards' mean near zero.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["RewardLossOutput", "reward_loss"]


class RewardLossOutput(NamedTuple):
    """What `reward_loss` returns; every field but `loss` is detached.

    loss: scalar, differentiable.
    losses: `[B]` per-pair Bradley-Terry terms (without the centering penalty).
    accuracy: scalar, fraction of pairs with `r_chosen > r_rejected` (ties count as wrong).
    margin: scalar, mean of `r_chosen - r_rejected`.
    reward_mean / reward_min / reward_max: scalars over the chosen and rejected rewards together.
    """

    loss: torch.Tensor
    losses: torch.Tensor
    accuracy: torch.Tensor
    margin: torch.Tensor
    reward_mean: torch.Tensor
    reward_min: torch.Tensor
    reward_max: torch.Tensor


def reward_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
    num_items: int | float | torch.Tensor | None = None,
) -> RewardLossOutput:
    """Bradley-Terry pairwise loss `-logsigmoid(r_c - r_r - margin)` (+ `coef * (r_c + r_r)^2`).

    Args:
        chosen_rewards: `[B]` (or `[B, 1]`) scalar rewards of the preferred responses.
        rejected_rewards: `[B]` (or `[B, 1]`) rewards of the dispreferred responses.
        margin: optional `[B]` per-pair margin the chosen reward must exceed the rejected one by
            (Llama 2, arXiv:2307.09288, Eq. 2).
        center_rewards_coefficient: when set, adds `coef * (r_c + r_r)^2` per pair (arXiv:2312.09244).
        num_items: divisor of the summed per-pair loss. Default `B`, i.e. the mean; a trainer that accumulates
            gradients passes the number of pairs in the whole accumulated batch so that `8 x 1` and `1 x 8`
            give the same loss.

    Returns:
        `RewardLossOutput` with the scalar loss and detached statistics.
    """
    chosen = _flatten_rewards(chosen_rewards, "chosen_rewards")
    rejected = _flatten_rewards(rejected_rewards, "rejected_rewards")
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen_rewards and rejected_rewards must have the same shape, got {tuple(chosen.shape)} "
            f"and {tuple(rejected.shape)}"
        )
    diff = chosen - rejected
    if margin is not None:
        margin = margin.to(diff.dtype).reshape(-1)
        if margin.shape != diff.shape:
            raise ValueError(f"margin must have shape {tuple(diff.shape)}, got {tuple(margin.shape)}")
        diff = diff - margin
    per_pair = -F.logsigmoid(diff)
    total = per_pair
    if center_rewards_coefficient:
        total = total + center_rewards_coefficient * (chosen + rejected) ** 2
    divisor = chosen.numel() if num_items is None else num_items
    loss = total.sum() / divisor

    with torch.no_grad():
        both = torch.cat([chosen, rejected]).detach()
        stats = RewardLossOutput(
            loss=loss,
            losses=per_pair.detach(),
            accuracy=(chosen > rejected).float().mean(),
            margin=(chosen - rejected).mean().detach(),
            reward_mean=both.mean(),
            reward_min=both.min(),
            reward_max=both.max(),
        )
    return stats


def _flatten_rewards(rewards: torch.Tensor, name: str) -> torch.Tensor:
    # Sequence classifiers return `[B, 1]` logits; accept those as well as `[B]`.
    if rewards.dim() == 2 and rewards.shape[1] == 1:
        return rewards[:, 0]
    if rewards.dim() != 1:
        raise ValueError(f"{name} must have shape [B] or [B, 1], got {tuple(rewards.shape)}")
    return rewards
