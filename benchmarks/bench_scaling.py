"""Scaling curves: peak RSS and tokens/s of SFT (packed) and DPO against sequence length and vocabulary, vs TRL 1.16.

Workload: the Llama body of ``benchmarks/models.py`` (hidden 256, 4 layers, 4 heads, intermediate 688, tied
embeddings, fp32, 2 threads, AdamW fused, no gradient checkpointing), its vocabulary resized to 32,000 or 128,000 rows
(the HH tokenizer's ids all fit; every LM-head matmul has the full width), max positions 4,096. Per configuration:

- SFT: HH chosen transcripts packed (best-fit decreasing) into rows of ``seq`` tokens, 1 row per step;
- DPO: 1 pair per step, each side about ``seq`` tokens (the prompt is HH transcripts joined up to ``seq`` minus the
  answer), sigmoid loss, beta 0.1, the reference built by each trainer from the policy.

Every (workload, implementation, vocabulary, length) runs in its own FRESH process: peak RSS is that process's
high-water mark (``VmHWM``), tokens/s the real (non-padding) tokens of the measured steps over their wall time,
and tokens per CPU-second beside it (the machine is shared: wall time moves with the neighbours' load, CPU time less).
A configuration whose projected peak is above ``--max-gib`` (default 6 GiB) is skipped with the reason printed: the
projection is a line through the two previous lengths of the same series (before that, a per-token allowance of
``LOGIT_COPIES`` fp32 logit rows for TRL, which materialises ``[tokens, V]`` logits, and the measured body
activations for ours). A projection can be wrong, so each worker also watches its own RSS and exits (the cell is
reported as failed, the grid goes on) once it passes ``--hard-gib`` (default 8 GiB): the machine is shared.

Prints one table and writes ``bench_scaling.png`` (or ``--plot PATH``) next to it: peak RSS and tokens/s against
sequence length, one line per (workload, implementation, vocabulary). Each measured configuration is also appended to
``bench_scaling.jsonl`` (``--results``), so a long run that was stopped continues with ``--resume``, and
``--report-only`` prints the table and the plot from what was measured.

    python benchmarks/bench_scaling.py                               # the full grid, one run (slow: tens of minutes)
    python benchmarks/bench_scaling.py --seqs 512,1024 --vocabs 32000 --workloads sft   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from measurement import (
    MIB,
    QUIET_TRAINING_ARGS,
    StepClock,
    emit_result,
    peak_rss_bytes,
    run_worker,
    set_threads,
)  # noqa: E402

THREADS = 2
GIB = 2**30
# Per real token, the fp32 [tokens, V] rows TRL keeps alive at its peak (logits, log-softmax, their gradient and
# the entropy/accuracy temporaries): a first guess, replaced by the measured slope once two lengths ran.
LOGIT_COPIES = {"sft": 4.0, "dpo": 5.0}
OURS_BYTES_PER_TOKEN = (
    256 * 1024
)  # body activations of this 4-layer, width-256 model (measured at 512: ~0.2 MiB)
BASE_BYTES = 1.2 * GIB  # interpreter, torch, transformers, datasets, the model and its AdamW state


@dataclass(frozen=True)
class Config:
    workload: str  # "sft" | "dpo"
    impl: str  # "ours" | "trl"
    vocab: int
    seq: int

    @property
    def label(self) -> str:
        return f"{self.workload} {self.impl} V={self.vocab // 1000}k"


def _model(vocab: int, tokenizer, folder: str):
    """The resized benchmark Llama, saved into ``folder`` and loaded back (TRL's ``ref_model=None`` reloads the
    policy by its name, so a model built in memory alone fails there)."""
    import torch
    from models import MODEL_SHAPE, SEED
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    shape = {**MODEL_SHAPE, "max_position_embeddings": 4096}
    config = LlamaConfig(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        LlamaForCausalLM(config).save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype="float32")


def _long_pairs(tokens: int, tokenizer):
    """HH pairs whose prompt is several transcripts joined up to about ``tokens`` minus the longer answer, so both
    sides are nearly ``tokens`` long and no prompt alone fills ``max_length`` (TRL drops such rows)."""
    from datasets import Dataset
    from hh_data import hh_pairs, hh_texts

    pairs, texts = hh_pairs(64, explicit_prompt=True), list(hh_texts()["text"])
    rows: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    cursor = 0
    for pair in pairs:
        answer = max(len(tokenizer(pair[k])["input_ids"]) for k in ("chosen", "rejected"))
        budget = tokens - answer - len(tokenizer(pair["prompt"])["input_ids"]) - 8
        if answer > tokens // 4 or budget <= 0:
            continue
        ids: list[int] = []
        while len(ids) < budget:
            ids += tokenizer(texts[cursor % len(texts)])["input_ids"]
            cursor += 1
        rows["prompt"].append(tokenizer.decode(ids[:budget]) + pair["prompt"])
        rows["chosen"].append(pair["chosen"])
        rows["rejected"].append(pair["rejected"])
    return Dataset.from_dict(rows)


def _classes(workload: str, impl: str):
    """``(config class, trainer class)`` of the workload in this project or in TRL."""
    import importlib

    names = ("SFTConfig", "SFTTrainer") if workload == "sft" else ("DPOConfig", "DPOTrainer")
    module = importlib.import_module("rlhf_core" if impl == "ours" else "trl")
    return getattr(module, names[0]), getattr(module, names[1])


def _args(config: Config, steps: int, output_dir: str) -> dict:
    common = dict(output_dir=output_dir, per_device_train_batch_size=1, max_length=config.seq, max_steps=steps,
                  logging_steps=1000, optim="adamw_torch_fused", **QUIET_TRAINING_ARGS)  # fmt: skip
    if config.workload == "sft":
        return {**common, "packing": True, "learning_rate": 2e-5}
    return {**common, "beta": 0.1, "loss_type": ["sigmoid"], "learning_rate": 5e-7}


def _rss_watchdog(limit_bytes: int, period_s: float = 0.2) -> None:
    """Exit this process (code 3) as soon as its resident set passes ``limit_bytes``: a wrong projection must
    fail one cell, not push a shared machine into swap or the OOM killer."""
    import threading
    import time

    from measurement import current_rss_bytes

    def watch() -> None:
        while True:
            rss = current_rss_bytes()
            if rss > limit_bytes:
                print(f"RSS {rss / GIB:.1f} GiB passed the {limit_bytes / GIB:g} GiB hard limit", flush=True)
                os._exit(3)
            time.sleep(period_s)

    threading.Thread(target=watch, daemon=True).start()


def worker(config: Config, steps: int, warmup: int, hard_gib: float) -> None:
    _rss_watchdog(int(hard_gib * GIB))
    set_threads(THREADS)
    from hh_data import hh_texts
    from models import load_bench_model_and_tokenizer

    _, tokenizer = load_bench_model_and_tokenizer()
    Args, Trainer = _classes(config.workload, config.impl)
    data = hh_texts() if config.workload == "sft" else _long_pairs(config.seq, tokenizer)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        model = _model(config.vocab, tokenizer, os.path.join(output_dir, "model"))
        trainer = Trainer(model=model, args=Args(**_args(config, steps, output_dir)), train_dataset=data,
                          processing_class=tokenizer, callbacks=[clock.callback()])  # fmt: skip
        trainer.data_collator = _counting(clock, trainer.data_collator, config.workload)
        trainer.train()
    emit_result({"peak_rss": peak_rss_bytes(), **clock.summary(warmup)})


def _counting(clock: StepClock, collator, workload: str):
    """Count each batch's real tokens: non-padding ``input_ids`` of SFT rows, the attention mask's ones for DPO."""

    def collate(features):
        batch = collator(features)
        if workload == "dpo" and "attention_mask" in batch:
            clock.count_tokens(int(batch["attention_mask"].sum()))
        else:
            clock.count_tokens(sum(len(f["input_ids"]) for f in features))
        return batch

    return collate


def projected_peak(config: Config, measured: dict[Config, dict]) -> float:
    """Projected peak RSS bytes of ``config`` from the two longest measured lengths of its series, else a guess."""
    series = sorted((c.seq, r["peak_rss"]) for c, r in measured.items()
                    if (c.workload, c.impl, c.vocab) == (config.workload, config.impl, config.vocab))  # fmt: skip
    if len(series) >= 2:
        (s0, p0), (s1, p1) = series[-2:]
        slope = max(0.0, (p1 - p0) / (s1 - s0))
        return p1 + slope * (config.seq - s1)
    tokens = config.seq * (2 if config.workload == "dpo" else 1)
    if config.impl == "trl":
        per_token = LOGIT_COPIES[config.workload] * 4 * config.vocab
    else:
        per_token = OURS_BYTES_PER_TOKEN
    base = series[-1][1] - per_token * series[-1][0] * tokens / config.seq if series else BASE_BYTES
    return max(base, BASE_BYTES) + per_token * tokens


def _run(config: Config, args: argparse.Namespace) -> dict:
    argv = [os.path.abspath(__file__), "--worker", config.workload, config.impl, str(config.vocab), str(config.seq),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--hard-gib", str(args.hard_gib)]  # fmt: skip
    env = {"OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    return run_worker(argv, env=env, timeout=args.timeout)


def _table(rows: list[tuple[Config, dict | str]]) -> None:
    print(f"\n{'workload':8} {'impl':5} {'vocab':>7} {'seq':>5} {'peak RSS MiB':>12} {'tokens/s':>9} "
          f"{'tokens/CPU-s':>12} {'s/step':>7} {'CPU-s/step':>10}")  # fmt: skip
    for c, r in rows:
        head = f"{c.workload:8} {c.impl:5} {c.vocab:>7} {c.seq:>5}"
        if isinstance(r, str):
            print(f"{head} {r}")
            continue
        print(f"{head} {r['peak_rss'] / MIB:12.0f} {r['tokens_per_s']:9.0f} {r['tokens_per_cpu_s']:12.0f} "
              f"{r['median_step_s']:7.2f} {r['median_step_cpu_s']:10.2f}")  # fmt: skip


def slopes(rows: list[tuple[Config, dict | str]]) -> dict[str, float]:
    """Peak-RSS slope (MiB per 1,000 sequence tokens) of each series, least squares over its measured lengths."""
    series: dict[str, list[tuple[int, float]]] = {}
    for c, r in rows:
        if not isinstance(r, str):
            series.setdefault(c.label, []).append((c.seq, r["peak_rss"] / MIB))
    out = {}
    for label, points in series.items():
        if len(points) < 2:
            continue
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        num = sum((x - mean_x) * (y - mean_y) for x, y in points)
        out[label] = 1000 * num / sum((x - mean_x) ** 2 for x, _ in points)
    return out


def plot(rows: list[tuple[Config, dict | str]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Tokens per CPU-second beside wall tokens/s: on a shared machine the wall panel mostly shows the neighbours.
    fig, (rss_ax, speed_ax, cpu_ax) = plt.subplots(1, 3, figsize=(17, 4.5))
    labels = sorted({c.label for c, r in rows if not isinstance(r, str)})
    for label in labels:
        points = sorted((c.seq, r) for c, r in rows if c.label == label and not isinstance(r, str))
        style = "-" if " ours " in f" {label} " else "--"
        xs = [s for s, _ in points]
        rss_ax.plot(xs, [r["peak_rss"] / GIB for _, r in points], style, marker="o", label=label)
        speed_ax.plot(xs, [r["tokens_per_s"] for _, r in points], style, marker="o", label=label)
        cpu_ax.plot(xs, [r["tokens_per_cpu_s"] for _, r in points], style, marker="o", label=label)
    titles = ((rss_ax, "peak RSS (GiB)"), (speed_ax, "tokens/s (wall, measured under load)"),
              (cpu_ax, "tokens per CPU-second"))  # fmt: skip
    for ax, title in titles:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    rss_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def _grid(args: argparse.Namespace) -> list[Config]:
    return [Config(w, i, v, q) for w in args.workloads.split(",") for v in map(int, args.vocabs.split(","))
            for i in args.impls.split(",") for q in map(int, args.seqs.split(","))]  # fmt: skip


def _load_results(path: str) -> dict[Config, dict]:
    """Results a previous run appended to ``path`` (one JSON object per line), by configuration."""
    import json

    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return {Config(**r["config"]): r["result"] for r in records}


def _append_result(path: str, config: Config, result: dict) -> None:
    import dataclasses
    import json

    with open(path, "a") as handle:
        handle.write(json.dumps({"config": dataclasses.asdict(config), "result": result}) + "\n")


def _measure_grid(args: argparse.Namespace, results: dict[Config, dict]) -> list[tuple[Config, dict | str]]:
    """Run (or, resuming, reuse) every configuration in order; skip those projected above the memory budget."""
    rows: list[tuple[Config, dict | str]] = []
    measured: dict[Config, dict] = {}
    for config in _grid(args):
        if config in results:
            measured[config] = results[config]
            rows.append((config, results[config]))
            continue
        projection = projected_peak(config, measured)
        if projection > args.max_gib * GIB:
            reason = f"skipped: projected peak {projection / GIB:.1f} GiB > {args.max_gib:g} GiB"
            print(f"{config.label} seq {config.seq}: {reason}", flush=True)
            rows.append((config, reason))
            continue
        if args.report_only:
            rows.append((config, "not run"))
            continue
        try:
            result = _run(config, args)
        except Exception as error:  # one failed configuration must not lose the table
            rows.append((config, f"failed: {str(error).strip().splitlines()[-1][:120]}"))
            continue
        measured[config] = result
        rows.append((config, result))
        _append_result(args.results, config, result)
        print(f"{config.label} seq {config.seq}: {result['peak_rss'] / MIB:.0f} MiB, "
              f"{result['tokens_per_s']:.0f} tokens/s, {result['tokens_per_cpu_s']:.0f} tokens/CPU-s", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seqs", default="512,1024,2048,4096")
    parser.add_argument("--vocabs", default="32000,128000")
    parser.add_argument("--workloads", default="sft,dpo")
    parser.add_argument("--impls", default="ours,trl")
    parser.add_argument(
        "--steps", type=int, default=3, help="optimizer steps per process (including warm-up)"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--max-gib", type=float, default=6.0, help="skip configurations projected above this peak"
    )
    parser.add_argument("--hard-gib", type=float, default=8.0, help="a worker whose RSS passes this exits")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument(
        "--plot", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_scaling.png")
    )
    parser.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_scaling.jsonl"),
                        help="each measured configuration is appended here (JSON lines)")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="reuse the configurations already in --results")
    parser.add_argument(
        "--report-only", action="store_true", help="print the table and plot from --results, run nothing"
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("WORKLOAD", "IMPL", "VOCAB", "SEQ"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        workload, impl, vocab, seq = args.worker
        return worker(Config(workload, impl, int(vocab), int(seq)), args.steps, args.warmup, args.hard_gib)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    results = _load_results(args.results) if args.resume or args.report_only else {}
    if not args.resume and not args.report_only and os.path.exists(args.results):
        os.remove(args.results)
    rows = _measure_grid(args, results)
    print(f"\nfp32, {THREADS} threads, {args.steps - args.warmup} measured step(s) per process after {args.warmup} "
          "warm-up; measured under load from other processes (compare CPU-seconds)")  # fmt: skip
    _table(rows)
    print("\npeak-RSS slope, MiB per 1,000 sequence tokens (least squares over the measured lengths):")
    for label, slope in slopes(rows).items():
        print(f"  {label:22} {slope:8.1f}")
    if any(not isinstance(r, str) for _, r in rows):
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
