"""Chunked torch backend of fused_linear_logprobs vs the naive log_softmax + gather reference."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.kernels import chunked, fused_linear_logprobs
from rlhf_core.kernels.chunked import LinearLogprobsFunction, OpSpec, grad_needs
from rlhf_core.kernels.reference import naive_linear_logprobs
from rlhf_core.kernels.row_softmax import TorchRowSoftmax

FP32_TOLERANCE = {"atol": 1e-5, "rtol": 5e-4}


def _run(fn, case, upstream=None, **kwargs):
    """Forward + backward of sum(upstream * logps); returns logps, (entropy), and the three grads."""
    hidden, weight, bias = case.leaves()
    result = fn(hidden, weight, case.labels, bias, **kwargs)
    logps, entropy = result if isinstance(result, tuple) else (result, None)
    weights = case.upstream if upstream is None else upstream
    (logps * weights).sum().backward()
    grads = (hidden.grad, weight.grad, None if bias is None else bias.grad)
    return logps.detach(), entropy, grads


def _assert_matches_reference(case, upstream=None, tolerance=FP32_TOLERANCE, **kwargs):
    ref_kwargs = {k: v for k, v in kwargs.items() if k in ("temperature", "return_entropy", "ignore_index")}
    fused = _run(fused_linear_logprobs, case, upstream, **kwargs)
    naive = _run(naive_linear_logprobs, case, upstream, **ref_kwargs)
    torch.testing.assert_close(fused[0], naive[0], **tolerance)
    for name, got, want in zip(("hidden", "weight", "bias"), fused[2], naive[2]):
        assert (got is None) == (want is None), name
        if want is not None:
            torch.testing.assert_close(got, want, **tolerance, msg=lambda m, n=name: f"grad {n}: {m}")
    return fused, naive


@pytest.mark.parametrize("chunk_size", [5, 16, 47, 64, None])
@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_grads_match_reference_on_odd_shapes(case_factory, chunk_size, with_bias):
    case = case_factory(47, 31, 123, bias=with_bias, ignore_every=4)
    fused, _ = _assert_matches_reference(case, chunk_size=chunk_size)
    assert fused[0].dtype == torch.float32 and fused[0].shape == (47,)


@pytest.mark.parametrize("temperature", [0.7, 1.9])
def test_temperature_divides_the_logits(case_factory, temperature):
    case = case_factory(ignore_every=5)
    fused, _ = _assert_matches_reference(case, chunk_size=10, temperature=temperature)
    plain = _run(fused_linear_logprobs, case, chunk_size=10)[0]
    assert not torch.allclose(fused[0], plain), "temperature had no effect"


def test_ignored_positions_give_zero_logp_and_no_gradient(case_factory):
    case = case_factory(ignore_every=3)
    ignored = case.labels == -100
    # Upstream gradient on ignored rows must not leak anywhere: give them a huge weight.
    upstream = torch.where(ignored, torch.full_like(case.upstream, 1e6), case.upstream)
    fused, _ = _assert_matches_reference(case, upstream=upstream, chunk_size=7)
    logps, _, (grad_hidden, _, _) = fused
    assert torch.equal(logps[ignored], torch.zeros(int(ignored.sum())))
    assert torch.equal(grad_hidden[ignored], torch.zeros_like(grad_hidden[ignored]))
    assert grad_hidden[~ignored].abs().sum() > 0


def test_custom_ignore_index(case_factory):
    case = case_factory(ignore_every=0)
    case.labels[::6] = 7  # token 7 is "ignored" here
    fused, _ = _assert_matches_reference(case, chunk_size=9, ignore_index=7)
    assert torch.equal(fused[0][::6], torch.zeros_like(fused[0][::6]))


def test_entropy_matches_reference_and_is_detached(case_factory):
    case = case_factory(ignore_every=4)
    fused, naive = _assert_matches_reference(case, chunk_size=6, temperature=0.8, return_entropy=True)
    torch.testing.assert_close(fused[1], naive[1], **FP32_TOLERANCE)
    assert not fused[1].requires_grad
    ignored = case.labels == -100
    assert torch.equal(fused[1][ignored], torch.zeros(int(ignored.sum())))
    # log V bounds the entropy of a V-way softmax; a real spread means the check is not vacuous.
    assert (fused[1][~ignored] > 0.1).all() and (fused[1] <= torch.log(torch.tensor(123.0))).all()


def test_hand_worked_two_token_example():
    # logits = [0, log 3] -> softmax [1/4, 3/4]; label 1 -> log(3/4); d logp / d logits = onehot - p.
    hidden = torch.tensor([[1.0]], requires_grad=True)
    weight = torch.tensor([[0.0], [torch.log(torch.tensor(3.0)).item()]], requires_grad=True)
    logps, entropy = fused_linear_logprobs(hidden, weight, torch.tensor([1]), return_entropy=True)
    logps.sum().backward()
    torch.testing.assert_close(logps, torch.log(torch.tensor([0.75])))
    torch.testing.assert_close(
        entropy,
        torch.tensor([-(0.25 * torch.log(torch.tensor(0.25)) + 0.75 * torch.log(torch.tensor(0.75)))]),
    )
    # d/dW_k = (onehot_k - p_k) * h = [-1/4, 1/4]; d/dh = sum_k (onehot_k - p_k) W_k = 1/4 * log 3.
    torch.testing.assert_close(weight.grad, torch.tensor([[-0.25], [0.25]]))
    torch.testing.assert_close(hidden.grad, torch.tensor([[0.25 * torch.log(torch.tensor(3.0)).item()]]))


def test_rows_with_zero_upstream_gradient_are_skipped_exactly(case_factory):
    case = case_factory(ignore_every=5)
    upstream = case.upstream.clone()
    upstream[1::3] = 0.0  # e.g. PPO rows masked by multiplication instead of ignore_index
    _assert_matches_reference(case, upstream=upstream, chunk_size=8)


def test_frozen_weight_and_bias_get_no_gradient(case_factory):
    case = case_factory(ignore_every=4)
    hidden = case.hidden.detach().clone().requires_grad_()
    logps = fused_linear_logprobs(hidden, case.weight, case.labels, case.bias, chunk_size=11)
    (logps * case.upstream).sum().backward()
    ref_hidden = case.hidden.detach().clone().requires_grad_()
    (naive_linear_logprobs(ref_hidden, case.weight, case.labels, case.bias) * case.upstream).sum().backward()
    torch.testing.assert_close(hidden.grad, ref_hidden.grad, **FP32_TOLERANCE)
    assert case.weight.grad is None and case.bias.grad is None


def test_all_positions_ignored(case_factory):
    case = case_factory(n=9)
    case.labels.fill_(-100)
    logps, _, (grad_hidden, grad_weight, grad_bias) = _run(fused_linear_logprobs, case, chunk_size=4)
    assert torch.equal(logps, torch.zeros(9))
    for grad in (grad_hidden, grad_weight, grad_bias):
        assert torch.count_nonzero(grad) == 0


def test_leading_dimensions_are_flattened_and_restored(case_factory):
    case = case_factory(n=24, ignore_every=5)
    hidden, weight, bias = case.leaves()
    logps = fused_linear_logprobs(hidden.view(4, 6, -1), weight, case.labels.view(4, 6), bias, chunk_size=5)
    assert logps.shape == (4, 6)
    expected = naive_linear_logprobs(case.hidden, case.weight, case.labels, case.bias)
    torch.testing.assert_close(logps.reshape(-1), expected, **FP32_TOLERANCE)


def test_bf16_inputs_run_with_fp32_statistics_and_bf16_grads(case_factory):
    case = case_factory(64, 48, 300, ignore_every=6, dtype=torch.bfloat16)
    # Many small chunks: the weight gradient is accumulated 16 times, in fp32.
    logps, entropy, grads = _run(fused_linear_logprobs, case, chunk_size=4, return_entropy=True)
    assert logps.dtype == torch.float32 and entropy.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3
    # Reference in fp32 on the same (bf16-valued) inputs: only the bf16 GEMMs and casts differ.
    ref_case = case_factory(64, 48, 300, ignore_every=6)
    ref_case.hidden, ref_case.weight, ref_case.bias = (
        case.hidden.float(),
        case.weight.float(),
        case.bias.float(),
    )
    ref = _run(naive_linear_logprobs, ref_case, return_entropy=True)
    torch.testing.assert_close(logps, ref[0], atol=0.05, rtol=0.02)
    torch.testing.assert_close(entropy, ref[1], atol=0.05, rtol=0.02)
    for name, got, want in zip(("hidden", "weight", "bias"), grads, ref[2]):
        error = (got.float() - want).abs().max()
        assert error <= 0.02 * want.abs().max(), f"bf16 grad {name} off by {error} (max {want.abs().max()})"


@pytest.mark.parametrize("frozen_head", [False, True])
def test_fp64_gradcheck(frozen_head):
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=not frozen_head)
    bias = torch.randn(11, dtype=torch.float64, generator=generator, requires_grad=not frozen_head)
    labels = torch.tensor([0, 3, -100, 10, 5, -100, 1])

    def fn(h, w, b):
        spec = OpSpec(TorchRowSoftmax(), grad_needs(h, w, b), temperature=0.9, chunk_size=3)
        return LinearLogprobsFunction.apply(h, w, b, labels, spec)[0]

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


@pytest.mark.parametrize(("frozen_head", "expected_passes"), [(False, 2), (True, 1)])
def test_frozen_head_skips_the_backward_recompute(case_factory, monkeypatch, frozen_head, expected_passes):
    calls = []
    original = chunked._chunk_logits
    monkeypatch.setattr(chunked, "_chunk_logits", lambda *a: calls.append(1) or original(*a))
    case = case_factory(ignore_every=4)
    hidden, weight, bias = case.leaves()
    weight.requires_grad_(not frozen_head)
    bias.requires_grad_(not frozen_head)
    logps, entropy = fused_linear_logprobs(
        hidden, weight, case.labels, bias, chunk_size=10, return_entropy=True
    )
    (logps * case.upstream).sum().backward()
    chunks = -(-int((case.labels != -100).sum()) // 10)
    assert len(calls) == expected_passes * chunks
    ref = _run(naive_linear_logprobs, case, return_entropy=True)
    torch.testing.assert_close(logps.detach(), ref[0], **FP32_TOLERANCE)
    torch.testing.assert_close(entropy, ref[1], **FP32_TOLERANCE)
    torch.testing.assert_close(hidden.grad, ref[2][0], **FP32_TOLERANCE)


def test_no_grad_forward_does_no_gradient_work(case_factory, monkeypatch):
    monkeypatch.setattr(chunked, "_hidden_direction", lambda *a: pytest.fail("gradient work under no_grad"))
    case = case_factory(ignore_every=4)
    hidden = case.hidden.clone().requires_grad_()  # frozen head + hidden requiring grad: the eager case
    with torch.no_grad():
        logps = fused_linear_logprobs(hidden, case.weight, case.labels, case.bias, chunk_size=10)
    torch.testing.assert_close(logps, naive_linear_logprobs(case.hidden, case.weight, case.labels, case.bias))


def test_autocast_bf16_activations_with_fp32_master_weights(case_factory):
    case = case_factory(40, 32, 200, ignore_every=5)
    hidden, weight, bias = case.leaves()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps = fused_linear_logprobs(hidden.bfloat16(), weight, case.labels, bias, chunk_size=16)
    (logps * case.upstream).sum().backward()
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    ref = _run(naive_linear_logprobs, case)
    torch.testing.assert_close(logps.detach(), ref[0], atol=0.05, rtol=0.02)
    for got, want in zip((hidden.grad, weight.grad, bias.grad), ref[2]):
        assert (got - want).abs().max() <= 0.03 * want.abs().max()
