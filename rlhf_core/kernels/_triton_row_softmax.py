"""Triton backend of the fused ops: cuBLAS matmuls per chunk + Triton kernels for the row-wise softmax work.

The design follows Liger-Kernel: the GEMMs stay with torch (cuBLAS), the memory-bound row work is
Triton: one kernel computes each row's online logsumexp, target log-prob and entropy in a single read;
another turns a recomputed chunk of logits into its softmax in place from the saved logsumexp (no
reduction in backward). ``TritonRowSoftmax`` plugs into the chunk driver and autograd functions
shared with the torch backend (``chunked.py``), so both paths have the same gradient algebra and
memory profile; ``rlhf_core.kernels.fused_linear_*`` pick it on CUDA (``backend="triton"``, or a
``TritonRowSoftmax(block_v=...)`` instance as ``backend=``). This module never imports the dispatcher.

triton is imported lazily: this module imports fine without triton and without CUDA. The kernels run
on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before they were first loaded
(that is how the tests run them).
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

from rlhf_core.kernels.row_softmax import RowStats

__all__ = [
    "TritonRowSoftmax",
    "check_triton_device",
    "interpreter_enabled",
    "triton_available",
]

# Wide enough to stream a row in few iterations, small enough to stay in registers at 8 warps.
MAX_BLOCK_V = 4096
NUM_WARPS = 8


@functools.cache
def triton_available() -> bool:
    """True when ``import triton`` works (no GPU needed for the import)."""
    try:
        importlib.import_module("triton")
    except Exception:  # triton raises more than ImportError on broken installs
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@functools.cache
def _kernels() -> ModuleType:
    if not triton_available():
        raise RuntimeError(
            "the Triton backend needs the `triton` package (pip install 'rlhf-toolkit[triton]')"
        )
    return importlib.import_module("rlhf_core.kernels._triton_kernels")


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


class TritonRowSoftmax:
    """``RowSoftmaxOps`` with Triton kernels; ``block_v`` overrides the slice width (tests use it to force
    several slices per row)."""

    def __init__(self, block_v: int | None = None) -> None:
        self._k = _kernels()
        self._block_v = block_v

    def _block(self, vocab: int) -> int:
        return self._block_v or min(MAX_BLOCK_V, _next_power_of_two(vocab))

    def log_softmax_stats(
        self, logits: torch.Tensor, targets: torch.Tensor, out: RowStats, *, keep_softmax: bool = False
    ) -> None:
        rows, vocab = logits.shape
        with_entropy = out.entropy is not None
        self._k.log_softmax_stats_kernel[(rows,)](
            logits,
            logits.stride(0),
            targets,
            out.logp,
            out.lse,
            out.entropy if with_entropy else out.lse,
            vocab,
            BLOCK_V=self._block(vocab),
            WITH_ENTROPY=with_entropy,
            num_warps=NUM_WARPS,
        )
        if keep_softmax:
            self.softmax_(logits, out.lse)

    def softmax_(self, logits: torch.Tensor, lse: torch.Tensor) -> None:
        rows, vocab = logits.shape
        block = self._block(vocab)
        grid = (rows, -(-vocab // block))
        self._k.softmax_from_lse_kernel[grid](
            logits, logits.stride(0), lse, vocab, BLOCK_V=block, num_warps=NUM_WARPS
        )


def check_triton_device(hidden: torch.Tensor) -> None:
    """Triton kernels need CUDA tensors, except in interpreter mode (CPU tensors, for tests)."""
    if hidden.is_cuda or (interpreter_enabled() and hidden.device.type == "cpu"):
        return
    raise ValueError(
        f"the Triton backend runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); got device "
        f"{hidden.device}. Use backend='torch' (the chunked torch implementation) here."
    )
