"""The fused ops never allocate an [N, V] tensor: every tensor produced by any aten op is recorded."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from rlhf_core.kernels import fused_linear_cross_entropy, fused_linear_logprobs
from rlhf_core.kernels.reference import naive_linear_logprobs

N, H, V, CHUNK = 256, 8, 100, 32  # N * V = 25600 dwarfs weight (800), hidden (2048) and a chunk (3200)


class LargestTensor(TorchDispatchMode):
    """Records the largest numel of any tensor an aten op returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out


def _inputs():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, H, generator=generator, requires_grad=True)
    weight = torch.randn(V, H, generator=generator, requires_grad=True)
    labels = torch.randint(0, V, (N,), generator=generator)
    labels[::7] = -100
    return hidden, weight, labels


def _largest(step) -> int:
    hidden, weight, labels = _inputs()
    with LargestTensor() as probe:
        step(hidden, weight, labels)
    assert hidden.grad is not None and weight.grad is not None
    return probe.largest


def test_probe_sees_the_naive_full_logits():
    # The probe itself must be able to fail: the naive op builds [N, V].
    largest = _largest(lambda h, w, y: naive_linear_logprobs(h, w, y).sum().backward())
    assert largest >= N * V


@pytest.mark.parametrize("entropy", [False, True])
def test_logprobs_forward_and_backward_stay_within_one_chunk(entropy):
    def step(hidden, weight, labels):
        result = fused_linear_logprobs(hidden, weight, labels, chunk_size=CHUNK, return_entropy=entropy)
        logps = result[0] if entropy else result
        (logps * torch.linspace(-1, 1, N)).sum().backward()

    assert _largest(step) <= CHUNK * V


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_stays_within_one_chunk(reduction):
    def step(hidden, weight, labels):
        fused_linear_cross_entropy(
            hidden, weight, labels, chunk_size=CHUNK, reduction=reduction
        ).sum().backward()

    assert _largest(step) <= CHUNK * V


def test_saved_for_backward_is_inputs_plus_per_token_stats():
    saved: list[torch.Tensor] = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    hidden, weight, labels = _inputs()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logps = fused_linear_logprobs(hidden, weight, labels, chunk_size=CHUNK)
    logps.sum().backward()
    assert saved and max(t.numel() for t in saved) <= max(N * H, V * H)
    assert all(t.numel() < N * V for t in saved)
