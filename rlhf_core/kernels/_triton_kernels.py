"""Triton kernels for the row-wise part of the fused ops (imported only by ``_triton_row_softmax``).

This module imports triton at the top, so import it only once triton is known to be available.
Whether the kernels run compiled (CUDA) or in the interpreter (``TRITON_INTERPRET=1``, CPU tensors)
is decided by triton when this module is first imported.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["log_softmax_stats_kernel", "softmax_from_lse_kernel"]


@triton.jit
def log_softmax_stats_kernel(
    logits_ptr,
    row_stride,
    targets_ptr,
    logp_ptr,
    lse_ptr,
    entropy_ptr,
    vocab,
    BLOCK_V: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
):
    """One program per row: online logsumexp over ``BLOCK_V``-wide slices, the target's log-prob and,
    optionally, the entropy ``log s - w / s`` with ``s = sum e^(x-m)`` and ``w = sum e^(x-m) (x-m)``
    (centred on the running max ``m`` so large logits do not cancel)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    offsets = tl.arange(0, BLOCK_V)
    running_max = float("-inf")
    sum_exp = 0.0
    weighted = 0.0
    for start in range(0, vocab, BLOCK_V):
        cols = start + offsets
        x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        rescale = tl.exp(running_max - new_max)
        e = tl.exp(x - new_max)
        if WITH_ENTROPY:
            centred = tl.where(e > 0.0, x - new_max, 0.0)
            # Re-centre the previous partial sum from the old max to the new one. The clamp keeps the
            # first slice (running max -inf, empty sum) at 0 instead of -inf * 0 = nan.
            shift = tl.maximum(running_max - new_max, -1.0e30) * sum_exp
            weighted = rescale * (weighted + shift) + tl.sum(e * centred, axis=0)
        sum_exp = sum_exp * rescale + tl.sum(e, axis=0)
        running_max = new_max
    log_sum = tl.log(sum_exp)
    lse = running_max + log_sum
    target = tl.load(targets_ptr + row)
    target_logit = tl.load(row_ptr + target).to(tl.float32)
    tl.store(logp_ptr + row, target_logit - lse)
    tl.store(lse_ptr + row, lse)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + row, log_sum - weighted / sum_exp)


@triton.jit
def softmax_from_lse_kernel(logits_ptr, row_stride, lse_ptr, vocab, BLOCK_V: tl.constexpr):
    """Grid ``(rows, cdiv(vocab, BLOCK_V))``: ``logits = exp(logits - lse)`` in place, one slice each."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < vocab
    ptr = logits_ptr + row * row_stride + cols
    x = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + row)
    tl.store(ptr, tl.exp(x - lse), mask=mask)
