"""Reward position contract: the score RewardTrainer trains and evaluates on is the saved model's plain score.

For every family, after a few training steps: the trainer's rewards on padded, padding-free (merged), right- and
left-padded batches equal plain transformers inference of the saved model on each unpadded text, and the reported
eval accuracy equals the saved model's accuracy scored one text at a time. Llama and GPT-2 have pad == eos, where
transformers' pooling reads the token before the final eos.
"""

from __future__ import annotations

import pytest
import torch
from family_cases import (
    ALL_FAMILIES,
    QUIET,
    is_encoder,
    left_padded,
    pair_sequences,
    plain_scores,
    reward_model,
    string_pairs,
)

from rlhf_core.trainers.padding_free import NO_ATTENTION_COST
from rlhf_core.trainers.preference.reward import RewardTrainer
from rlhf_core.trainers.preference.reward_config import RewardConfig


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_trainer_scores_equal_plain_inference_of_saved_model(family, tmp_path):
    model, tokenizer = reward_model(family)
    args = RewardConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                        per_device_eval_batch_size=4, learning_rate=1e-2, max_length=64, **QUIET)  # fmt: skip
    trainer = RewardTrainer(model=model, args=args, train_dataset=string_pairs(8),
                            eval_dataset=string_pairs(8, seed=1), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    accuracy = trainer.evaluate()["eval_accuracy"]
    trainer.save_model(str(tmp_path / "saved"))

    chosen, rejected = pair_sequences(trainer.eval_dataset)
    plain_chosen = plain_scores(tmp_path / "saved", chosen)
    plain_rejected = plain_scores(tmp_path / "saved", rejected)
    assert accuracy == pytest.approx((plain_chosen > plain_rejected).float().mean().item(), abs=1e-9)

    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(chosen))])
    expected = torch.cat([plain_chosen, plain_rejected])
    model = trainer.model.eval()
    layouts = {"right-padded": (batch["input_ids"], batch["attention_mask"]),
               "left-padded": left_padded(batch["input_ids"], batch["attention_mask"], tokenizer.pad_token_id)}  # fmt: skip
    with torch.no_grad():
        for name, (ids, mask) in layouts.items():
            got = torch.cat(trainer.pair_rewards(model, {"input_ids": ids, "attention_mask": mask}))
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4, msg=f"{family} {name}")
        if not is_encoder(family):
            # every batch padding-free: the rows merged into fewer rows
            trainer._cost_model = NO_ATTENTION_COST
            got = torch.cat(trainer.pair_rewards(model, {"input_ids": ids, "attention_mask": mask}))
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4, msg=f"{family} padding-free")
