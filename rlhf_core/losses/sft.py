"""Supervised fine-tuning loss: negative log-likelihood of the target tokens.

The loss is the *summed* NLL divided by ``num_items`` - by default the number of loss tokens in this batch, and in
training the number of loss tokens in the whole accumulated batch (all micro-batches, all processes), so that
gradient accumulation gives the same update as one large batch (see `rlhf_core.trainers.base`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["SFTLossOutput", "sft_loss"]


class SFTLossOutput(NamedTuple):
    """``loss``: scalar, differentiable. ``num_tokens``: detached count of loss tokens in this batch (long)."""

    loss: torch.Tensor
    num_tokens: torch.Tensor


def sft_loss(
    token_logps: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    num_items: torch.Tensor | float | None = None,
) -> SFTLossOutput:
    """Token-level NLL: ``-sum(mask * logp) / num_items``.

    Maximum likelihood on demonstrations, the SFT step of InstructGPT (Ouyang et al. 2022, arXiv:2203.02155,
    Sec. 3.5): ``L(theta) = -1/N * sum_{t in loss tokens} log pi_theta(y_t | y_<t)`` with N = ``num_items``.

    Args:
        token_logps: ``[B, T]`` (or any shape) log-probabilities of the target tokens, already aligned with the
            targets (position t holds log p(target_t)); values at masked positions are ignored, even if non-finite
            would-be values were replaced by 0 upstream.
        loss_mask: same shape, bool or {0, 1}: which positions count.
        num_items: the normaliser N. None = ``loss_mask.sum()`` (a plain token mean, at least 1 so that a batch
            without loss tokens gives 0, not NaN).

    Returns:
        `SFTLossOutput` (loss, num_tokens = ``loss_mask.sum()``).
    """
    if token_logps.shape != loss_mask.shape:
        raise ValueError(
            f"token_logps {tuple(token_logps.shape)} and loss_mask {tuple(loss_mask.shape)} differ"
        )
    mask = loss_mask.bool()
    num_tokens = mask.sum()
    summed_nll = -torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum()
    if num_items is None:
        num_items = num_tokens.clamp(min=1).to(token_logps.dtype)
    return SFTLossOutput(loss=summed_nll / num_items, num_tokens=num_tokens.detach())
