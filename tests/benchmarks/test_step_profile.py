"""benchmarks/step_profile.py sorts profiler events into the categories of the SFT profile table."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import step_profile  # noqa: E402


@dataclass
class Event:
    name: str
    self_cpu_time_total: float  # microseconds, as torch.profiler reports
    cpu_parent: Event | None = None
    thread: int = 1


@pytest.mark.parametrize(
    ("name", "ancestors", "expected"),
    [
        ("aten::mm", ["aten::linear"], "matmuls (transformer body)"),
        ("aten::mm", ["LinearCrossEntropyFunction"], "fused LM head (its matmuls)"),
        (
            "aten::_softmax",
            ["LinearLogprobsFunctionBackward", "autograd::engine"],
            "fused LM head (softmax and the rest)",
        ),
        ("aten::addcdiv_", ["aten::_foreach_addcdiv_", "Optimizer.step#AdamW.step"], "optimizer (AdamW)"),
        (
            "aten::mm",
            ["Optimizer.step#AdamW.step"],
            "optimizer (AdamW)",
        ),  # the optimizer wins over the op name
        ("aten::stack", ["collation"], "data collation"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", [], "attention (SDPA kernels)"),
        ("aten::mul", ["aten::silu"], "other torch ops (norms, rotary, SiLU, embedding grad, casts)"),
        ("autograd::engine::evaluate_function: MulBackward0", [], "Python, autograd engine, Trainer"),
    ],
)
def test_category(name, ancestors, expected):
    assert step_profile.category(name, ancestors) == expected


def test_breakdown_adds_uncovered_wall_time_to_python_and_skips_other_threads():
    step = Event("Optimizer.step#AdamW.step", 1e5)  # 0.1 s of its own
    events = [
        step,
        Event("aten::lerp_", 2e5, cpu_parent=step),
        Event("aten::mm", 5e5),
        Event("aten::mul", 3e5),
        Event("aten::mm", 9e5, thread=2),  # another thread's event: not the step's time
    ]
    seconds, other = step_profile.breakdown(events, wall_seconds=1.5)
    assert seconds["optimizer (AdamW)"] == pytest.approx(0.3)
    assert seconds["matmuls (transformer body)"] == pytest.approx(0.5)
    assert other == {"aten::mul": pytest.approx(0.3)}
    assert seconds["Python, autograd engine, Trainer"] == pytest.approx(1.5 - 1.1)
    assert sum(seconds.values()) == pytest.approx(1.5)
