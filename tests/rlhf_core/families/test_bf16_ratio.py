"""bf16 mixed precision (``bf16=True, use_cpu=True``): the rollout's old log-probs, values and reference log-probs
come from the same autocast computation as the training pass, so on the first mini-batch of the first epoch the
PPO ratio is exactly 1, the values equal the old values, and the KL to an unchanged reference is exactly 0.
"""

from __future__ import annotations

import pytest
import torch
from family_cases import QUIET, string_pairs

import rlhf_core.trainers.ppo.experience as experience
import rlhf_core.trainers.ppo.optimisation as optimisation
from rlhf_core import PPOConfig, PPOTrainer
from rlhf_core.models.families import CAUSAL_FAMILIES, family_model_path
from rlhf_core.models.loading import load_causal_lm, load_tokenizer


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_first_ratio_is_exactly_one_under_bf16(family, tmp_path, monkeypatch):
    seen: dict[str, float] = {}

    def spy(name, function):
        def wrapped(*args, **kwargs):
            if name not in seen:
                new, old, mask = args[0].detach(), args[1], args[3].bool()
                seen[name] = float((new - old)[mask].abs().max())
            return function(*args, **kwargs)

        monkeypatch.setattr(optimisation, name, wrapped)

    spy("clipped_policy_loss", optimisation.clipped_policy_loss)
    spy("clipped_value_loss", optimisation.clipped_value_loss)
    build = experience.build_experience

    def build_spy(batch, **kw):
        seen.setdefault(
            "kl", float((kw["logprobs"] - kw["ref_logprobs"])[batch.learn_mask.bool()].abs().max())
        )
        return build(batch, **kw)

    monkeypatch.setattr(experience, "build_experience", build_spy)
    path = family_model_path(family)
    args = PPOConfig(output_dir=str(tmp_path), batch_size=4, mini_batch_size=4, per_device_train_batch_size=4,
                     num_ppo_epochs=1, response_length=8, max_steps=1, bf16=True, **QUIET)  # fmt: skip
    torch.manual_seed(0)
    trainer = PPOTrainer(args=args, model=load_causal_lm(path), reward_fn=lambda p, r: [float(len(x)) for x in r],
                         train_dataset=string_pairs(4).select_columns(["prompt"]),
                         processing_class=load_tokenizer(path))  # fmt: skip
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.train()
    assert seen == {"kl": 0.0, "clipped_policy_loss": 0.0, "clipped_value_loss": 0.0}
