"""fused_linear_cross_entropy (gradients computed in forward for mean/sum) vs F.cross_entropy on full logits."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.kernels import chunked, fused_linear_cross_entropy
from rlhf_core.kernels.reference import naive_linear_cross_entropy

FP32_TOLERANCE = {"atol": 1e-5, "rtol": 5e-4}


def _run(fn, case, reduction, upstream_scale, **kwargs):
    hidden, weight, bias = case.leaves()
    loss = fn(hidden, weight, case.labels, bias, reduction=reduction, **kwargs)
    if reduction == "none":
        (loss * case.upstream).sum().backward()
    else:
        (loss * upstream_scale).backward()
    return loss.detach(), (hidden.grad, weight.grad, bias.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [6, 47, None])
def test_reductions_match_torch_cross_entropy(case_factory, reduction, chunk_size):
    case = case_factory(47, 31, 123, ignore_every=4)
    # An upstream scale != 1 checks that backward rescales the gradients computed in forward.
    fused = _run(fused_linear_cross_entropy, case, reduction, 2.5, chunk_size=chunk_size)
    naive = _run(naive_linear_cross_entropy, case, reduction, 2.5)
    torch.testing.assert_close(fused[0], naive[0], **FP32_TOLERANCE)
    for name, got, want in zip(("hidden", "weight", "bias"), fused[1], naive[1]):
        torch.testing.assert_close(got, want, **FP32_TOLERANCE, msg=lambda m, n=name: f"grad {n}: {m}")


def test_mean_is_over_non_ignored_tokens_only(case_factory):
    case = case_factory(ignore_every=2)
    mean = fused_linear_cross_entropy(case.hidden, case.weight, case.labels, case.bias, chunk_size=5)
    total = fused_linear_cross_entropy(case.hidden, case.weight, case.labels, case.bias, reduction="sum")
    kept = int((case.labels != -100).sum())
    assert kept < case.labels.numel()
    torch.testing.assert_close(mean, total / kept, **FP32_TOLERANCE)


def test_temperature(case_factory):
    case = case_factory(ignore_every=3)
    fused = _run(fused_linear_cross_entropy, case, "mean", 1.0, chunk_size=8, temperature=0.6)
    naive = _run(naive_linear_cross_entropy, case, "mean", 1.0, temperature=0.6)
    torch.testing.assert_close(fused[0], naive[0], **FP32_TOLERANCE)
    for got, want in zip(fused[1], naive[1]):
        torch.testing.assert_close(got, want, **FP32_TOLERANCE)


def test_all_ignored_mean_is_nan_like_torch(case_factory):
    case = case_factory(n=5)
    case.labels.fill_(-100)
    fused = _run(fused_linear_cross_entropy, case, "mean", 1.0)
    assert math.isnan(float(fused[0]))
    assert math.isnan(float(naive_linear_cross_entropy(case.hidden, case.weight, case.labels, case.bias)))
    assert all(torch.count_nonzero(g) == 0 for g in fused[1])


@pytest.mark.parametrize("ignored", ["all", "none"])
def test_sum_gradients_are_exact_whoever_takes_part(case_factory, ignored):
    # The weight gradient buffer is not zero-filled (the first chunk's GEMM writes it) and the hidden gradient is
    # not either when every row takes part: no row taking part must still give exact zeros, not stale memory.
    case = case_factory(20, 8, 30)
    if ignored == "all":
        case.labels[:] = -100
    torch.empty(64 * 30, 8).fill_(float("nan"))  # leave garbage for an allocator to hand back
    fused = _run(fused_linear_cross_entropy, case, "sum", 2.0, chunk_size=6)
    naive = _run(naive_linear_cross_entropy, case, "sum", 2.0)
    for got, want in zip((fused[0], *fused[1]), (naive[0], *naive[1])):
        torch.testing.assert_close(got, want, **FP32_TOLERANCE)
    if ignored == "all":
        assert all(bool((g == 0).all()) for g in fused[1])


def test_no_grad_forward_matches_and_computes_no_gradients(case_factory, monkeypatch):
    monkeypatch.setattr(chunked, "_accumulate_chunk_grads", lambda *a: pytest.fail("gradients under no_grad"))
    case = case_factory(ignore_every=5)
    hidden, weight, bias = case.leaves()  # parameters that require grad, as in an eval loop
    with torch.no_grad():
        loss = fused_linear_cross_entropy(hidden, weight, case.labels, bias, chunk_size=10)
    torch.testing.assert_close(
        loss, naive_linear_cross_entropy(case.hidden, case.weight, case.labels, case.bias), **FP32_TOLERANCE
    )


def test_second_backward_is_refused_with_a_message(case_factory):
    case = case_factory()
    hidden, weight, bias = case.leaves()
    loss = fused_linear_cross_entropy(hidden, weight, case.labels, bias)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def test_bf16_cross_entropy_close_to_fp32(case_factory):
    case = case_factory(64, 48, 300, ignore_every=6, dtype=torch.bfloat16)
    loss, grads = _run(fused_linear_cross_entropy, case, "mean", 1.0, chunk_size=4)
    assert loss.dtype == torch.float32 and [g.dtype for g in grads] == [torch.bfloat16] * 3
    ref_case = case_factory(64, 48, 300, ignore_every=6)
    ref_case.hidden, ref_case.weight, ref_case.bias = (
        case.hidden.float(),
        case.weight.float(),
        case.bias.float(),
    )
    ref_loss, ref_grads = _run(naive_linear_cross_entropy, ref_case, "mean", 1.0)
    torch.testing.assert_close(loss, ref_loss, atol=0.02, rtol=0.01)
    for got, want in zip(grads, ref_grads):
        assert (got.float() - want).abs().max() <= 0.02 * want.abs().max()
