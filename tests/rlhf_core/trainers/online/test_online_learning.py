"""GRPO and RLOO really learn: from a briefly SFT'd tiny model, on the bundled synthetic task (fixed seeds)."""

from __future__ import annotations

import pytest
import torch
from conftest import heldout_judge

from rlhf_core import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer, SyntheticTask
from rlhf_core.rewards import completion_text, length_reward

TASK = SyntheticTask(0)


def judge(prompts, completions, **_):
    """The task's ground-truth judge as a GRPO reward function (completions are assistant messages)."""
    return TASK.judge_batch(prompts, [completion_text(c) for c in completions])


def settings(**overrides):
    # 16 completions per micro-batch, 64 per generation (8 prompts x 8, or 16 x 4): 4 optimizer steps per
    # generation, each made twice (num_iterations=2) against the kept sampling log-probs.
    values = dict(output_dir="online", per_device_train_batch_size=16, generation_batch_size=64, num_iterations=2,
                  max_completion_length=24, learning_rate=3e-4, lr_scheduler_type="constant", max_steps=320,
                  gradient_checkpointing=False, logging_steps=20, save_strategy="no", disable_tqdm=True, seed=0)  # fmt: skip
    values.update(overrides)
    return values


def train_and_score(trainer_cls, config, sft_folder, tmp_path) -> tuple[float, float]:
    before = heldout_judge(sft_folder)
    torch.manual_seed(0)
    trainer = trainer_cls(model=str(sft_folder), reward_funcs=judge, args=config,
                          train_dataset=TASK.prompt_dataset(90, "train"))  # fmt: skip
    trainer.train()
    trainer.save_model(str(tmp_path / "after"))
    return before, heldout_judge(tmp_path / "after")


@pytest.mark.slow
def test_grpo_raises_the_heldout_judge_score(online_sft_folder, tmp_path):
    # 320 steps, 2 threads, seeds 0, 1, 2: +0.23, +0.27, +0.25 (before 0.53; per-completion seeds)
    before, after = train_and_score(
        GRPOTrainer, GRPOConfig(**settings(num_generations=8)), online_sft_folder, tmp_path
    )
    assert before >= 0.4, before  # the SFT policy already answers in the format
    assert after >= before + 0.15, (before, after)  # held-out prompts: phrasings never seen in training


@pytest.mark.slow
def test_rloo_raises_the_heldout_judge_score(online_sft_folder, tmp_path):
    # 320 steps, 2 threads, seeds 0, 1, 2: +0.25, +0.24, +0.21 (before 0.53; per-completion seeds); beta = 0.05
    # is RLOOConfig's default
    config = RLOOConfig(**settings(num_generations=4))
    before, after = train_and_score(RLOOTrainer, config, online_sft_folder, tmp_path)
    assert after >= before + 0.15, (before, after)


@pytest.mark.slow
def test_grpo_reward_curve_rises_with_a_length_reward(online_sft_folder):
    # TRL's quickstart shape: a reward for completions near a target length (here 60 characters; the SFT
    # policy's answers are ~30). 160 steps, 1 thread, seeds 0, 1, 2: +0.27, +0.34, +0.27 (120 steps: +0.18,
    # +0.29, +0.23: seed 0 rose too slowly for this test once completions sampled from per-completion seeds).
    trainer = GRPOTrainer(model=str(online_sft_folder), reward_funcs=length_reward(60),
                          args=GRPOConfig(**settings(num_generations=8, max_steps=160, max_completion_length=32)),
                          train_dataset=TASK.prompt_dataset(90, "train"))  # fmt: skip
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == 8
    assert rewards[-1] >= rewards[0] + 0.2, rewards  # -|chars - 60| / 60: a rise of 12 characters towards 60
    assert lengths[-1] > lengths[0], lengths
