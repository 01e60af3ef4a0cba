"""SFT throughput and memory: rlhf_core's SFTTrainer vs TRL's SFTTrainer (the `bench` extra), side by side.

Workload (issue 2): the ~11M-parameter Llama of ``benchmarks/models.py`` (vocabulary 30,522), HH-RLHF chosen
transcripts as language-modelling text, sequence length 512, batch 4, fp32, 2 threads, AdamW, logging every 10
steps, no gradient checkpointing in either (TRL defaults it on; both run the same computation here), no evaluation or
saving. Two modes: ``padded`` (packing=False in both) and ``packed`` (packing=True, best-fit decreasing, in both).

Each (implementation, mode) runs in a FRESH process; it reports the median wall seconds per optimizer step after
``--warmup`` steps, non-padding tokens per second (real tokens of the rows consumed / step time) and the process's
peak RSS. The model FLOP utilisation (MFU) is the model's FLOPs per second against the fp32 GEMM rate measured on the
same 2 threads (a 1024^3 matmul, best of 10) in its own process; model FLOPs per step are ``6 * parameters`` per real
token plus causal attention, ``6 * layers * hidden * n * (n + 1)`` per document of ``n`` tokens (``QK^T`` and ``AV``,
forward and backward; documents of a packed row attend only to themselves). Because a shared machine's neighbours move wall
times, the same figures are also given per second of process CPU time (tokens per CPU-second, MFU against GEMM
FLOPs per CPU-second), which contention disturbs much less.

Targets printed beside the ratios, per mode: tokens/s >= 1.5x TRL, peak RSS <= 0.6x TRL, MFU >= 50 %.

    python benchmarks/bench_sft.py                      # 30 steps, 5 warm-up, both modes, one round
    python benchmarks/bench_sft.py --steps 12 --warmup 3  # a quick check
    python benchmarks/bench_sft.py --rounds 3           # alternate fresh processes, report medians
    python benchmarks/bench_sft.py --profile 4          # torch.profiler over 4 steps of ours: where the time goes

On a shared machine wall time moves with the neighbours' load: compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from measurement import (  # noqa: E402
    MIB,
    QUIET_TRAINING_ARGS,
    StepClock,
    emit_result,
    matmul_gflops,
    median,
    peak_rss_bytes,
    run_worker,
    set_threads,
)

THREADS = 2
BATCH = 4
MAX_LENGTH = 512
TOKENS_TARGET = 1.5
RSS_TARGET = 0.6
MFU_TARGET = 0.5


def _common_config(impl: str, mode: str, steps: int, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=BATCH,
        max_length=MAX_LENGTH,
        packing=mode == "packed",
        max_steps=steps,
        learning_rate=2e-5,
        logging_steps=10,
        **QUIET_TRAINING_ARGS,
    )


class WorkClock(StepClock):
    """`StepClock` that also sums each step's causal attention pairs ``n (n + 1) / 2`` over its documents."""

    def __init__(self) -> None:
        super().__init__()
        self.step_pairs: list[int] = []
        self._pending_pairs = 0

    def wrap_collator(self, collator):
        def collate(features):
            for f in features:
                lengths = f.get("seq_lengths") or [len(f["input_ids"])]
                self._pending_pairs += sum(n * (n + 1) // 2 for n in lengths)
            return counting(features)

        counting = super().wrap_collator(collator)
        return collate

    def callback(self):
        base, clock = super().callback(), self

        class _Callback(type(base)):
            def on_step_end(self, args, state, control, **kwargs):
                super().on_step_end(args, state, control, **kwargs)
                clock.step_pairs.append(clock._pending_pairs)
                clock._pending_pairs = 0

        return _Callback()

    def summary(self, warmup: int) -> dict[str, float]:
        pairs, tokens = sum(self.step_pairs[warmup:]), sum(self.step_tokens[warmup:])
        return {**super().summary(warmup), "attention_pairs_per_token": pairs / max(tokens, 1)}


def _trainer(impl: str, mode: str, steps: int, output_dir: str, clock: StepClock):
    from hh_data import hh_texts
    from models import load_bench_model_and_tokenizer

    model, tokenizer = load_bench_model_and_tokenizer()
    data = hh_texts()
    config = _common_config(impl, mode, steps, output_dir)
    if impl == "ours":
        from rlhf_core import SFTConfig, SFTTrainer
    else:
        from trl import SFTConfig, SFTTrainer
    trainer = SFTTrainer(model=model, args=SFTConfig(**config), train_dataset=data, processing_class=tokenizer,
                         callbacks=[clock.callback()])  # fmt: skip
    trainer.data_collator = clock.wrap_collator(trainer.data_collator)
    return trainer, model


def worker(impl: str, mode: str, steps: int, warmup: int) -> None:
    set_threads(THREADS)
    clock = WorkClock()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, model = _trainer(impl, mode, steps, output_dir, clock)
        trainer.train()
    shape = {
        "params": model.num_parameters(),
        "layers": model.config.num_hidden_layers,
        "hidden": model.config.hidden_size,
    }
    emit_result({"impl": impl, "mode": mode, **shape, "peak_rss": peak_rss_bytes(), **clock.summary(warmup)})


def profile_worker(mode: str, steps: int, warmup: int) -> None:
    """Our trainer for ``warmup`` steps, then ``steps`` under torch.profiler; prints where the time goes."""
    import time

    import torch
    from step_profile import breakdown, print_table, with_collation_scope
    from transformers import TrainerCallback

    set_threads(THREADS)
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    window: list[float] = []

    class _Start(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                window.append(time.perf_counter())
                profiler.start()

    clock = WorkClock()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer, _ = _trainer("ours", mode, warmup + steps, output_dir, clock)
        trainer.args.logging_steps = (
            warmup + steps
        )  # one statistics step, the last one, as in a 10-step log period
        trainer.add_callback(_Start())
        trainer.data_collator = with_collation_scope(trainer.data_collator)
        trainer.train()
        profiler.stop()
    wall = time.perf_counter() - window[0]
    print_table(f"ours, {mode}", *breakdown(profiler.events(), wall), steps)
    print(f"CPU-seconds per measured step: {median(clock.step_cpu_seconds[warmup:]):.2f}; "
          f"wall: {median(clock.step_seconds[warmup:]):.2f} (measured under load)")  # fmt: skip


def _matmul_worker() -> None:
    set_threads(THREADS)
    emit_result(matmul_gflops(THREADS))


def _run(impl: str, mode: str, args: argparse.Namespace) -> dict:
    argv = [os.path.abspath(__file__), "--worker", impl, "--mode", mode, "--steps", str(args.steps),
            "--warmup", str(args.warmup)]  # fmt: skip
    return run_worker(argv, env={"OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"})


def _aggregate(results: list[dict]) -> dict:
    keys = (
        "median_step_s",
        "median_step_cpu_s",
        "tokens_per_s",
        "tokens_per_cpu_s",
        "tokens_per_step",
        "peak_rss",
        "attention_pairs_per_token",
    )
    return {**results[0], **{k: median([r[k] for r in results]) for k in keys}}


def model_flops_per_token(r: dict) -> float:
    """``6 * parameters`` plus causal attention: 4 d FLOPs per query-key pair and layer forward, x3 with backward."""
    return 6 * r["params"] + 12 * r["layers"] * r["hidden"] * r["attention_pairs_per_token"]


def _report(mode: str, ours: dict, trl: dict, rate: dict) -> None:
    print(f"\n== {mode} (batch {BATCH}, max length {MAX_LENGTH}, fp32, {THREADS} threads) ==")
    print(f"{'':6} {'s/step':>7} {'CPU-s/step':>10} {'tokens/step':>11} {'tokens/s':>9} {'tokens/CPU-s':>12} "
          f"{'peak RSS MiB':>12} {'MFU':>6} {'MFU(CPU)':>8}")  # fmt: skip
    for name, r in (("ours", ours), ("TRL", trl)):
        flops_per_token = model_flops_per_token(r)
        r["mfu"] = flops_per_token * r["tokens_per_s"] / (rate["gflops"] * 1e9)
        r["mfu_cpu"] = flops_per_token * r["tokens_per_cpu_s"] / (rate["gflops_per_cpu_s"] * 1e9)
        print(f"{name:6} {r['median_step_s']:7.2f} {r['median_step_cpu_s']:10.2f} {r['tokens_per_step']:11.0f} "
              f"{r['tokens_per_s']:9.0f} {r['tokens_per_cpu_s']:12.0f} {r['peak_rss'] / MIB:12.0f} "
              f"{100 * r['mfu']:5.1f}% {100 * r['mfu_cpu']:7.1f}%")  # fmt: skip
    speed, memory = ours["tokens_per_s"] / trl["tokens_per_s"], ours["peak_rss"] / trl["peak_rss"]
    speed_cpu = ours["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"ours/TRL: tokens/s {speed:.2f}x, per CPU-s {speed_cpu:.2f}x (target >= {TOKENS_TARGET}x: "
          f"{verdict(speed >= TOKENS_TARGET)}); peak RSS {memory:.2f}x (target <= {RSS_TARGET}x: "
          f"{verdict(memory <= RSS_TARGET)}); MFU {100 * ours['mfu']:.1f}%, by CPU time {100 * ours['mfu_cpu']:.1f}% "
          f"(target >= {100 * MFU_TARGET:.0f}%: {verdict(min(ours['mfu'], ours['mfu_cpu']) >= MFU_TARGET)})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (including warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    parser.add_argument("--modes", default="padded,packed")
    parser.add_argument("--impls", default="ours,trl")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per implementation and mode")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="profile STEPS steps of ours per mode (after --warmup) instead of benchmarking")  # fmt: skip
    parser.add_argument("--worker", choices=["ours", "trl", "matmul", "profile"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="padded", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "matmul":
        return _matmul_worker()
    if args.worker == "profile":
        return profile_worker(args.mode, args.profile, args.warmup)
    if args.profile:
        for mode in args.modes.split(","):
            argv = [os.path.abspath(__file__), "--worker", "profile", "--mode", mode, "--profile", str(args.profile),
                    "--warmup", str(args.warmup)]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
            subprocess.run([sys.executable, *argv], env=env, check=True)
        return None
    if args.worker:
        return worker(args.worker, args.mode, args.steps, args.warmup)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")

    from models import bench_model_path

    print(f"model + tokenizer: {bench_model_path()}")
    impls = args.impls.split(",")
    rate = run_worker([os.path.abspath(__file__), "--worker", "matmul"])
    print(f"measured fp32 matmul rate on {THREADS} threads: {rate['gflops']:.1f} GFLOP/s wall, "
          f"{rate['gflops_per_cpu_s']:.1f} GFLOP per CPU-second")  # fmt: skip
    for mode in args.modes.split(","):
        runs: dict[str, list[dict]] = {impl: [] for impl in impls}
        for _ in range(args.rounds):
            for impl in impls:
                runs[impl].append(_run(impl, mode, args))
        results = {impl: _aggregate(rs) for impl, rs in runs.items()}
        if "ours" in results and "trl" in results:
            _report(mode, results["ours"], results["trl"], rate)
        else:
            for impl, r in results.items():
                print(mode, impl, r)


if __name__ == "__main__":
    main()
