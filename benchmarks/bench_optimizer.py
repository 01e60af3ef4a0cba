"""One AdamW step on the CPU: torch's fused kernel vs its foreach kernels vs its per-parameter loop.

Settles the trainers' CPU optimizer default (``rlhf_core/trainers/config_defaults.py``). What transformers' names
give on a CPU: ``optim="adamw_torch_fused"`` = ``AdamW(fused=True)``; ``optim="adamw_torch"`` = ``AdamW()``, whose
``foreach=None`` resolves to the per-parameter loop on the CPU (torch enables foreach by default only on CUDA/XPU);
``foreach=True`` is reachable only through ``optim_args``. Each is timed here as the Trainer builds it (two
parameter groups, decay and no-decay, transformers' betas/eps, weight decay 0).

Parameter sets: ``llama11m`` = the shared 11M benchmark Llama (``models.py``; SFT, reward, DPO, KTO, GRPO);
``ppo22m`` = that Llama as policy plus its sequence-classification copy as the critic (PPO in TRL's layout, one
optimizer over both, as ``PolicyAndValueWrapper``). Gradients are fixed random tensors (the step's cost does not
depend on their values). Per variant: a few warm-up steps (the first allocates the moment buffers), then
``--steps`` timed steps, repeated ``--repeats`` times with the variants interleaved so a busy neighbour hits all of
them alike. Printed: median and min wall ms per step and median CPU ms (process CPU time, all threads), and how far
each variant's weights land from the loop's after ``--compare-steps`` identical steps (float rounding only).

    python benchmarks/bench_optimizer.py                   # both sets, 1 and 2 threads
    python benchmarks/bench_optimizer.py --sets llama11m --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}


def parameter_sets(names: list[str]) -> dict:
    import torch
    from models import bench_model_path
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = bench_model_path()
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    sets = {}
    if "llama11m" in names:
        sets["llama11m"] = list(policy.parameters())
    if "ppo22m" in names:
        critic = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        sets["ppo22m"] = list(policy.parameters()) + list(critic.parameters())
    return sets


def make_optimizer(params: list, variant: str, lr: float = 5e-5):
    """AdamW as transformers' Trainer builds it: weights in one group, norms and biases in another."""
    import torch

    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, **VARIANTS[variant])


def clone_with_grads(params: list, seed: int) -> list:
    import torch

    generator = torch.Generator().manual_seed(seed)
    clones = []
    for p in params:
        clone = p.detach().clone().requires_grad_(True)
        clone.grad = torch.randn(p.shape, generator=generator) * 1e-3
        clones.append(clone)
    return clones


def time_steps(optimizer, steps: int) -> tuple[float, float]:
    """(wall s, process CPU s) per step over ``steps`` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def measure(params: list, threads: int, steps: int, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    import torch

    torch.set_num_threads(threads)
    optimizers = {name: make_optimizer(clone_with_grads(params, 0), name) for name in VARIANTS}
    for optimizer in optimizers.values():
        time_steps(optimizer, warmup)
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpus: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            wall, cpu = time_steps(optimizer, steps)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {
        name: {
            "wall_ms": 1e3 * statistics.median(walls[name]),
            "wall_min_ms": 1e3 * min(walls[name]),
            "cpu_ms": 1e3 * statistics.median(cpus[name]),
        }
        for name in VARIANTS
    }


def weight_differences(params: list, steps: int, lr: float) -> dict[str, tuple[float, float]]:
    """Per variant: (max |w - w_loop|, max |w_loop - w_start|) after ``steps`` steps from the same weights/grads."""

    finals = {}
    for name in VARIANTS:
        clones = clone_with_grads(params, 0)
        optimizer = make_optimizer(clones, name, lr=lr)
        for _ in range(steps):
            optimizer.step()
        finals[name] = clones
    moved = max(
        (a.detach() - p.detach()).abs().max().item() for a, p in zip(finals["loop"], params, strict=True)
    )
    return {
        name: (
            max((a - b).abs().max().item() for a, b in zip(finals[name], finals["loop"], strict=True)),
            moved,
        )
        for name in VARIANTS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["llama11m", "ppo22m"], choices=["llama11m", "ppo22m"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compare-steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of the weight comparison")
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sets = parameter_sets(args.sets)
    for set_name, params in sets.items():
        count = sum(p.numel() for p in params)
        print(f"\n{set_name}: {count / 1e6:.1f}M parameters in {len(params)} tensors")
        print(
            f"{'threads':>7} {'variant':>8} {'wall ms':>8} {'min ms':>8} {'CPU ms':>8} {'CPU vs fused':>12}"
        )
        for threads in args.threads:
            rows = measure(params, threads, args.steps, args.repeats, args.warmup)
            for name, row in rows.items():
                ratio = row["cpu_ms"] / rows["fused"]["cpu_ms"]
                print(f"{threads:>7} {name:>8} {row['wall_ms']:8.1f} {row['wall_min_ms']:8.1f} "
                      f"{row['cpu_ms']:8.1f} {ratio:11.2f}x")  # fmt: skip
        torch.set_num_threads(max(args.threads))
        diffs = weight_differences(params, args.compare_steps, args.lr)
        for name, (diff, moved) in diffs.items():
            print(f"  {name:>8}: max |w - w_loop| after {args.compare_steps} steps at lr {args.lr:g}: {diff:.2e} "
                  f"(weights moved up to {moved:.2e})")  # fmt: skip
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
