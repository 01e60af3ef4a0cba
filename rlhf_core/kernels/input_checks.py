"""Argument checks for the fused ops, so a wrong call fails with a message instead of deep inside a GEMM."""

from __future__ import annotations

import math

import torch

__all__ = ["REDUCTIONS", "check_linear_inputs", "check_reduction"]

REDUCTIONS = ("mean", "sum", "none")


def check_linear_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    ignore_index: int,
    chunk_size: int | None,
    temperature: float,
) -> None:
    """Validate shapes ``hidden [..., H]``, ``weight [V, H]``, ``labels [...]`` (long), ``bias [V]``, and the options."""
    for name, value in (("hidden", hidden), ("weight", weight), ("labels", labels)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be the LM-head matrix [V, H]; got shape {tuple(weight.shape)}")
    if hidden.dim() < 2:
        raise ValueError(f"hidden must be [N, H] (or [..., H]); got shape {tuple(hidden.shape)}")
    vocab, width = weight.shape
    if hidden.shape[-1] != width:
        raise ValueError(
            f"hidden size mismatch: hidden is {tuple(hidden.shape)} (H={hidden.shape[-1]}) but weight is "
            f"[V={vocab}, H={width}]"
        )
    if labels.dtype != torch.long:
        raise TypeError(f"labels must be token ids of dtype torch.long (int64); got {labels.dtype}")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"token count mismatch: labels has shape {tuple(labels.shape)} but hidden has "
            f"{tuple(hidden.shape[:-1])} rows (one label per hidden row)"
        )
    if not hidden.dtype.is_floating_point or hidden.dtype != weight.dtype:
        raise TypeError(
            f"hidden and weight must share one floating dtype; got {hidden.dtype} and {weight.dtype}"
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (vocab,):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias must be [V={vocab}]; got {shape}")
        if bias.dtype != weight.dtype:
            raise TypeError(f"bias dtype {bias.dtype} differs from weight dtype {weight.dtype}")
    devices = {t.device for t in (hidden, weight, labels, bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(
            f"hidden, weight, labels and bias must be on one device; got {sorted(map(str, devices))}"
        )
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    if chunk_size is not None and (
        not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None (automatic); got {chunk_size!r}")
    _check_label_range(labels, vocab, ignore_index)


def _check_label_range(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        position = tuple(bad.nonzero()[0].tolist())
        where = position[0] if len(position) == 1 else position
        raise ValueError(
            f"labels[{where}] = {int(labels[position])} is outside the vocabulary [0, {vocab}) and is not "
            f"ignore_index ({ignore_index})"
        )


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
