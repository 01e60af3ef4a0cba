"""DPO step time and memory: rlhf_core's DPOTrainer vs TRL's DPOTrainer (the `bench` extra), side by side.

Workload (issue 3): the ~11M-parameter Llama of ``benchmarks/models.py`` (vocabulary 30,522), HH-RLHF pairs with
an explicit prompt, sequence length 512 (prompt + completion, truncated by each trainer's own policy), 4 pairs per
step, fp32, 2 threads, sigmoid loss with beta 0.1, ``ref_model=None`` (each builds its own reference from the
policy), AdamW, no gradient checkpointing (TRL defaults it on; both run the same computation here), no evaluation
or saving.

Each implementation runs in a FRESH process; it reports the median wall seconds per optimizer step after
``--warmup`` steps, the same per second of process CPU time (a busy neighbour moves wall time much more than CPU
time), the non-padding tokens per step and the process's peak RSS (``VmHWM``).

Targets printed beside the ratios: seconds per step <= 0.7x TRL, peak RSS <= 0.5x TRL.

    python benchmarks/bench_dpo.py                        # 12 steps, 3 warm-up, one round
    python benchmarks/bench_dpo.py --steps 6 --warmup 2   # a quick check
    python benchmarks/bench_dpo.py --rounds 3             # alternate fresh processes, report medians
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from measurement import (  # noqa: E402
    MIB,
    StepClock,
    emit_result,
    median,
    peak_rss_bytes,
    run_worker,
    set_threads,
)

THREADS = 2
PAIRS_PER_STEP = 4
MAX_LENGTH = 512
TIME_TARGET = 0.7
RSS_TARGET = 0.5


def _config(steps: int, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=PAIRS_PER_STEP,
        max_length=MAX_LENGTH,
        beta=0.1,
        loss_type=["sigmoid"],
        max_steps=steps,
        learning_rate=5e-7,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
        # the same optimizer in both (TRL's default; rlhf_core's CPU default is the slower unfused AdamW here)
        optim="adamw_torch_fused",
        dataloader_num_workers=0,
        seed=0,
    )


def count_real_tokens(clock: StepClock, collator):
    """A collator that reports each batch's non-padding tokens (chosen + rejected rows) to `clock`."""

    def collate(features):
        batch = collator(features)
        clock.count_tokens(int(batch["attention_mask"].sum()))
        return batch

    return collate


def worker(impl: str, steps: int, warmup: int) -> None:
    set_threads(THREADS)
    from hh_data import hh_pairs
    from models import load_bench_model_and_tokenizer

    if impl == "ours":
        from rlhf_core import DPOConfig, DPOTrainer
    else:
        from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_bench_model_and_tokenizer()
    data = hh_pairs(explicit_prompt=True)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**_config(steps, output_dir)),
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[clock.callback()],
        )
        trainer.data_collator = count_real_tokens(clock, trainer.data_collator)
        trainer.train()
    emit_result({"impl": impl, "peak_rss": peak_rss_bytes(), **clock.summary(warmup)})


def run(impl: str, steps: int, warmup: int, script: str = __file__) -> dict:
    argv = [os.path.abspath(script), "--worker", impl, "--steps", str(steps), "--warmup", str(warmup)]
    return run_worker(argv, env={"OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"})


def aggregate(results: list[dict]) -> dict:
    keys = ("median_step_s", "median_step_cpu_s", "tokens_per_step", "peak_rss")
    return {**results[0], **{k: median([r[k] for r in results]) for k in keys}}


def report(title: str, ours: dict, trl: dict, time_target: float, rss_target: float | None) -> None:
    print(f"\n== {title} ==")
    print(f"{'':6} {'s/step':>7} {'CPU-s/step':>10} {'tokens/step':>11} {'peak RSS MiB':>12}")
    for name, r in (("ours", ours), ("TRL", trl)):
        print(
            f"{name:6} {r['median_step_s']:7.2f} {r['median_step_cpu_s']:10.2f} {r['tokens_per_step']:11.0f} "
            f"{r['peak_rss'] / MIB:12.0f}"
        )
    speed = ours["median_step_s"] / trl["median_step_s"]
    speed_cpu = ours["median_step_cpu_s"] / trl["median_step_cpu_s"]
    memory = ours["peak_rss"] / trl["peak_rss"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    line = (
        f"ours/TRL: s/step {speed:.2f}x, CPU-s/step {speed_cpu:.2f}x (target <= {time_target}x: "
        f"{verdict(speed <= time_target)}); peak RSS {memory:.2f}x"
    )
    if rss_target is not None:
        line += f" (target <= {rss_target}x: {verdict(memory <= rss_target)})"
    print(line)


def main() -> None:
    title = f"DPO, {PAIRS_PER_STEP} pairs/step, max length {MAX_LENGTH}, fp32, {THREADS} threads"
    side_by_side(__file__, __doc__, worker, title, TIME_TARGET, RSS_TARGET)


def side_by_side(
    script: str, doc: str | None, worker_fn, title: str, time_target: float, rss_target: float | None
) -> None:
    """The command line of a benchmark `script` whose ``worker_fn(impl, steps, warmup)`` trains one implementation
    (bench_kto.py shares it): fresh worker processes per implementation and round, medians, the ratio report."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (including warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the medians")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per implementation")
    parser.add_argument("--impls", default="ours,trl")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_fn(args.worker, args.steps, args.warmup)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")

    from models import bench_model_path

    print(f"model + tokenizer: {bench_model_path()}")
    impls = args.impls.split(",")
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    for _ in range(args.rounds):
        for impl in impls:
            runs[impl].append(run(impl, args.steps, args.warmup, script))
    results = {impl: aggregate(rs) for impl, rs in runs.items()}
    if "ours" in results and "trl" in results:
        report(title, results["ours"], results["trl"], time_target, rss_target)
    else:
        for impl, r in results.items():
            print(impl, r)


if __name__ == "__main__":
    main()
