"""The one entry point to the fused ops: checks the inputs, picks the backend, flattens leading dims,
follows autocast.

Backend choice (``backend=None``): ``$RLHF_KERNEL_BACKEND`` if set, else ``"auto"``: Triton for CUDA
tensors when triton imports, the chunked torch implementation otherwise. ``"torch"`` and ``"triton"``
force one; a ``RowSoftmaxOps`` instance is used as given.
"""

from __future__ import annotations

import os

import torch

from rlhf_core.kernels.chunked import chunked_linear_cross_entropy, chunked_linear_logprobs
from rlhf_core.kernels.input_checks import check_linear_inputs, check_reduction
from rlhf_core.kernels.row_softmax import RowSoftmaxOps, TorchRowSoftmax

__all__ = ["BACKEND_ENV", "BACKENDS", "fused_linear_cross_entropy", "fused_linear_logprobs", "select_backend"]

BACKEND_ENV = "RLHF_KERNEL_BACKEND"
BACKENDS = ("auto", "torch", "triton")


def select_backend(hidden: torch.Tensor, backend: str | None = None) -> str:
    """``"torch"`` or ``"triton"`` for these inputs (see the module docstring for the rules)."""
    choice = (backend or os.environ.get(BACKEND_ENV) or "auto").lower()
    if choice not in BACKENDS:
        source = "backend" if backend else f"${BACKEND_ENV}"
        raise ValueError(f"{source} must be one of {BACKENDS}; got {choice!r}")
    if choice != "auto":
        return choice
    from rlhf_core.kernels._triton_row_softmax import triton_available

    return "triton" if hidden.is_cuda and triton_available() else "torch"


def _row_ops(hidden: torch.Tensor, backend: str | RowSoftmaxOps | None) -> RowSoftmaxOps:
    if backend is not None and not isinstance(backend, str):
        return backend
    if select_backend(hidden, backend) == "torch":
        return TorchRowSoftmax()
    from rlhf_core.kernels._triton_row_softmax import TritonRowSoftmax, check_triton_device

    check_triton_device(hidden)
    return TritonRowSoftmax()


def _autocast_inputs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Under autocast, cast to the autocast dtype as ``F.linear`` would (bf16 activations, fp32 master
    weights); the op itself then runs with autocast off so its fp32 statistics stay fp32."""
    device_type = hidden.device.type
    if not torch.is_autocast_enabled(device_type):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    cast = [t if t is None or not t.is_floating_point() else t.to(dtype) for t in (hidden, weight, bias)]
    return cast[0], cast[1], cast[2]


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
    backend: str | RowSoftmaxOps | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of ``labels`` under ``softmax((hidden @ weight.T + bias) / temperature)``.

    Shapes: hidden ``[N, H]`` (or ``[..., H]``), weight ``[V, H]``, labels ``[N]`` (``[...]``, long),
    bias ``[V]``. Returns fp32 ``logps`` shaped like ``labels``, 0 where ``labels == ignore_index``, or
    ``(logps, entropy)`` with the detached per-token entropy of the softmax (0 at ignored positions).
    Differentiable w.r.t. hidden, weight and bias; never builds the ``[N, V]`` logits (one ``[chunk_size,
    V]`` fp32 chunk at a time; ``chunk_size=None`` picks one, see ``chunked.default_chunk_size``).
    ``temperature`` divides the logits, as PPO does for sampling-consistent log-probs.
    """
    hidden, weight, bias = _autocast_inputs(hidden, weight, bias)
    check_linear_inputs(
        hidden,
        weight,
        labels,
        bias,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        temperature=temperature,
    )
    ops = _row_ops(hidden, backend)
    with torch.autocast(hidden.device.type, enabled=False):
        result = chunked_linear_logprobs(
            hidden.reshape(-1, hidden.shape[-1]),
            weight,
            labels.reshape(-1),
            bias,
            chunk_size=chunk_size,
            ignore_index=ignore_index,
            temperature=float(temperature),
            return_entropy=return_entropy,
            ops=ops,
        )
    if return_entropy:
        logps, entropy = result
        return logps.view(labels.shape), entropy.view(labels.shape)
    return result.view(labels.shape)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    temperature: float = 1.0,
    backend: str | RowSoftmaxOps | None = None,
) -> torch.Tensor:
    """Token cross-entropy of ``labels`` under ``softmax((hidden @ weight.T + bias) / temperature)``.

    Same shapes as ``fused_linear_logprobs``. ``reduction``: ``"mean"`` over the non-ignored tokens
    (nan when there are none, as ``F.cross_entropy``), ``"sum"``, or ``"none"`` (fp32 losses shaped like
    ``labels``, 0 at ignored positions). ``mean``/``sum`` compute the gradients during the forward pass
    (the upstream gradient is a scalar), so backward costs no recompute.
    """
    hidden, weight, bias = _autocast_inputs(hidden, weight, bias)
    check_linear_inputs(
        hidden,
        weight,
        labels,
        bias,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        temperature=temperature,
    )
    check_reduction(reduction)
    ops = _row_ops(hidden, backend)
    with torch.autocast(hidden.device.type, enabled=False):
        loss = chunked_linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]),
            weight,
            labels.reshape(-1),
            bias,
            chunk_size=chunk_size,
            ignore_index=ignore_index,
            reduction=reduction,
            temperature=float(temperature),
            ops=ops,
        )
    return loss.view(labels.shape) if reduction == "none" else loss
