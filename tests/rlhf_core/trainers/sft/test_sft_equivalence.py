"""SFT paths that must agree: fused vs plain logits, packed vs padded, batch 8 x 1 vs 1 x 8."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from rlhf_core.data.collators import SFTCollator
from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.trainers.sft.config import SFTConfig
from rlhf_core.trainers.sft.trainer import SFTTrainer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("rlhf-tiny")


@pytest.fixture(scope="module")
def conversations():
    return SyntheticTask(3).sft_dataset(24)


def _config(**kw):
    defaults = dict(
        output_dir="out", per_device_train_batch_size=8, max_steps=2, logging_steps=1, save_strategy="no",
        disable_tqdm=True, learning_rate=5e-3, train_sampling_strategy="sequential", seed=0, max_length=128,
    )  # fmt: skip
    defaults.update(kw)
    return SFTConfig(**defaults)


def _loss_and_grads(trainer, batch, *, measure_stats):
    model = trainer.model
    model.zero_grad()
    trainer._measure_stats = lambda mode: measure_stats
    loss = trainer.compute_loss(
        model, dict(batch), num_items_in_batch=trainer._get_num_items_in_batch([batch], "cpu")
    )
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_fused_loss_equals_plain_logits_loss_and_gradients(tokenizer, conversations):
    fused = SFTTrainer(
        load_causal_lm("rlhf-tiny"), args=_config(), train_dataset=conversations, tokenizer=tokenizer
    )
    plain = SFTTrainer(load_causal_lm("rlhf-tiny"), args=_config(use_fused_loss=False), train_dataset=conversations,
                       tokenizer=tokenizer)  # fmt: skip
    assert fused._fused_ok and not plain._fused_ok
    batch = next(iter(fused.get_train_dataloader()))
    batch.pop("__row_ids__")
    ref_loss, ref_grads = _loss_and_grads(plain, batch, measure_stats=True)
    for measure_stats in (False, True):  # the cross-entropy path and the per-token log-prob path
        loss, grads = _loss_and_grads(fused, batch, measure_stats=measure_stats)
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=5e-4, msg=name)


def _packed_and_padded(tokenizer, conversations, attn):
    model = load_causal_lm("rlhf-tiny", attn_implementation=attn)
    # flex_attention compiles once per shape (tens of seconds on the CPU): the padded reference uses sdpa.
    ref = model if attn != "flex_attention" else load_causal_lm("rlhf-tiny", attn_implementation="sdpa")
    packed = SFTTrainer(model, args=_config(packing=True, max_length=96), train_dataset=conversations,
                        tokenizer=tokenizer)  # fmt: skip
    padded = SFTTrainer(ref, args=_config(), train_dataset=conversations, tokenizer=tokenizer)
    collate = SFTCollator(tokenizer.pad_token_id)
    packed_batch = collate([packed.train_dataset[i] for i in range(len(packed.train_dataset))])
    padded_batch = collate([padded.train_dataset[i] for i in range(len(padded.train_dataset))])
    return model, ref, packed, padded, packed_batch, padded_batch


def _doc_losses(model, batch, lengths_per_row):
    """Summed NLL per document (documents in row order) from the model's own logits."""
    with torch.no_grad():
        # use_cache=False as the trainer does: transformers ignores packed position ids when a cache exists.
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    logp = logits[:, :-1].log_softmax(-1)
    labels = batch["labels"][:, 1:]
    token_nll = -logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * (labels != -100)
    losses = []
    for row, lengths in enumerate(lengths_per_row):
        start = 0
        for n in lengths:
            losses.append(token_nll[row, max(start - 1, 0) : start + n - 1].sum())
            start += n
    return torch.stack(losses)


# flex_attention has no CPU backward, so only the forward is checked (every check below runs without grad); it
# compiles on first use, hence slow.
@pytest.mark.parametrize("attn", ["eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)])
def test_packed_documents_get_the_same_losses_as_padded_ones(tokenizer, conversations, attn):
    model, ref, packed, padded, packed_batch, padded_batch = _packed_and_padded(
        tokenizer, conversations, attn
    )
    seq_lengths = packed.train_dataset["seq_lengths"]
    assert "attention_mask" not in packed_batch and max(len(s) for s in seq_lengths) > 1
    # Map each packed document back to its padded row by its tokens.
    padded_ids = [tuple(ids) for ids in padded.train_dataset["input_ids"]]
    rows_of: dict[tuple, list[int]] = {}
    for i, ids in enumerate(padded_ids):
        rows_of.setdefault(ids, []).append(i)
    order = []
    for row, lengths in zip(packed.train_dataset["input_ids"], seq_lengths):
        start = 0
        for n in lengths:
            order.append(rows_of[tuple(row[start : start + n])].pop())
            start += n
    assert sorted(order) == list(range(len(padded_ids)))
    packed_losses = _doc_losses(model, packed_batch, seq_lengths)
    padded_losses = _doc_losses(ref, padded_batch, [[len(ids)] for ids in padded_ids])
    torch.testing.assert_close(packed_losses, padded_losses[order], atol=1e-4, rtol=1e-5)

    # The training loss (summed NLL / loss tokens) is the same too.
    for trainer in (packed, padded):
        trainer._measure_stats = lambda mode: False
    with torch.no_grad():
        packed_loss = packed.compute_loss(model, dict(packed_batch))
        padded_loss = padded.compute_loss(ref, dict(padded_batch))
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=1e-5)

    # Negative control: letting documents see each other changes their losses.
    if attn == "flex_attention":
        return
    leaky = dict(packed_batch, attention_mask=torch.ones_like(packed_batch["input_ids"]))
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1]).expand_as(leaky["input_ids"])
    assert not torch.allclose(_doc_losses(model, leaky, seq_lengths), packed_losses, atol=1e-3)


