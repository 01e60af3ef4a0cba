"""Where a training step's time goes: torch.profiler events sorted into matmuls, attention, fused LM head, optimizer,
data collation, other torch ops and Python, from each event's own (self) time and its ancestors.

Used by ``bench_sft.py --profile``. Self times are wall time on the calling thread (the intra-op threads have no
events of their own), so the shares hold on a loaded machine even where the seconds do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MATMULS = {
    "aten::mm",
    "aten::addmm",
    "aten::addmm_",
    "aten::bmm",
    "aten::baddbmm",
    "aten::addmv_",
    "aten::addbmm",
}
FUSED_HEAD = ("LinearCrossEntropyFunction", "LinearLogprobsFunction")
COLLATION = "collation"
CATEGORIES = (
    "matmuls (transformer body)",
    "attention (SDPA kernels)",
    "fused LM head (its matmuls)",
    "fused LM head (softmax and the rest)",
    "optimizer (AdamW)",
    "data collation",
    "other torch ops (norms, rotary, SiLU, embedding grad, casts)",
    "Python, autograd engine, Trainer",
)


def _ancestors(event: Any) -> list[str]:
    names, parent = [], event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def category(name: str, ancestors: list[str]) -> str:
    """The category of an event's self time, from its name and its ancestors' names (innermost first)."""
    scopes = [name, *ancestors]  # a scope's own time (its Python) belongs to it too
    if any(a.startswith("Optimizer.step") for a in scopes):
        return "optimizer (AdamW)"
    if COLLATION in scopes:
        return "data collation"
    if any(head in a for a in scopes for head in FUSED_HEAD):
        return "fused LM head (its matmuls)" if name in MATMULS else "fused LM head (softmax and the rest)"
    if name in MATMULS:
        return "matmuls (transformer body)"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention (SDPA kernels)"
    if name.startswith("aten::"):
        return "other torch ops (norms, rotary, SiLU, embedding grad, casts)"
    return "Python, autograd engine, Trainer"


def breakdown(events: Any, wall_seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per category, and per op name within "other torch ops"; what no event covers (``wall_seconds`` minus
    all self times on the main thread) counts as Python."""
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    other: dict[str, float] = {}
    main_thread = min((e.thread for e in events), default=0)
    for event in events:
        if event.thread != main_thread:  # data-loader or profiler threads: not the step's own time
            continue
        name = category(event.name, _ancestors(event))
        seconds[name] += event.self_cpu_time_total / 1e6
        if name.startswith("other torch ops"):
            other[event.name] = other.get(event.name, 0.0) + event.self_cpu_time_total / 1e6
    covered = sum(seconds.values())
    seconds["Python, autograd engine, Trainer"] += max(0.0, wall_seconds - covered)
    return seconds, other


def print_table(title: str, seconds: dict[str, float], other: dict[str, float], steps: int) -> None:
    total = sum(seconds.values())
    print(f"\n== {title}: {steps} profiled steps, {total / steps:.2f} s per step ==")
    print(f"{'where':62} {'s/step':>7} {'share':>6}")
    for name, value in seconds.items():
        print(f"{name:62} {value / steps:7.3f} {100 * value / total:5.1f}%")
    top = sorted(other.items(), key=lambda item: -item[1])[:8]
    print("largest of the other torch ops: " + ", ".join(f"{n} {100 * v / total:.1f}%" for n, v in top))


def with_collation_scope(collator: Callable) -> Callable:
    """The collator inside a ``record_function("collation")`` scope, so the profile can tell its time apart."""
    import torch

    def collate(features):
        with torch.profiler.record_function(COLLATION):
            return collator(features)

    return collate
