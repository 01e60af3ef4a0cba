"""bf16 on the CPU: a GRPO and an RLOO step under CPU bf16 autocast, and on bf16 weights, run with a finite loss."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from rlhf_core import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from rlhf_core.models.loading import load_causal_lm


def reward_len(completions, **kwargs):
    return [-abs(12 - len(completion)) for completion in completions]


@pytest.mark.parametrize("cls, config_cls", [(GRPOTrainer, GRPOConfig), (RLOOTrainer, RLOOConfig)])
@pytest.mark.parametrize("weights", ["fp32 + autocast", "bf16"])
def test_a_bf16_step_on_the_cpu_gives_a_finite_loss(tmp_path, cls, config_cls, weights):
    model = load_causal_lm("rlhf-tiny")
    if weights == "bf16":
        model = model.to(torch.bfloat16)
    args = config_cls(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=6, max_steps=1, logging_steps=1, learning_rate=1e-2, beta=0.05,
                      bf16=True, use_cpu=True, gradient_checkpointing=False, save_strategy="no",
                      disable_tqdm=True, report_to="none", seed=0)  # fmt: skip
    assert args.bf16  # use_cpu=True keeps CPU bf16 autocast (else it falls back to fp32 with a warning)
    prompts = Dataset.from_dict({"prompt": ["The sky is", "Name a fruit:"] * 2})
    trainer = cls(model=model, reward_funcs=reward_len, args=args, train_dataset=prompts)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert math.isfinite(log["loss"]) and math.isfinite(log["grad_norm"]) and log["grad_norm"] > 0
    assert "kl" in log
    assert all(
        p.dtype == (torch.bfloat16 if weights == "bf16" else torch.float32)
        for p in trainer.model.parameters()
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
