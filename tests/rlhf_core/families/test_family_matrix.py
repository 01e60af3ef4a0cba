"""Every trainer with every causal family trains, saves, and reloads with the Auto classes.

Each cell: a couple of optimizer steps change the weights; ``save_model`` writes a folder that
``AutoModelForCausalLM`` / ``AutoTokenizer`` load back, and the reloaded model gives the trained model's logits;
the reloaded tokenizer keeps the family's special tokens. Families with a chat template train on conversations
(their template renders the data), GPT-2 (no template) on strings. The Reward column, for every family including
the encoders, is `test_reward_position.py` (it trains, saves and reloads too).
"""

from __future__ import annotations

import pytest
import torch
from family_cases import QUIET, string_pairs
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_core import DPOConfig, DPOTrainer, PPOConfig, PPOTrainer, SFTConfig, SFTTrainer
from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.families import CAUSAL_FAMILIES, FAMILIES, family_model_path
from rlhf_core.models.loading import load_causal_lm, load_tokenizer

STEPS = {"max_steps": 2, "learning_rate": 1e-2, "per_device_train_batch_size": 2, **QUIET}


def _chat(family: str) -> bool:
    return FAMILIES[family].chat_template is not None


def _sft(family, path, out):
    data = (SyntheticTask(0).sft_dataset(4) if _chat(family)
            else string_pairs(4).rename_column("chosen", "completion").remove_columns("rejected"))  # fmt: skip
    args = SFTConfig(output_dir=out, max_length=64, **STEPS)
    return SFTTrainer(
        model=load_causal_lm(path), args=args, train_dataset=data, processing_class=load_tokenizer(path)
    )


def _dpo(family, path, out):
    data = SyntheticTask(0).preference_dataset(4) if _chat(family) else string_pairs(4)
    args = DPOConfig(output_dir=out, max_length=64, **STEPS)
    return DPOTrainer(
        model=load_causal_lm(path), args=args, train_dataset=data, processing_class=load_tokenizer(path)
    )


def _ppo(family, path, out):
    data = (
        SyntheticTask(0).prompt_dataset(4, "train")
        if _chat(family)
        else string_pairs(4).select_columns(["prompt"])
    )
    args = PPOConfig(output_dir=out, response_length=6, num_ppo_epochs=1, **{**STEPS, "max_steps": 1})
    return PPOTrainer(args=args, model=load_causal_lm(path), train_dataset=data, processing_class=load_tokenizer(path),
                      reward_fn=lambda p, r: [float(len(x)) for x in r])  # fmt: skip


TRAINERS = {"sft": _sft, "dpo": _dpo, "ppo": _ppo}


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
@pytest.mark.parametrize("trainer_name", sorted(TRAINERS))
def test_trains_saves_and_reloads_with_auto_classes(trainer_name, family, tmp_path):
    path = family_model_path(family)
    torch.manual_seed(0)
    trainer = TRAINERS[trainer_name](family, path, str(tmp_path / "out"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    policy = getattr(model, "policy", model)  # PPO trains a policy + value head
    before = [p.detach().clone() for p in policy.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters())), "no weight moved"
    trainer.save_model(str(tmp_path / "saved"))

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved")
    original = load_tokenizer(path)
    assert (tokenizer.eos_token, tokenizer.bos_token) == (original.eos_token, original.bos_token)
    assert tokenizer.chat_template == original.chat_template
    ids = torch.tensor([tokenizer("Name two fruits.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, policy.eval()(input_ids=ids).logits)
