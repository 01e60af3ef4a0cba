"""The Triton backend, run by triton's interpreter on the CPU (TRITON_INTERPRET=1, fp32, small shapes).

triton decides between compiling and interpreting when a kernel is defined, so the checks run in a
subprocess that sets TRITON_INTERPRET=1 before anything imports triton; the rest of the test session
keeps its normal triton. The subprocess is this file run as a script: it compares the Triton backend
with the naive reference and prints one JSON verdict per case, which the tests below assert on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FP32_TOLERANCE = {"atol": 1e-5, "rtol": 5e-4}
CASES = (
    "logprobs_multi_slice",
    "logprobs_no_bias_default_block",
    "logprobs_frozen_head",
    "cross_entropy_mean",
    "cross_entropy_sum",
    "cross_entropy_none",
    "dispatch_forced_triton",
)


def _make_case(**kwargs):
    spec = importlib.util.spec_from_file_location("kernel_test_cases", HERE / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_case(**kwargs)


def _run(fn, case, loss_of, **kwargs):
    hidden, weight, bias = case.leaves()
    out = fn(hidden, weight, case.labels, bias, **kwargs)
    loss_of(out).backward()
    grads = (hidden.grad, weight.grad, None if bias is None else bias.grad)
    return out, grads


def _compare(got, want) -> None:
    import torch

    got_out, want_out = (got[0], want[0]) if isinstance(got[0], tuple) else ((got[0],), (want[0],))
    for g, w in zip(got_out, want_out):
        torch.testing.assert_close(g.detach(), w.detach(), **FP32_TOLERANCE)
    for name, g, w in zip(("hidden", "weight", "bias"), got[1], want[1]):
        assert (g is None) == (w is None), name
        if w is not None:
            torch.testing.assert_close(g, w, **FP32_TOLERANCE, msg=lambda m, n=name: f"grad {n}: {m}")


def _check(name: str) -> None:
    from rlhf_core.kernels import fused_linear_cross_entropy, fused_linear_logprobs
    from rlhf_core.kernels._triton_row_softmax import TritonRowSoftmax
    from rlhf_core.kernels.reference import naive_linear_cross_entropy, naive_linear_logprobs

    if name == "logprobs_multi_slice":
        case = _make_case(bias=True, ignore_every=4)
        options = {"temperature": 0.7, "return_entropy": True}
        loss_of = lambda out: (out[0] * case.upstream).sum()  # noqa: E731
        # block_v=32 < V=123: the online logsumexp / entropy runs over 4 slices, the last one partial.
        got = _run(
            fused_linear_logprobs, case, loss_of, chunk_size=10, backend=TritonRowSoftmax(32), **options
        )
        _compare(got, _run(naive_linear_logprobs, case, loss_of, **options))
    elif name == "logprobs_no_bias_default_block":
        case = _make_case(bias=False, ignore_every=6)
        loss_of = lambda out: (out * case.upstream).sum()  # noqa: E731
        got = _run(fused_linear_logprobs, case, loss_of, backend=TritonRowSoftmax())
        _compare(got, _run(naive_linear_logprobs, case, loss_of))
    elif name == "logprobs_frozen_head":
        # Only hidden needs a gradient: forward also turns each chunk into its softmax (second kernel).
        case = _make_case(ignore_every=3)
        hidden = case.hidden.clone().requires_grad_()
        logps, entropy = fused_linear_logprobs(
            hidden,
            case.weight,
            case.labels,
            case.bias,
            chunk_size=8,
            backend=TritonRowSoftmax(64),
            return_entropy=True,
        )
        (logps * case.upstream).sum().backward()
        ref_hidden = case.hidden.clone().requires_grad_()
        ref_logps, ref_entropy = naive_linear_logprobs(
            ref_hidden, case.weight, case.labels, case.bias, return_entropy=True
        )
        (ref_logps * case.upstream).sum().backward()
        _compare(((logps, entropy), (hidden.grad,)), ((ref_logps, ref_entropy), (ref_hidden.grad,)))
    elif name.startswith("cross_entropy"):
        reduction = name.rsplit("_", 1)[1]
        case = _make_case(ignore_every=3)
        loss_of = (
            (lambda out: (out * case.upstream).sum()) if reduction == "none" else (lambda out: out * 1.5)
        )
        options = {"reduction": reduction, "chunk_size": 9, "backend": TritonRowSoftmax(32)}
        got = _run(fused_linear_cross_entropy, case, loss_of, **options)
        _compare(got, _run(naive_linear_cross_entropy, case, loss_of, reduction=reduction))
    elif name == "dispatch_forced_triton":
        case = _make_case(ignore_every=5)
        loss_of = lambda out: (out * case.upstream).sum()  # noqa: E731
        got = _run(fused_linear_logprobs, case, loss_of, backend="triton", chunk_size=16)
        _compare(got, _run(naive_linear_logprobs, case, loss_of))
        assert "rlhf_core.kernels._triton_kernels" in sys.modules, "dispatch did not load the Triton kernels"
    else:
        raise KeyError(name)


def _main() -> None:
    verdicts = {}
    for name in CASES:
        try:
            _check(name)
            verdicts[name] = "ok"
        except Exception as error:  # report every case, not just the first failure
            verdicts[name] = f"{type(error).__name__}: {error}"
    print(json.dumps(verdicts))


@pytest.fixture(scope="module")
def interpreter_verdicts() -> dict[str, str]:
    pytest.importorskip(
        "triton", reason="triton cannot be imported in this environment: Triton backend not tested"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"interpreter run failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.triton
@pytest.mark.parametrize("case", CASES)
def test_triton_backend_matches_reference_under_interpreter(interpreter_verdicts, case):
    assert interpreter_verdicts[case] == "ok", interpreter_verdicts[case]


if __name__ == "__main__":
    _main()
