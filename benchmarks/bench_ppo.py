"""PPO update time and peak memory: rlhf_core's PPOTrainer vs TRL 1.12's experimental PPOTrainer.

Workload (issue 4): the ~11M-parameter Llama of ``benchmarks/models.py`` (vocabulary 30,522) used as policy,
reference, reward model and value model; 8 HH-RLHF prompts per update (``--prompts hh``, cut to their last
``--max-prompt-length`` tokens; ``--prompts synthetic`` for the short chat prompts of the bundled task), exactly
32 response tokens (no stop token, so both sample the same length), one PPO epoch, one mini-batch, fp32, CPU,
one process per trainer, the same thread count.

Each trainer runs in a FRESH subprocess (TRL from ``--trl-path``, put on ``sys.path`` in that subprocess only:
the Makefile's ``.venv/trl112`` by default, else ``pip install --no-deps --target /tmp/trl112 trl==1.12.0``). A callback stamps wall and process CPU time at the
end of every update; the first ``--warmup`` updates are dropped. Printed, never asserted: seconds per update
(median wall and CPU), peak RSS of the process, and the ratios ours/TRL (targets: <= 0.4x s/update, lower RSS).
On a shared machine wall time swings with the neighbours' load; CPU time much less.

    python benchmarks/bench_ppo.py                       # 6 updates each, 2 threads
    python benchmarks/bench_ppo.py --updates 3 --threads 1 --rounds 2
    python benchmarks/bench_ppo.py --also-value-head     # adds rlhf_core with value_model=None
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
MIB = 2**20
TIME_TARGET = 0.4


def _prompts(tokenizer, n: int, source: str, max_prompt_length: int):
    from datasets import Dataset

    from rlhf_core.data.tokenization import tokenize_prompts

    if source == "hh":
        from hh_data import hh_prompts

        rows = hh_prompts(n)
    else:
        from rlhf_core.data.synthetic import SyntheticTask

        rows = SyntheticTask(0).prompt_dataset(n, "train")
    ids = tokenize_prompts(rows, tokenizer, max_prompt_length=max_prompt_length)["input_ids"]
    return Dataset.from_dict({"input_ids": ids})


def _default_trl_path() -> str:
    """The Makefile's ``.venv/trl112`` when it is there, else ``/tmp/trl112`` (where run_all.py installs it)."""
    venv = Path(sys.prefix) / "trl112"
    return str(venv) if (venv / "trl").is_dir() else "/tmp/trl112"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


MEMORY: dict[str, int] = {}


def _stamp_callback(stamps: list[tuple[float, float]]):
    from transformers import TrainerCallback

    class Stamp(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            try:
                MEMORY["start_kib"] = _status_kib("VmRSS")
                _reset_peak_rss()
            except (OSError, StopIteration):
                pass
            stamps.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kw):
            stamps.append((time.perf_counter(), time.process_time()))

    return Stamp()


def _common(args) -> dict:
    return dict(output_dir=tempfile.mkdtemp(prefix="bench-ppo-"), per_device_train_batch_size=8,
                gradient_accumulation_steps=1, num_mini_batches=1, num_ppo_epochs=1, response_length=32,
                local_rollout_forward_batch_size=8, total_episodes=8 * args.updates, learning_rate=1e-6,
                temperature=1.0, report_to="none", save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
                bf16=False, fp16=False)  # fmt: skip


def _run_ours(args, folder: str, stamps) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_core import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(folder)
    config = PPOConfig(**_common(args), stop_token=None)
    value = (
        None
        if args.variant == "ours-value-head"
        else AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    )
    trainer = PPOTrainer(
        args=config,
        model=AutoModelForCausalLM.from_pretrained(folder),
        ref_model=AutoModelForCausalLM.from_pretrained(folder),
        reward_model=AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1),
        value_model=value,
        train_dataset=_prompts(tok, 8 * args.updates, args.prompts, args.max_prompt_length),
        processing_class=tok,
        callbacks=[_stamp_callback(stamps)],
    )
    trainer.train()


