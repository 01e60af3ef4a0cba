"""Row-wise softmax statistics on one chunk of logits: the part of the fused ops a backend replaces.

The chunk driver (``chunked.py``) owns the matmuls; per chunk it hands a ``[C, V]`` fp32 buffer of
logits (already divided by the temperature) to a ``RowSoftmaxOps``. The torch implementation here
runs anywhere; ``_triton_row_softmax.TritonRowSoftmax`` does the same with Triton kernels on CUDA.

Two operations suffice: the driver subtracts the one-hot itself (a C-element scatter) and folds the
per-row upstream gradient into ``[C, H]``-sized matmul operands, so the only full passes over a chunk
are one log-softmax in the forward and one softmax in the backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["RowSoftmaxOps", "RowStats", "TorchRowSoftmax"]


@dataclass
class RowStats:
    """Per-row outputs ``[C]`` (fp32) for one chunk: target log-prob, logsumexp, entropy (None: not wanted)."""

    logp: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor | None = None


class RowSoftmaxOps(Protocol):
    """Operations on a chunk ``logits [C, V]`` (fp32, contiguous) with ``targets [C]`` (long, all valid)."""

    def log_softmax_stats(
        self, logits: torch.Tensor, targets: torch.Tensor, out: RowStats, *, keep_softmax: bool = False
    ) -> None:
        """Write ``log softmax(logits)[target]``, ``logsumexp(logits)`` and (optionally) each row's entropy
        into ``out``. ``keep_softmax``: leave ``softmax(logits)`` in ``logits``; else it may be overwritten."""

    def softmax_(self, logits: torch.Tensor, lse: torch.Tensor) -> None:
        """Replace ``logits`` by ``softmax(logits)`` in place; ``lse`` is the rows' logsumexp."""


class TorchRowSoftmax:
    """Portable implementation: ATen's fused, vectorised (log_)softmax kernels, run in place."""

    def __init__(self) -> None:
        # Entropy needs p and log p at once; one scratch chunk is kept for the whole call instead of
        # allocating (and page-faulting) a fresh [C, V] temporary per chunk.
        self._scratch: torch.Tensor | None = None

    def log_softmax_stats(
        self, logits: torch.Tensor, targets: torch.Tensor, out: RowStats, *, keep_softmax: bool = False
    ) -> None:
        index = targets.unsqueeze(1)
        target_logits = logits.gather(1, index).squeeze(1)
        torch.log_softmax(logits, 1, out=logits)
        torch.gather(logits, 1, index, out=out.logp.unsqueeze(1))
        # logsumexp recovered from the target's log-prob: one rounding of the lse, no extra pass.
        torch.sub(target_logits, out.logp, out=out.lse)
        if out.entropy is not None:
            probs = torch.exp(logits, out=self._scratch_like(logits))
            # -sum(p * log p) as a batched dot product, so no [C, V] product is allocated.
            row_dot = torch.bmm(probs.unsqueeze(1), logits.unsqueeze(2)).view(-1)
            torch.neg(row_dot, out=out.entropy)
        if keep_softmax:
            logits.exp_()  # log-probabilities are in place: one pass turns them into probabilities

    def softmax_(self, logits: torch.Tensor, lse: torch.Tensor) -> None:
        # One fused pass (max, exp-sum, scale per row, all in cache) beats sub_ + exp_ with the saved lse.
        del lse
        torch.softmax(logits, 1, out=logits)

    def _scratch_like(self, logits: torch.Tensor) -> torch.Tensor:
        rows = logits.shape[0]
        if (
            self._scratch is None
            or self._scratch.shape[0] < rows
            or self._scratch.shape[1:] != logits.shape[1:]
        ):
            self._scratch = torch.empty_like(logits)
        return self._scratch[:rows]
