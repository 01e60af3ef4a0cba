"""Naive reference for the fused kernels: full logits, then ``log_softmax`` and ``gather``.

This materialises the ``[N, V]`` logits (and autograd keeps several tensors of that size), which is
exactly what the fused ops avoid. It is the ground truth for tests and the "naive" side of
``benchmarks/bench_kernels.py``; nothing in the training code should call it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["naive_linear_logits", "naive_linear_logprobs", "naive_linear_cross_entropy"]


def naive_linear_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, temperature: float = 1.0
) -> torch.Tensor:
    """``(hidden @ weight.T + bias) / temperature`` as fp32 ``[N, V]``.

    The matmul runs in the input dtype (as a model's LM head would), the division and everything after
    it in fp32, which is also what the fused ops do.
    """
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return logits.float() / temperature


def naive_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of ``labels``: ``log_softmax(hidden @ weight.T + bias).gather(labels)``.

    Shapes: hidden ``[N, H]``, weight ``[V, H]``, bias ``[V]``, labels ``[N]`` (long). Returns fp32
    ``logps [N]`` with 0 (and no gradient) where ``labels == ignore_index``, or ``(logps, entropy)``
    where entropy ``[N]`` is the detached entropy of each row's softmax (0 at ignored positions).
    """
    logprobs = naive_linear_logits(hidden, weight, bias, temperature=temperature).log_softmax(-1)
    valid = labels != ignore_index
    safe_labels = labels.masked_fill(~valid, 0)
    token_logps = logprobs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    token_logps = torch.where(valid, token_logps, torch.zeros_like(token_logps))
    if not return_entropy:
        return token_logps
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1)
        entropy = torch.where(valid, entropy, torch.zeros_like(entropy))
    return token_logps, entropy


def naive_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    temperature: float = 1.0,
) -> torch.Tensor:
    """``F.cross_entropy`` on the full fp32 logits (mean over non-ignored tokens for ``reduction="mean"``)."""
    logits = naive_linear_logits(hidden, weight, bias, temperature=temperature)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction)
