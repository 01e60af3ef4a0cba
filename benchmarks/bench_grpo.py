"""GRPO and RLOO step time and memory: rlhf_core's trainers vs TRL 1.16's GRPOTrainer and RLOOTrainer.

Workload (issue 11): the ~11M-parameter Llama of ``benchmarks/models.py`` (vocabulary 30,522) as the policy,
HH-RLHF prompts (the conversation up to the last "Assistant:", the first ones of at most ``--max-prompt-tokens``
tokens, the same text for both), 8 prompts x 4 generations per optimizer step (micro-batches of 8 completions,
4 accumulation steps, so one generation per optimizer step), 32 completion tokens (the untrained model almost
never samples eos, so completions run to the limit: the mean length is printed), fp32, 2 threads, each trainer's
own defaults otherwise (GRPO: beta 0, no reference model, loss "dapo"; RLOO: beta 0.05 with a reference model),
a length reward, the same fused AdamW, no gradient checkpointing (TRL defaults it on; both run the same
computation here), no saving.

Each implementation runs in a FRESH process; it reports the median wall seconds per optimizer step (sampling,
scoring, reference pass and update) after ``--warmup`` steps, the same in process CPU seconds (a busy neighbour
moves wall time much more than CPU time), the process's peak RSS (``VmHWM``) and the 1-minute load average at its
start and end (the machine is shared: ratios from runs under very different loads do not compare). ``--rounds N``
alternates the implementations N times (ours, TRL, ours, ...) and takes medians. Printed, never asserted.

Targets printed beside the ratios: seconds per step <= 0.5x TRL, peak RSS <= 0.6x TRL.

    python benchmarks/bench_grpo.py                       # GRPO and RLOO, 8 steps, 2 warm-up
    python benchmarks/bench_grpo.py --algos grpo --steps 5 --warmup 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_dpo import aggregate, report  # noqa: E402
from measurement import MIB, StepClock, emit_result, median, peak_rss_bytes, run_worker, set_threads  # noqa: E402

THREADS = 2
PROMPTS_PER_STEP = 8
GENERATIONS = 4
COMPLETION_TOKENS = 32
TIME_TARGET = 0.5
RSS_TARGET = 0.6


def _config(steps: int, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=PROMPTS_PER_STEP * GENERATIONS // 8,
        num_generations=GENERATIONS,
        max_completion_length=COMPLETION_TOKENS,
        temperature=1.0,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
        optim="adamw_torch_fused",  # the same optimizer in both (TRL's default)
        dataloader_num_workers=0,
        seed=0,
    )


def length_reward(completions, **_):
    return [-abs(64 - len(c)) / 64 for c in completions]


def bench_prompts(tokenizer, n: int, max_tokens: int):
    """The first ``n`` HH prompts of at most ``max_tokens`` tokens (TRL 1.16 has no prompt truncation)."""
    from datasets import Dataset
    from hh_data import hh_prompts

    kept = [p for p in hh_prompts()["prompt"] if len(tokenizer(p)["input_ids"]) <= max_tokens]
    if len(kept) < n:
        raise SystemExit(f"only {len(kept)} HH prompts have <= {max_tokens} tokens; lower --steps")
    return Dataset.from_dict({"prompt": kept[:n]})


def worker(impl: str, algo: str, steps: int, warmup: int, max_prompt_tokens: int) -> None:
    set_threads(THREADS)
    load_start = os.getloadavg()[0]
    from models import load_bench_model_and_tokenizer

    package = __import__("rlhf_core" if impl == "ours" else "trl")
    name = "GRPO" if algo == "grpo" else "RLOO"
    config_cls, trainer_cls = getattr(package, f"{name}Config"), getattr(package, f"{name}Trainer")
    model, tokenizer = load_bench_model_and_tokenizer()
    prompts = bench_prompts(tokenizer, PROMPTS_PER_STEP * steps, max_prompt_tokens)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = trainer_cls(model=model, reward_funcs=length_reward, args=config_cls(**_config(steps, output_dir)),
                              train_dataset=prompts, processing_class=tokenizer, callbacks=[clock.callback()])  # fmt: skip
        trainer.train()
        lengths = [
            h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
        ]
    clock.step_tokens = [0] * len(clock.step_seconds)
    result = {"impl": impl, "algo": algo, "peak_rss": peak_rss_bytes(), **clock.summary(warmup),
              "load": [load_start, os.getloadavg()[0]]}  # fmt: skip
    emit_result({**result, "tokens_per_step": median(lengths) if lengths else float("nan")})


def run(impl: str, algo: str, args: argparse.Namespace) -> dict:
    argv = [os.path.abspath(__file__), "--worker", impl, "--algos", algo, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--max-prompt-tokens", str(args.max_prompt_tokens)]  # fmt: skip
    return run_worker(argv, env={"OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (including warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the medians")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per implementation")
    parser.add_argument("--algos", default="grpo,rloo")
    parser.add_argument("--impls", default="ours,trl")
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.algos, args.steps, args.warmup, args.max_prompt_tokens)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    from models import bench_model_path

    print(f"model + tokenizer: {bench_model_path()}  (measured under load: compare CPU-s too)")
    for algo in args.algos.split(","):
        runs: dict[str, list[dict]] = {impl: [] for impl in args.impls.split(",")}
        for _ in range(args.rounds):
            for impl in runs:
                runs[impl].append(run(impl, algo, args))
        results = {impl: aggregate(rs) for impl, rs in runs.items()}
        for impl, r in results.items():
            loads = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in (x["load"] for x in runs[impl]))
            print(f"{algo} {impl}: mean completion length {r['tokens_per_step']:.1f}, peak RSS "
                  f"{r['peak_rss'] / MIB:.0f} MiB, load average (1 min) at start -> end of each run: {loads}")  # fmt: skip
        if "ours" in results and "trl" in results:
            title = (f"{algo.upper()}, {PROMPTS_PER_STEP} prompts x {GENERATIONS} generations x {COMPLETION_TOKENS} "
                     f"tokens per step, fp32, {THREADS} threads ('tokens/step' = mean completion length)")  # fmt: skip
            report(title, results["ours"], results["trl"], TIME_TARGET, RSS_TARGET)
            cpu = results["ours"]["median_step_cpu_s"] / results["trl"]["median_step_cpu_s"]
            verdict = "met" if cpu <= TIME_TARGET else "NOT met"
            print(f"by CPU time: {cpu:.2f}x (target <= {TIME_TARGET}x: {verdict})")


if __name__ == "__main__":
    main()
