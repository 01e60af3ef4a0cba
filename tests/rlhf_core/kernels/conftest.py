"""Inputs for the kernel tests: odd shapes, ignored positions, fresh leaf tensors per run."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch


@dataclass
class LinearCase:
    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    labels: torch.Tensor
    upstream: torch.Tensor

    def leaves(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Fresh leaf copies (hidden, weight, bias) that require grad, so two runs never share .grad."""
        hidden = self.hidden.detach().clone().requires_grad_()
        weight = self.weight.detach().clone().requires_grad_()
        bias = None if self.bias is None else self.bias.detach().clone().requires_grad_()
        return hidden, weight, bias


def make_case(
    n: int = 47,
    h: int = 31,
    v: int = 123,
    *,
    bias: bool = True,
    ignore_every: int = 0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> LinearCase:
    """Logits with a spread of a few units (like a trained LM head), so softmaxes are neither flat nor one-hot."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=generator)
    weight = torch.randn(v, h, generator=generator) * (2.0 / h**0.5)
    bias_t = torch.randn(v, generator=generator) * 0.5 if bias else None
    labels = torch.randint(0, v, (n,), generator=generator)
    if ignore_every:
        labels[::ignore_every] = -100
    upstream = torch.randn(n, generator=generator)
    cast = (lambda t: t.to(dtype)) if dtype != torch.float32 else (lambda t: t)
    return LinearCase(cast(hidden), cast(weight), None if bias_t is None else cast(bias_t), labels, upstream)


@pytest.fixture
def case_factory():
    return make_case
