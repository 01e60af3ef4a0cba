"""The CPU-checkable pieces of benchmarks/gpu_check.py: its no-CUDA exit, the reference comparison, the timing
helper, the 0.5B config, and --dry-run (every part, training steps included, at tiny shapes on the torch backend)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_and_exits_2():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-CUDA path is not taken here")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py")], capture_output=True, text=True)
    assert done.returncode == gpu_check.NO_CUDA_EXIT
    assert "no CUDA device" in done.stderr and "nothing measured" in done.stderr


@pytest.mark.parametrize("op", ["logprobs", "cross_entropy"])
def test_reference_check_passes_for_the_torch_backend(op):
    shape = {"tokens": 33, "hidden": 16, "vocab": 97}
    result = gpu_check.check_against_reference(op, "float32", "cpu", "torch", shape=shape)
    assert result["ok"], result
    assert set(result["worst"]) == {"value", "grad hidden", "grad weight", "grad bias"}


def test_reference_check_catches_a_wrong_kernel(monkeypatch):
    from rlhf_core.kernels import fused_linear_cross_entropy

    # A kernel 1 % off in value must fail the fp32 tolerance (rtol 5e-4): the check is not vacuous.
    monkeypatch.setattr(
        "rlhf_core.kernels.fused_linear_cross_entropy",
        lambda *a, **k: fused_linear_cross_entropy(*a, **k) * 1.01,
    )
    shape = {"tokens": 33, "hidden": 16, "vocab": 97}
    result = gpu_check.check_against_reference("cross_entropy", "float32", "cpu", "torch", shape=shape)
    assert not result["ok"] and result["worst"]["value"] > 1


def test_violation_is_relative_to_the_tolerance():
    want = torch.tensor([1.0, -2.0])
    assert gpu_check._max_violation(want + 2**-18, want, atol=2**-16, rtol=0.0) == 0.25  # exact in fp32
    assert gpu_check._max_violation(want * 1.01, want, atol=1e-5, rtol=0.02) < 0


def test_head_bench_runs_every_variant_on_cpu():
    results = gpu_check.bench_head(
        {"tokens": 64, "hidden": 16, "vocab": 300}, "cpu", "torch", dtype_name="float32", repeats=2
    )
    assert {"naive", "ours"} <= set(results)
    assert all(r["ms"] > 0 and r["extra_peak_bytes"] is None for r in results.values())


def test_model_config_is_half_a_billion_parameters():
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(gpu_check.model_config())
    assert 0.45e9 < sum(p.numel() for p in model.parameters()) < 0.55e9


def test_dry_run_goes_through_every_part_on_the_cpu(capsys):
    # The glue a GPU run depends on (argument handling, the three parts and their printing with CPU-side Nones)
    # must not wait for a lent GPU to show a crash. Part 3 runs train_steps for SFT and DPO on a tiny config.
    assert gpu_check.main(["--dry-run"]) == 0
    printed = capsys.readouterr().out
    for part in (
        "== 1.",
        "== 2.",
        "== 3.",
        "nothing here is a measurement",
        "torch kernels match the reference",
    ):
        assert part in printed
    assert printed.count(" ok ") == 4 and "FAILED" not in printed
    assert printed.count("tokens/s, peak GPU memory n/a") == 2


@pytest.mark.parametrize("op", ["logprobs", "cross_entropy"])
def test_bf16_check_is_against_the_exact_result(op):
    # At this shape the torch backend's bf16 log-prob gradients were 1.34x the tolerance away from the naive bf16
    # op while both were within 0.45x of the fp64 result: the check compared two rounding errors, not the kernel.
    shape = {"tokens": 33, "hidden": 16, "vocab": 97}
    result = gpu_check.check_against_reference(op, "bfloat16", "cpu", "torch", shape=shape)
    assert result["ok"], result
    assert set(result["naive_worst"]) == set(result["worst"])
