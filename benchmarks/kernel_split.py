"""Where the LM-head ops' time goes: the naive and fused ops' matmuls vs the rest, against the chunk GEMM rate.

Settles how far ``bench_kernels.py``'s ratios can go. At N=4096, H=512, V=32000, fp32: times the chunk GEMM
(``[512, 512] @ [512, V]``, the fused ops' own product), then each op's forward+backward (3 timed steps, median
wall and process CPU) and one step under torch.profiler, whose per-op self times (calling thread) split it into
matmuls and the rest (log-softmax and its backward, fills, autograd). The floor of a fused op is its matmul count
x 2NHV FLOPs at the chunk GEMM rate; divided by the naive op's time it is the best ratio reachable.

    python benchmarks/kernel_split.py                # 2 threads
    python benchmarks/kernel_split.py --threads 1
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")


def gemm_rate(h: int, v: int, repeats: int = 5) -> tuple[float, float]:
    """(GFLOP/s wall, GFLOP per CPU-second) of the ``[512, h] @ [h, v]`` product."""
    import torch

    a, b, out = torch.randn(512, h), torch.randn(h, v), torch.empty(512, v)
    for _ in range(2):
        torch.mm(a, b, out=out)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        torch.mm(a, b, out=out)
    flops = repeats * 2 * 512 * h * v
    return flops / (time.perf_counter() - wall) / 1e9, flops / (time.process_time() - cpu) / 1e9


def split(step, tensors, repeats: int = 3) -> dict:
    """Median wall/CPU seconds of ``step`` and one profiled step's self seconds per op."""
    from torch.profiler import ProfilerActivity, profile

    step(*tensors)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step(*tensors)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(*tensors)
    ops: collections.Counter = collections.Counter()
    for event in prof.key_averages():
        ops[event.key] += event.self_cpu_time_total / 1e6
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "ops": ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--h", type=int, default=512)
    parser.add_argument("--v", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import os

    import torch
    from bench_kernels import MATMULS, _make_step

    torch.set_num_threads(args.threads)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {args.threads} threads")
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.n, args.h, generator=generator).requires_grad_()
    weight = (torch.randn(args.v, args.h, generator=generator) * 0.02).requires_grad_()
    labels = torch.randint(0, args.v, (args.n,), generator=generator)
    upstream = torch.randn(args.n, generator=generator)
    rate, rate_cpu = gemm_rate(args.h, args.v)
    print(
        f"chunk GEMM [512, {args.h}] @ [{args.h}, {args.v}]: {rate:.1f} GFLOP/s wall, {rate_cpu:.1f} per CPU-s"
    )
    gflop = 2 * args.n * args.h * args.v / 1e9
    for op in ("cross_entropy", "logprobs"):
        runs = {
            v: split(_make_step(op, v, None), (hidden, weight, labels, upstream)) for v in ("naive", "fused")
        }
        for variant, run in runs.items():
            total = sum(run["ops"].values())
            mm = sum(run["ops"][name] for name in MATMUL_OPS)
            work = MATMULS[(variant, op)] * gflop
            print(f"\n{op} {variant}: {run['wall']:.3f} s wall, {run['cpu']:.3f} CPU-s; {work:.0f} GFLOP of matmuls "
                  f"= {work / run['wall']:.1f} GFLOP/s wall ({100 * work / run['wall'] / rate:.0f} % of the GEMM "
                  f"rate); profiled step {total:.3f} s, matmuls {100 * mm / total:.0f} %")  # fmt: skip
            for name, seconds in run["ops"].most_common(5):
                print(f"    {name:56s} {seconds:.3f} s ({100 * seconds / total:.1f} %)")
        floor = MATMULS[("fused", op)] * gflop / rate
        print(f"{op}: fused/naive {runs['fused']['wall'] / runs['naive']['wall']:.2f}x wall, "
              f"{runs['fused']['cpu'] / runs['naive']['cpu']:.2f}x CPU; floor (fused matmuls at the GEMM rate) "
              f"{floor:.3f} s = {floor / runs['naive']['wall']:.2f}x naive wall")  # fmt: skip


if __name__ == "__main__":
    main()
