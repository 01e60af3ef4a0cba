"""GRPO/RLOO resume: a run stopped at a checkpoint and resumed ends with the uninterrupted run's weights."""

from __future__ import annotations

import os

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from rlhf_core import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer


def reward_len(completions, **kwargs):
    return [-abs(12 - len(completion)) for completion in completions]


PROMPTS = Dataset.from_dict({"prompt": ["The sky is", "Name a fruit:", "Two plus two is", "Hello"] * 2})


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _trainer(cls, config_cls, out, callbacks=()):
    # 2 prompts x 4 completions per generation, optimised over twice (num_iterations=2) in micro-batches of 4:
    # every generation spans 2 optimizer steps, so checkpoint-1 falls inside one and checkpoint-2 between two.
    args = config_cls(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                      steps_per_generation=2, num_generations=4, num_iterations=2, max_completion_length=6,
                      max_steps=5, save_strategy="steps", save_steps=1, learning_rate=1e-2, logging_steps=1,
                      gradient_checkpointing=False, disable_tqdm=True, report_to="none", seed=0)  # fmt: skip
    return cls(model="rlhf-tiny", reward_funcs=reward_len, args=args, train_dataset=PROMPTS,
               callbacks=list(callbacks))  # fmt: skip


@pytest.mark.parametrize("cls, config_cls", [(GRPOTrainer, GRPOConfig), (RLOOTrainer, RLOOConfig)])
def test_resumed_run_ends_with_the_uninterrupted_weights(tmp_path, cls, config_cls):
    torch.manual_seed(0)
    whole = _trainer(cls, config_cls, tmp_path / "whole")
    initial = [p.detach().clone() for p in whole._policy().parameters()]
    whole.train()
    expected = [p.detach().clone() for p in whole._policy().parameters()]
    for stop in (3, 4):  # inside a generation (its second step is left) and at a generation boundary
        torch.manual_seed(0)
        out = tmp_path / f"stopped-{stop}"
        first = _trainer(cls, config_cls, out, [StopAt(stop)])
        assert first.train().global_step == stop
        checkpoint = os.path.join(out, f"checkpoint-{stop}")
        torch.manual_seed(123)  # the checkpoint's RNG state, not the process's, must drive the rest
        resumed = _trainer(cls, config_cls, out)
        result = resumed.train(resume_from_checkpoint=checkpoint)
        assert result.global_step == 5
        for got, want in zip(resumed._policy().parameters(), expected):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        steps = [h["step"] for h in resumed.state.log_history if "loss" in h]
        assert steps == [1, 2, 3, 4, 5]  # the history before the checkpoint is kept, nothing is run twice
    moved = max(float((p - q).abs().max()) for p, q in zip(expected, initial))
    assert moved > 0  # training changed the weights: the comparison above can fail


def test_resume_errors_name_the_folder(tmp_path):
    trainer = _trainer(GRPOTrainer, GRPOConfig, tmp_path / "empty")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    (tmp_path / "not-one").mkdir()
    with pytest.raises(ValueError, match="not-one is not a checkpoint of a GRPOTrainer run"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "not-one"))
