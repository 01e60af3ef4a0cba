"""Reward modelling: step time and memory vs TRL's RewardTrainer, and held-out accuracy on HH-RLHF.

``speed`` (default). Workload (issue 3): the ~11M-parameter Llama of ``benchmarks/models.py`` (vocabulary 30,522)
with a one-label sequence-classification head, HH-RLHF pairs with an explicit prompt, sequence length 512 (pairs
longer than that are dropped by both: TRL's policy, ``overlong="drop"`` here), 4 pairs per step, fp32, 2 threads,
AdamW, no gradient checkpointing, no evaluation or saving. Each implementation runs in a FRESH process; reported:
median wall and CPU seconds per optimizer step after ``--warmup`` steps, non-padding tokens per step, peak RSS.
Target printed beside the ratio: seconds per step <= 0.8x TRL.

``accuracy``. The tiny model (``rlhf-tiny``) as a reward model trained on 80 % of all 2,312 HH-RLHF pairs
(shuffled with seed 0) and scored on the other 20 %: the share of held-out pairs whose chosen transcript gets the
higher reward (chance: 0.5; the standard error on 463 pairs is about 0.023). Sequences are cut to 128 tokens with
the prompt kept to its last 32 (the completions' openings carry most of the signal a 0.2M-parameter model can
learn; longer context scored lower in our runs), one epoch, batch 16, lr 1e-3 with a cosine schedule, 1 thread.

    python benchmarks/bench_reward.py                         # speed: 12 steps, 3 warm-up
    python benchmarks/bench_reward.py speed --steps 6 --warmup 2
    python benchmarks/bench_reward.py accuracy --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_dpo import aggregate, count_real_tokens, report  # noqa: E402
from measurement import StepClock, emit_result, peak_rss_bytes, run_worker, set_threads  # noqa: E402

THREADS = 2
PAIRS_PER_STEP = 4
MAX_LENGTH = 512
TIME_TARGET = 0.8


def _config(impl: str, steps: int, output_dir: str) -> dict:
    config = dict(
        output_dir=output_dir,
        per_device_train_batch_size=PAIRS_PER_STEP,
        max_length=MAX_LENGTH,
        max_steps=steps,
        learning_rate=1e-5,
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
    if impl == "ours":
        config["overlong"] = "drop"  # TRL's RewardTrainer drops pairs longer than max_length
    return config


def speed_worker(impl: str, steps: int, warmup: int) -> None:
    set_threads(THREADS)
    from hh_data import hh_pairs
    from models import bench_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if impl == "ours":
        from rlhf_core import RewardConfig, RewardTrainer
    else:
        from trl import RewardConfig, RewardTrainer

    path = bench_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = RewardTrainer(
            model=model,
            args=RewardConfig(**_config(impl, steps, output_dir)),
            train_dataset=hh_pairs(explicit_prompt=True),
            processing_class=tokenizer,
            callbacks=[clock.callback()],
        )
        trainer.data_collator = count_real_tokens(clock, trainer.data_collator)
        trainer.train()
    emit_result({"impl": impl, "peak_rss": peak_rss_bytes(), **clock.summary(warmup)})


def speed(args: argparse.Namespace) -> None:
    from models import bench_model_path

    print(f"model + tokenizer: {bench_model_path()}")
    impls = args.impls.split(",")
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    for _ in range(args.rounds):
        for impl in impls:
            argv = [os.path.abspath(__file__), "speed", "--worker", impl, "--steps", str(args.steps),
                    "--warmup", str(args.warmup)]  # fmt: skip
            runs[impl].append(
                run_worker(argv, env={"OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"})
            )
    results = {impl: aggregate(rs) for impl, rs in runs.items()}
    if "ours" in results and "trl" in results:
        title = f"Reward, {PAIRS_PER_STEP} pairs/step, max length {MAX_LENGTH}, fp32, {THREADS} threads"
        report(title, results["ours"], results["trl"], TIME_TARGET, None)
    else:
        for impl, r in results.items():
            print(impl, r)


def heldout_accuracy(seed: int) -> tuple[float, int, float]:
    """Train on 80 % of HH-RLHF, return (held-out pair accuracy, held-out pairs, training seconds)."""
    import time

    import torch

    from rlhf_core import RewardConfig, RewardTrainer
    from rlhf_core.data.hh_rlhf import load_hh_rlhf
    from rlhf_core.models.loading import load_sequence_classifier, load_tokenizer

    set_threads(1)
    pairs = load_hh_rlhf().shuffle(seed=0)
    cut = int(0.8 * len(pairs))
    train, test = pairs.select(range(cut)), pairs.select(range(cut, len(pairs)))
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as output_dir:
        config = RewardConfig(
            output_dir=output_dir,
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            num_train_epochs=1,
            learning_rate=1e-3,
            lr_scheduler_type="cosine",
            warmup_steps=10,
            max_length=128,
            max_prompt_length=32,
            logging_steps=50,
            save_strategy="no",
            disable_tqdm=True,
            seed=seed,
        )
        trainer = RewardTrainer(
            model=load_sequence_classifier("rlhf-tiny"),
            args=config,
            train_dataset=train,
            tokenizer=load_tokenizer("rlhf-tiny"),
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        rewards = torch.as_tensor(trainer.predict(test).predictions)
    return (rewards[:, 0] > rewards[:, 1]).float().mean().item(), len(test), seconds


def accuracy(args: argparse.Namespace) -> None:
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        acc, n, seconds = heldout_accuracy(seed)
        results.append(acc)
        print(f"seed {seed}: held-out pair accuracy {acc:.4f} on {n} pairs (trained in {seconds:.0f} s)")
    if len(results) > 1:
        print(f"mean over seeds: {sum(results) / len(results):.4f} (chance 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="?", choices=["speed", "accuracy"], default="speed")
    parser.add_argument("--steps", type=int, default=12, help="speed: optimizer steps per run (with warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="speed: steps left out of the medians")
    parser.add_argument("--rounds", type=int, default=1, help="speed: fresh processes per implementation")
    parser.add_argument("--impls", default="ours,trl")
    parser.add_argument("--seeds", default="0", help="accuracy: comma-separated training seeds")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return speed_worker(args.worker, args.steps, args.warmup)
    if args.what == "accuracy":
        return accuracy(args)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    speed(args)


if __name__ == "__main__":
    main()
