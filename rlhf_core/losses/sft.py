"""Supervised fine-tuning losses: negative log-likelihood of the target tokens ("nll") and Dynamic Fine-Tuning
("dft", each token's NLL weighted by its own detached probability), in the registry `SFT_LOSSES`.

The loss is the *summed* NLL divided by ``num_items`` - by default the number of loss tokens in this batch, and in
training the number of loss tokens in the whole accumulated batch (all micro-batches, all processes), so that
gradient accumulation gives the same update as one large batch (see `rlhf_core.trainers.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["SFT_LOSSES", "SFTLossOutput", "dft_token_losses", "nll_token_losses", "sft_loss"]


def nll_token_losses(token_logps: torch.Tensor) -> torch.Tensor:
    """Per-token NLL ``-log pi(y_t)`` (InstructGPT's SFT step, arXiv:2203.02155 Sec. 3.5). Any shape in and out."""
    return -token_logps


def dft_token_losses(token_logps: torch.Tensor) -> torch.Tensor:
    """Dynamic Fine-Tuning (Wu et al. 2025, arXiv:2508.05629, Eq. 9): ``-sg(pi(y_t)) * log pi(y_t)`` per token.

    The NLL gradient of each token is rescaled by the token's probability (stop-gradient), which the paper derives
    as the correction that turns SFT's implicit reward (``1 / pi``) into a uniform one. Any shape in and out.
    """
    return -token_logps.detach().exp() * token_logps


SFT_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nll": nll_token_losses,
    "dft": dft_token_losses,
}


class SFTLossOutput(NamedTuple):
    """``loss``: scalar, differentiable. ``num_tokens``: detached count of loss tokens in this batch (long)."""

    loss: torch.Tensor
    num_tokens: torch.Tensor


def sft_loss(
    token_logps: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    num_items: torch.Tensor | float | None = None,
    loss_type: str = "nll",
) -> SFTLossOutput:
    """Token-level loss: ``sum(mask * token_loss(logp)) / num_items``, ``token_loss`` from `SFT_LOSSES`.

    Maximum likelihood on demonstrations, the SFT step of InstructGPT (Ouyang et al. 2022, arXiv:2203.02155,
    Sec. 3.5): ``L(theta) = -1/N * sum_{t in loss tokens} log pi_theta(y_t | y_<t)`` with N = ``num_items``.

    Args:
        token_logps: ``[B, T]`` (or any shape) log-probabilities of the target tokens, already aligned with the
            targets (position t holds log p(target_t)); values at masked positions are ignored, even if non-finite
            would-be values were replaced by 0 upstream.
        loss_mask: same shape, bool or {0, 1}: which positions count.
        num_items: the normaliser N. None = ``loss_mask.sum()`` (a plain token mean, at least 1 so that a batch
            without loss tokens gives 0, not NaN).
        loss_type: ``"nll"`` (default) or ``"dft"`` (`dft_token_losses`).

    Returns:
        `SFTLossOutput` (loss, num_tokens = ``loss_mask.sum()``).
    """
    if token_logps.shape != loss_mask.shape:
        raise ValueError(
            f"token_logps {tuple(token_logps.shape)} and loss_mask {tuple(loss_mask.shape)} differ"
        )
    if loss_type not in SFT_LOSSES:
        raise ValueError(f"unknown SFT loss_type {loss_type!r}; known: {sorted(SFT_LOSSES)}")
    mask = loss_mask.bool()
    num_tokens = mask.sum()
    safe_logps = torch.where(mask, token_logps, torch.zeros_like(token_logps))
    summed = torch.where(mask, SFT_LOSSES[loss_type](safe_logps), torch.zeros_like(token_logps)).sum()
    if num_items is None:
        num_items = num_tokens.clamp(min=1).to(token_logps.dtype)
    return SFTLossOutput(loss=summed / num_items, num_tokens=num_tokens.detach())
