"""TRL 1.12 PPOConfig fields implemented here: sft_model_path / reward_model_path (the models loaded when none is
passed) and num_sample_generations (sample completions recorded that many times over train())."""

from __future__ import annotations

import torch

from rlhf_core import PPOConfig, PPOTrainer
from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_tokenizer
from rlhf_core.models.tiny import TINY_MODEL
from rlhf_core.trainers.ppo.samples import is_sample_update


def test_sample_schedule_spreads_n_records_over_the_updates():
    assert [u for u in range(1, 101) if is_sample_update(u, 100, 10)] == list(range(1, 101, 10))  # TRL's
    assert [u for u in range(1, 4) if is_sample_update(u, 3, 2)] == [1, 3]  # never more than n
    assert [u for u in range(1, 4) if is_sample_update(u, 3, 10)] == [1, 2, 3]
    assert not any(is_sample_update(u, 5, 0) for u in range(1, 6))


def test_model_paths_and_sample_generations():
    torch.manual_seed(0)
    args = PPOConfig(output_dir="out", per_device_train_batch_size=2, num_ppo_epochs=1, response_length=4,
                     max_steps=3, num_sample_generations=2, save_strategy="no", report_to="none",
                     sft_model_path=TINY_MODEL, reward_model_path=TINY_MODEL)  # fmt: skip
    trainer = PPOTrainer(args=args, processing_class=load_tokenizer(TINY_MODEL),
                         train_dataset=SyntheticTask(0).prompt_dataset(8, "train"))  # fmt: skip
    assert trainer.rollout.reward_model is not None  # loaded from reward_model_path
    trainer.train()
    records = trainer.sample_generations
    assert [r["update"] for r in records] == [1, 1, 3, 3]  # 2 records of the batch's 2 episodes
    assert all(
        isinstance(r["prompt"], str) and r["prompt"] and isinstance(r["score"], float) for r in records
    )