def test_packing_in_training_learns(tokenizer, conversations):
    trainer = SFTTrainer(load_causal_lm("rlhf-tiny"), args=_config(packing=True, max_length=96, max_steps=6,
                         per_device_train_batch_size=2), train_dataset=conversations, tokenizer=tokenizer)  # fmt: skip
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]


def _trajectory(tokenizer, data, batch, accum):
    # SGD: the update is linear in the gradient, so equal gradients give equal weights to float precision
    # (Adam's 1/sqrt(v) would blow a 1e-9 difference on a near-zero gradient up to a full step).
    args = _config(
        per_device_train_batch_size=batch, gradient_accumulation_steps=accum, output_dir=f"o{batch}",
        optim="sgd", learning_rate=0.5, max_steps=3,
    )  # fmt: skip
    trainer = SFTTrainer(load_causal_lm("rlhf-tiny"), args=args, train_dataset=data, tokenizer=tokenizer)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], trainer.model


def test_batch8_accum1_equals_batch1_accum8(tokenizer, conversations):
    data = Dataset.from_dict(
        {"text": [m[1]["content"] * (1 + i % 4) for i, m in enumerate(conversations["messages"])]}
    )
    lengths = [len(ids) for ids in SFTTrainer(load_causal_lm("rlhf-tiny"), args=_config(), train_dataset=data,
                                              tokenizer=tokenizer).train_dataset["input_ids"]]  # fmt: skip
    assert len(set(lengths[:8])) > 2  # uneven loss tokens per row
    loss_8x1, model_8x1 = _trajectory(tokenizer, data, 8, 1)
    loss_1x8, model_1x8 = _trajectory(tokenizer, data, 1, 8)
    assert len(loss_8x1) == 3 and loss_8x1[-1] < loss_8x1[0] - 0.1
    assert loss_8x1 == pytest.approx(loss_1x8, abs=1e-5)
    for (name, p), q in zip(model_8x1.named_parameters(), model_1x8.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


def test_padding_free_batches_give_the_same_loss_and_gradients(tokenizer, conversations):
    free = SFTTrainer(load_causal_lm("rlhf-tiny"), args=_config(padding_free=True), train_dataset=conversations,
                      tokenizer=tokenizer)  # fmt: skip
    features = [free.train_dataset[i] for i in range(8)]
    merged = free.data_collator.collator(features)  # TokenCountingCollator -> PaddingFreeCollator
    padded = SFTCollator(tokenizer.pad_token_id)(features)
    assert merged["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert padded["input_ids"].shape[0] == 8
    free_loss, free_grads = _loss_and_grads(free, merged, measure_stats=True)
    padded_loss, padded_grads = _loss_and_grads(free, padded, measure_stats=True)
    torch.testing.assert_close(free_loss, padded_loss, atol=1e-5, rtol=1e-5)
    for name, grad in free_grads.items():
        torch.testing.assert_close(grad, padded_grads[name], atol=1e-5, rtol=5e-4, msg=name)


def test_padding_free_auto_merges_only_when_it_computes_less():
    from transformers import LlamaConfig

    from rlhf_core.trainers.padding_free import BatchCostModel

    cost = BatchCostModel(dense_per_token=10.0, attention_per_pair=1.0)
    # [10, 2]: padded 2 * (10 * 10 + 10^2) = 400, merged 12 * 10 + 12^2 = 264.
    assert (cost.padded_cost([10, 2]), cost.merged_cost([10, 2])) == (400.0, 264.0)
    assert cost.should_merge([10, 2])
    # [10, 10]: padded 400, merged 20 * 10 + 20^2 = 600: full rows stay apart.
    assert cost.merged_cost([10, 10]) == 600.0 and not cost.should_merge([10, 10])
    llama = LlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=688)
    shape = BatchCostModel.from_config(llama)
    assert shape.dense_per_token == 2 * 4 * (4 * 256**2 + 3 * 256 * 688)
    assert shape.attention_per_pair == 4 * 256 * 4
