"""KTO really learns: from a briefly SFT'd tiny model, on the bundled synthetic task, from unpaired labels only."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.evaluation.sampling import judge_scores, sample_responses
from rlhf_core.models.loading import load_tokenizer
from rlhf_core.trainers.preference.kto import KTOTrainer
from rlhf_core.trainers.preference.kto_config import KTOConfig


def heldout_judge_score(model, tokenizer, task: SyntheticTask, folder) -> float:
    """Mean ground-truth judge score of greedy answers to the 18 held-out prompts (phrasings unseen in training), as
    the pipeline's evaluation computes it (from the saved model)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompts = task.prompt_dataset(18, split="heldout")["prompt"]
    samples = sample_responses(str(folder), prompts, max_new_tokens=20, temperature=0.0)
    scores = judge_scores(samples.prompts, samples.responses)
    return sum(scores) / len(scores)


def unpaired_examples(task: SyntheticTask, n: int, seed: int) -> Dataset:
    """`n` truly unpaired examples: the chosen answer of even pairs (desirable), the rejected one of odd pairs."""
    pairs = task.preference_dataset(n)
    rows = [
        {
            "prompt": r["prompt"],
            "completion": r["chosen"] if i % 2 == 0 else r["rejected"],
            "label": i % 2 == 0,
        }
        for i, r in enumerate(pairs)
    ]
    return Dataset.from_list(rows).shuffle(seed=seed)


@pytest.mark.slow
def test_kto_from_the_sft_model_raises_the_heldout_judge_score(tmp_path):
    from rlhf_core.trainers.sft.config import SFTConfig
    from rlhf_core.trainers.sft.trainer import SFTTrainer

    tokenizer = load_tokenizer("rlhf-tiny")
    task = SyntheticTask(0)
    torch.manual_seed(0)
    sft = SFTTrainer(
        model="rlhf-tiny",
        args=SFTConfig(output_dir="sft", max_steps=150, per_device_train_batch_size=32, learning_rate=3e-3,
                       max_length=64, save_strategy="no", logging_steps=50, disable_tqdm=True, seed=0),
        train_dataset=task.sft_dataset(150 * 32),
        processing_class=tokenizer,
    )  # fmt: skip
    sft.train()
    model = sft.model
    before = heldout_judge_score(model, tokenizer, task, tmp_path / "sft")
    trainer = KTOTrainer(
        model=model,
        # shuffle seeds 0, 1, 2 gave 0.593 -> 0.909, 0.885, 0.867 with these settings
        args=KTOConfig(output_dir="kto", per_device_train_batch_size=16, max_steps=60, learning_rate=1e-4, beta=0.1,
                       max_length=64, logging_steps=20, save_strategy="no", disable_tqdm=True, seed=0),
        train_dataset=unpaired_examples(task, 60 * 16, seed=0),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    after = heldout_judge_score(model, tokenizer, task, tmp_path / "kto")
    margins = [log["rewards/margins"] for log in trainer.state.log_history if "rewards/margins" in log]
    print(f"judge {before:.3f} -> {after:.3f}, reward margins {margins}")
    assert before >= 0.3, before  # the SFT model answers in the format
    assert after >= before + 0.1, (before, after)
    assert margins[-1] > 0  # desirable completions gained implied reward relative to undesirable ones
