"""SFT really learns the bundled task, and a non-finite step stops it with the last good checkpoint kept."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import TrainerCallback

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.trainers.base import NonFiniteLossError
from rlhf_core.trainers.sft.config import SFTConfig
from rlhf_core.trainers.sft.trainer import SFTTrainer


@pytest.mark.slow
def test_sft_learns_the_synthetic_task_format():
    task = SyntheticTask(0)
    train, heldout = task.sft_dataset(192), SyntheticTask(1).sft_dataset(32)
    args = SFTConfig(
        output_dir="out", per_device_train_batch_size=16, max_steps=40, learning_rate=3e-3, logging_steps=10,
        save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = SFTTrainer("rlhf-tiny", args=args, train_dataset=train, eval_dataset=heldout)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    # Random init: about log(1024) = 6.9 nats per token; after 40 steps the answer format is learned.
    assert before["eval_loss"] > 6.0
    assert after["eval_loss"] < 0.5 * before["eval_loss"]
    assert after["eval_mean_token_accuracy"] > before["eval_mean_token_accuracy"] + 0.3
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses == sorted(losses, reverse=True)


class _PoisonWeightsAtStep(TrainerCallback):
    """Sets one weight to NaN at the start of optimizer step ``step`` (1-based), after the last save."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                model.model.norm.weight[0] = float("nan")


def test_nonfinite_loss_stops_sft_and_keeps_the_last_good_checkpoint():
    args = SFTConfig(
        output_dir="out", per_device_train_batch_size=4, max_steps=5, save_steps=1, save_only_model=True,
        logging_steps=1, disable_tqdm=True, train_sampling_strategy="sequential", learning_rate=1e-3,
    )  # fmt: skip
    trainer = SFTTrainer(load_causal_lm("rlhf-tiny"), args=args, train_dataset=SyntheticTask(0).sft_dataset(20),
                         tokenizer=load_tokenizer("rlhf-tiny"), callbacks=[_PoisonWeightsAtStep(3)])  # fmt: skip
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    err = info.value
    assert (err.what, err.global_step, err.micro_batch, err.row_ids) == ("loss", 3, 1, [8, 9, 10, 11])
    assert "global step 3" in str(err) and "rows [8, 9, 10, 11]" in str(err)
    assert sorted(os.listdir("out")) == ["checkpoint-1", "checkpoint-2"]
    assert err.last_checkpoint == os.path.join("out", "checkpoint-2")
    reloaded = load_causal_lm(err.last_checkpoint)
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())