def _run_trl(args, folder: str, stamps) -> None:
    sys.path.insert(0, args.trl_path)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    config = PPOConfig(**_common(args), num_sample_generations=0, stop_token=None)
    dataset = _prompts(tok, 8 * args.updates, args.prompts, args.max_prompt_length)
    trainer = PPOTrainer(
        args=config,
        processing_class=tok,
        model=AutoModelForCausalLM.from_pretrained(folder),
        ref_model=AutoModelForCausalLM.from_pretrained(folder),
        reward_model=AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1),
        train_dataset=dataset,
        eval_dataset=dataset,
        callbacks=[_stamp_callback(stamps)],
    )
    trainer.train()


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    stamps: list[tuple[float, float]] = []
    run = _run_trl if args.variant == "trl" else _run_ours
    run(args, args.folder, stamps)
    walls = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])][args.warmup :]
    cpus = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])][args.warmup :]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:  # the growth of the peak RSS during train() above the RSS when it started (models, data loaded)
        train_extra = (_status_kib("VmHWM") - MEMORY["start_kib"]) * 1024
    except (OSError, StopIteration, KeyError):
        train_extra = None
    result = {"wall": walls, "cpu": cpus, "peak_rss": peak, "train_extra": train_extra}
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(args, variant: str, folder: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--folder", folder,
           "--updates", str(args.updates), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--trl-path", args.trl_path, "--prompts", args.prompts, "--max-prompt-length", str(args.max_prompt_length)]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} worker failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="updates dropped from the timings")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="alternate fresh ours/TRL processes R times")
    parser.add_argument("--trl-path", default=_default_trl_path())
    parser.add_argument("--also-value-head", action="store_true")
    parser.add_argument("--prompts", choices=("hh", "synthetic"), default="hh")
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if not Path(args.trl_path, "trl").is_dir():
        sys.exit(
            f"TRL 1.12 not found under {args.trl_path}: pip install --no-deps --target {args.trl_path} trl==1.12.0"
        )
    from models import bench_model_path

    variants = ["ours", "trl"] + (["ours-value-head"] if args.also_value_head else [])
    folder = str(bench_model_path())
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            results[variant].append(_spawn(args, variant, folder))
    _report(args, results)


def _report(args, results: dict[str, list[dict]]) -> None:
    def summary(runs: list[dict]) -> dict[str, float]:
        return {
            "wall": statistics.median(w for r in runs for w in r["wall"]),
            "cpu": statistics.median(c for r in runs for c in r["cpu"]),
            "rss": statistics.median(r["peak_rss"] for r in runs) / MIB,
            "extra": statistics.median(r["train_extra"] or 0 for r in runs) / MIB,
        }

    table = {name: summary(runs) for name, runs in results.items()}
    trl = table["trl"]
    print(f"PPO update: 8 {args.prompts} prompts (<= {args.max_prompt_length} tokens) x 32 tokens, 1 epoch, fp32, "
          f"CPU, {args.threads} thread(s), {args.updates} updates ({args.warmup} warm-up dropped) x {args.rounds} "
          f"round(s)")  # fmt: skip
    header = (f"{'trainer':<17}{'s/upd wall':>11}{'s/upd CPU':>10}{'wall ratio':>11}{'CPU ratio':>10}"
              f"{'peak RSS MiB':>13}{'RSS ratio':>10}{'train() extra MiB':>18}")  # fmt: skip
    print(header)
    for name, row in table.items():
        print(f"{name:<17}{row['wall']:>11.3f}{row['cpu']:>10.3f}{row['wall'] / trl['wall']:>11.2f}"
              f"{row['cpu'] / trl['cpu']:>10.2f}{row['rss']:>13.0f}{row['rss'] / trl['rss']:>10.2f}"
              f"{row['extra']:>18.0f}")  # fmt: skip
    ours = table["ours"]
    print(f"target: s/update ratio <= {TIME_TARGET} (ours with a separate critic as TRL: wall "
          f"{ours['wall'] / trl['wall']:.2f}, CPU {ours['cpu'] / trl['cpu']:.2f}); peak RSS lower "
          f"({ours['rss'] / trl['rss']:.2f}x). 'ours-value-head' = value_model=None (value head on the policy).")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
