"""KTO step time and memory: rlhf_core's KTOTrainer vs TRL's KTOTrainer (the `bench` extra), side by side.

Workload: the ~11M-parameter Llama of ``benchmarks/models.py`` (vocabulary 30,522), HH-RLHF pairs with an explicit
prompt unpaired into one desirable and one undesirable example each (the same unpaired rows, in the same order,
given to both trainers: blocks of 4 pairs, chosen then rejected, so every batch holds both labels), sequence length
512 (prompt + completion, truncated by each trainer's own policy), 8 examples per step (each also scored with its
mismatched completion for the KL reference point), fp32, 2 threads, loss "kto" with beta 0.1, ``ref_model=None``
(each builds its own reference from the policy), AdamW, no gradient checkpointing (TRL defaults it on; both run the
same computation here), no evaluation or saving.

Each implementation runs in a FRESH process; it reports the median wall seconds per optimizer step after
``--warmup`` steps, the same per second of process CPU time (a busy neighbour moves wall time much more than CPU
time), the non-padding tokens per step (the examples' rows; the mismatched rows are not counted) and the process's
peak RSS (``VmHWM``).

Targets printed beside the ratios: seconds per step <= 0.5x TRL, peak RSS <= 0.5x TRL.

    python benchmarks/bench_kto.py                        # 12 steps, 3 warm-up, one round
    python benchmarks/bench_kto.py --steps 6 --warmup 2   # a quick check
    python benchmarks/bench_kto.py --rounds 3             # alternate fresh processes, report medians
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_dpo import count_real_tokens, side_by_side  # noqa: E402
from measurement import StepClock, emit_result, peak_rss_bytes, set_threads  # noqa: E402

THREADS = 2
EXAMPLES_PER_STEP = 8
MAX_LENGTH = 512
TIME_TARGET = 0.5
RSS_TARGET = 0.5


def _config(steps: int, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=EXAMPLES_PER_STEP,
        max_length=MAX_LENGTH,
        beta=0.1,
        loss_type="kto",
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


def unpaired_hh(n_examples: int):
    """``n_examples`` TRL-format rows (prompt, completion, label) from HH pairs, blocks of 4 pairs chosen-then-rejected."""
    from datasets import Dataset
    from hh_data import hh_pairs

    pairs = hh_pairs(limit=n_examples // 2, explicit_prompt=True)
    rows, block = [], EXAMPLES_PER_STEP // 2
    for start in range(0, len(pairs), block):
        chunk = pairs.select(range(start, min(start + block, len(pairs))))
        for side, label in (("chosen", True), ("rejected", False)):
            rows += [{"prompt": r["prompt"], "completion": r[side], "label": label} for r in chunk]
    return Dataset.from_list(rows)


def worker(impl: str, steps: int, warmup: int) -> None:
    set_threads(THREADS)
    from models import load_bench_model_and_tokenizer

    if impl == "ours":
        from rlhf_core import KTOConfig, KTOTrainer
    else:
        from trl import KTOConfig, KTOTrainer

    model, tokenizer = load_bench_model_and_tokenizer()
    data = unpaired_hh(steps * EXAMPLES_PER_STEP)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = KTOTrainer(
            model=model,
            args=KTOConfig(**_config(steps, output_dir)),
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[clock.callback()],
        )
        trainer.data_collator = count_real_tokens(clock, trainer.data_collator)
        trainer.train()
    emit_result({"impl": impl, "peak_rss": peak_rss_bytes(), **clock.summary(warmup)})


def main() -> None:
    title = f"KTO, {EXAMPLES_PER_STEP} examples/step, max length {MAX_LENGTH}, fp32, {THREADS} threads"
    side_by_side(__file__, __doc__, worker, title, TIME_TARGET, RSS_TARGET)


if __name__ == "__main__":
    main()
