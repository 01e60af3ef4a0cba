"""TRL 1.16 DPOConfig fields implemented here, through the trainer: ld_alpha (LD-DPO), use_weighting (WPO),
sync_ref_model (TR-DPO), pad_to_multiple_of; each checked against a plain computation from the model's logits."""

from __future__ import annotations

import math

import pytest
import torch
from preference_cases import quick_config

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_causal_lm
from rlhf_core.trainers.preference.dpo import DPOTrainer
from rlhf_core.trainers.preference.dpo_config import DPOConfig


@pytest.fixture(scope="module")
def pairs():
    return SyntheticTask(0).preference_dataset(4)


def config(**overrides) -> DPOConfig:
    return quick_config(DPOConfig, **{"learning_rate": 1e-2, "padding_free": False, **overrides})


def trainer_and_batch(pairs, tokenizer, **overrides):
    trainer = DPOTrainer(model=load_causal_lm("rlhf-tiny"), args=config(**overrides), train_dataset=pairs,
                         processing_class=tokenizer)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    return trainer, batch


def plain_token_logps(model, batch):
    """``[2B, T-1]`` log-probs of the labels from full logits (0 off the completions) and the completion mask."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logp_all = logits.float().log_softmax(-1)
    logps = logp_all.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * mask
    return logps, mask, logp_all


def test_ld_alpha_weights_tokens_past_the_shared_length(tokenizer):
    from datasets import Dataset

    uneven = Dataset.from_dict({"prompt": ["Name a fruit:", "Count:"], "chosen": [" an apple, a pear", " one"],
                                "rejected": [" no", " one two three four"]})  # fmt: skip
    trainer, batch = trainer_and_batch(uneven, tokenizer, ld_alpha=0.3)
    logps, mask, _ = plain_token_logps(trainer.model.eval(), batch)
    lengths = mask.sum(1)
    shared = torch.minimum(*lengths.chunk(2)).repeat(2)
    position = mask.cumsum(1)  # 1-based position inside the completion
    expected = (logps * torch.where(position <= shared[:, None], 1.0, 0.3)).sum(1)
    got = trainer._logps(trainer.model, batch).logps
    assert torch.allclose(got, expected, atol=1e-4)
    assert (lengths.chunk(2)[0] != lengths.chunk(2)[1]).any()  # the fixture has pairs of unequal lengths


def test_wpo_weights_the_pair_losses(pairs, tokenizer):
    trainer, batch = trainer_and_batch(pairs, tokenizer, use_weighting=True)
    model = trainer.model.eval()
    logps, mask, logp_all = plain_token_logps(model, batch)
    log_sum_sq = torch.logsumexp(2 * logp_all, -1)
    weights = torch.exp(((logps - log_sum_sq) * mask).sum(1) / mask.sum(1))
    pair_weights = weights.chunk(2)[0] * weights.chunk(2)[1]
    # policy == reference at the start: every sigmoid loss is ln 2, so the loss is ln 2 * mean(pair weight)
    loss = trainer.compute_loss(model, dict(batch))
    assert loss.item() == pytest.approx(math.log(2) * pair_weights.mean().item(), rel=1e-4)


def test_sync_ref_model_mixes_the_policy_into_the_reference(pairs, tokenizer):
    trainer, _ = trainer_and_batch(pairs, tokenizer, sync_ref_model=True, ref_model_mixup_alpha=0.25,
                                   ref_model_sync_steps=1, max_steps=1)  # fmt: skip
    initial = [p.detach().clone() for p in trainer.ref_model.parameters()]
    trainer.train()
    policy = list(trainer.model.parameters())
    for ref, start, now in zip(trainer.ref_model.parameters(), initial, policy):
        assert torch.allclose(ref, 0.25 * now.detach() + 0.75 * start, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(initial, trainer.ref_model.parameters()))
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        trainer_and_batch(pairs, tokenizer, sync_ref_model=True, precompute_ref_log_probs=True)


def test_pad_to_multiple_of_rounds_the_pair_batches(pairs, tokenizer):
    trainer, batch = trainer_and_batch(pairs, tokenizer, pad_to_multiple_of=16)
    assert batch["input_ids"].shape[1] % 16 == 0


def test_trls_constructor_order_and_quantization_config_none(pairs, tokenizer):
    # TRL 1.16's order: model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class
    model, reference = load_causal_lm("rlhf-tiny"), load_causal_lm("rlhf-tiny")
    trainer = DPOTrainer(model, reference, config(), None, pairs, None, tokenizer)
    assert trainer.ref_model is reference and trainer.processing_class is tokenizer
    assert len(trainer.train_dataset) == len(pairs) and trainer.eval_dataset is None
    # quantization_config is in TRL's signature: None is accepted (it used to reach Trainer.__init__ and fail there
    # as an unexpected keyword), anything else is refused by name
    trainer = DPOTrainer(model=load_causal_lm("rlhf-tiny"), args=config(), train_dataset=pairs,
                         processing_class=tokenizer, quantization_config=None)  # fmt: skip
    assert trainer.ref_model is not None
    with pytest.raises(
        NotImplementedError, match=r"DPOTrainer\(quantization_config=...\) is not implemented"
    ):
        DPOTrainer(model="rlhf-tiny", args=config(), train_dataset=pairs, quantization_config=object())
