"""The public fused ops: check the inputs, pick the backend, flatten leading dims, follow autocast.

Backend choice (``backend=None``): ``$RLHF_KERNEL_BACKEND`` if set, else ``"auto"``: Triton for CUDA
tensors when triton imports, the chunked torch implementation otherwise. ``"torch"`` and ``"triton"``
force one; a ``RowSoftmaxOps`` instance is used as given (e.g. ``TritonRowSoftmax(block_v=32)``).

Imports go one way: this module imports the chunk driver (``chunked``) and the private Triton backend
(``_triton_row_softmax``, which imports triton only when used); neither imports this module.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rlhf_core.kernels._triton_row_softmax import TritonRowSoftmax, check_triton_device, triton_available
from rlhf_core.kernels.chunked import LinearCrossEntropyFunction, LinearLogprobsFunction, OpSpec, grad_needs
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
    return "triton" if hidden.is_cuda and triton_available() else "torch"


def _row_ops(hidden: torch.Tensor, backend: str | RowSoftmaxOps | None) -> RowSoftmaxOps:
    if backend is None or isinstance(backend, str):
        backend = TorchRowSoftmax() if select_backend(hidden, backend) == "torch" else TritonRowSoftmax()
    if isinstance(backend, TritonRowSoftmax):
        check_triton_device(hidden)
    return backend


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


def _apply(function: type[torch.autograd.Function], hidden, weight, labels, bias, backend, **options: Any):
    """Validate, then run ``function`` on the flattened ``[N, H]`` rows with autocast off (``options``: `OpSpec`'s)."""
    hidden, weight, bias = _autocast_inputs(hidden, weight, bias)
    checked = {k: options[k] for k in ("ignore_index", "chunk_size", "temperature")}
    check_linear_inputs(hidden, weight, labels, bias, **checked)
    spec = OpSpec(_row_ops(hidden, backend), grad_needs(hidden, weight, bias), **options)
    with torch.autocast(hidden.device.type, enabled=False):
        return function.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias, labels.reshape(-1), spec)


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
    logps, entropy = _apply(LinearLogprobsFunction, hidden, weight, labels, bias, backend, ignore_index=ignore_index,
                            temperature=temperature, chunk_size=chunk_size, return_entropy=return_entropy)  # fmt: skip
    if return_entropy:
        return logps.view(labels.shape), entropy.view(labels.shape)
    return logps.view(labels.shape)


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
    ``labels``, 0 at ignored positions, through the recomputing log-prob function). ``mean``/``sum``
    compute the gradients during the forward pass (the upstream gradient is a scalar), so backward
    costs no recompute.
    """
    check_reduction(reduction)
    if reduction == "none":
        logps = fused_linear_logprobs(hidden, weight, labels, bias, chunk_size=chunk_size,
                                      ignore_index=ignore_index, temperature=temperature, backend=backend)  # fmt: skip
        return -logps
    return _apply(LinearCrossEntropyFunction, hidden, weight, labels, bias, backend, ignore_index=ignore_index,
                  temperature=temperature, chunk_size=chunk_size, reduction=reduction)  # fmt: skip
