"""Measuring benchmark workers: peak RSS, per-step wall time, tokens, the machine's matmul rate, fresh processes.

Shared by the SFT, reward, DPO and PPO benchmarks. Each implementation runs in its own fresh process
(`run_worker`), which prints one JSON line that the parent collects; peak memory is the process's own high-water
mark (``VmHWM``), so one implementation's allocations never count against another.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

MIB = 2**20
RESULT_PREFIX = "BENCH_RESULT "
# TrainingArguments every trainer benchmark shares: no saving, reporting, progress bars, mixed precision, gradient
# checkpointing (TRL defaults it on; both sides run the same computation) or data-loader workers.
QUIET_TRAINING_ARGS = dict(save_strategy="no", report_to="none", disable_tqdm=True, bf16=False,
                           gradient_checkpointing=False, dataloader_num_workers=0, seed=0)  # fmt: skip


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_bytes() -> int:
    rss = _status_kib("VmRSS")
    if rss is not None:
        return rss * 1024
    import psutil

    return psutil.Process().memory_info().rss


def set_threads(threads: int) -> None:
    """Pin torch (and the BLAS/OpenMP pools) to ``threads``; call before heavy work in a worker."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def matmul_gflops(threads: int = 2, size: int = 1024, repeats: int = 10) -> dict[str, float]:
    """Measured fp32 GEMM rate on ``threads`` threads over ``repeats`` [size]^3 products.

    ``gflops``: best wall-clock rate. ``gflops_per_cpu_s``: FLOPs per second of process CPU time (all threads),
    which a busy neighbour disturbs much less than wall time.
    """
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best, cpu_start = float("inf"), time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    flops = 2 * size**3
    return {
        "gflops": flops / best / 1e9,
        "gflops_per_cpu_s": repeats * flops / (time.process_time() - cpu_start) / 1e9,
    }


class StepClock:
    """Wall time and token count of each optimizer step, as a `transformers.TrainerCallback`.

    ``count_tokens`` is called by the wrapped collator (see `wrap_collator`) with each micro-batch's number of
    real (non-padding) tokens; the total of a step is read at its end.
    """

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.step_cpu_seconds: list[float] = []
        self.step_tokens: list[int] = []
        self._pending_tokens = 0
        self._start = self._cpu_start = 0.0

    def count_tokens(self, n: int) -> None:
        self._pending_tokens += n

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock._start, clock._cpu_start = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                clock.step_seconds.append(time.perf_counter() - clock._start)
                clock.step_cpu_seconds.append(time.process_time() - clock._cpu_start)
                clock.step_tokens.append(clock._pending_tokens)
                clock._pending_tokens = 0

        return _Callback()

    def wrap_collator(self, collator: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
        """A collator that reports ``sum(len(row["input_ids"]))`` of each batch before collating it."""

        def collate(features: list[Any]) -> Any:
            self.count_tokens(sum(len(f["input_ids"]) for f in features))
            return collator(features)

        return collate

    def summary(self, warmup: int) -> dict[str, float]:
        """Median wall and CPU seconds per step, tokens/s and tokens per CPU-second over the steps after ``warmup``."""
        seconds, tokens = self.step_seconds[warmup:], self.step_tokens[warmup:]
        cpu = self.step_cpu_seconds[warmup:]
        return {
            "steps_measured": len(seconds),
            "median_step_s": median(seconds),
            "median_step_cpu_s": median(cpu),
            "tokens_per_step": median(tokens),
            "tokens_per_s": sum(tokens) / sum(seconds) if seconds else float("nan"),
            "tokens_per_cpu_s": sum(tokens) / sum(cpu) if cpu else float("nan"),
        }


def emit_result(result: dict[str, Any]) -> None:
    """Print a worker's result line for `run_worker` to find."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(
    argv: Sequence[str], *, timeout: float | None = None, env: dict[str, str] | None = None
) -> dict:
    """Run ``python <argv>`` in a fresh process and return the JSON it emitted (raises with its output on failure)."""
    proc = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(
        f"worker {' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
