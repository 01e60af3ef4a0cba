"""The shared trainer base: config defaults, loss normalisation over accumulation, the non-finite guard."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from rlhf_core.trainers.base import NonFiniteLossError, TokenNormalisedTrainer
from rlhf_core.trainers.config_defaults import ConfigDefaultsMixin, cuda_bf16_available

VOCAB = 40
POISON = VOCAB - 1  # token id that only the poisoned row contains


@dataclass
class _Config(ConfigDefaultsMixin, TrainingArguments):
    pass


class _PlainLMTrainer(TokenNormalisedTrainer):
    """Summed next-token NLL over labelled positions / num_items_in_batch, with plain logits."""

    def count_loss_units(self, batch):
        return (batch["labels"][:, 1:] != -100).sum()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        divisor = self.loss_divisor(inputs, num_items_in_batch)
        labels = inputs["labels"]
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        nll = F.cross_entropy(
            out.logits[:, :-1].reshape(-1, VOCAB).float(), labels[:, 1:].reshape(-1), reduction="sum"
        )
        loss = nll / divisor
        return (loss, out) if return_outputs else loss


class _PerMicroBatchMeanTrainer(_PlainLMTrainer):
    """The classic bug: a mean per micro-batch, divided by the accumulation steps (trl#2175)."""

    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch=None)


def _collate(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(f["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _dataset(n=16, poison_row=None):
    """Rows of different lengths whose first few tokens are masked out: uneven loss tokens per row."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = int(torch.randint(4, 14, (1,), generator=gen))
        ids = torch.randint(1, POISON, (length,), generator=gen).tolist()
        masked = int(torch.randint(0, length - 2, (1,), generator=gen))
        labels = [-100] * masked + ids[masked:]
        if i == poison_row:
            ids[-1] = POISON
        rows.append({"input_ids": ids, "labels": labels})
    return datasets.Dataset.from_list(rows)


def _model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attention_dropout=0.0,
    )
    return LlamaForCausalLM(config)


def _args(tmp_path, batch, accum, **kw):
    return _Config(
        output_dir=str(tmp_path / f"out_{batch}x{accum}"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        max_steps=kw.pop("max_steps", 2),
        # SGD: equal gradients give equal weights to float precision (Adam amplifies 1e-9 differences on
        # near-zero gradients).
        optim="sgd",
        learning_rate=0.5,
        logging_steps=1,
        save_strategy=kw.pop("save_strategy", "no"),
        train_sampling_strategy="sequential",
        seed=0,
        disable_tqdm=True,
        **kw,
    )


def _train(trainer_cls, tmp_path, batch, accum):
    trainer = trainer_cls(
        model=_model(), args=_args(tmp_path, batch, accum), train_dataset=_dataset(), data_collator=_collate
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, trainer.model


def test_config_defaults_work_on_this_machine():
    args = _Config(output_dir="out")
    assert args.bf16 is cuda_bf16_available()
    assert args.logging_steps == 10
    assert args.report_to in ("none", [], ["none"])  # transformers normalises "none" to an empty list
    assert args.dataloader_pin_memory is torch.cuda.is_available()
    assert args.optim == "adamw_torch_fused"
    assert _Config(output_dir="out", optim=None).optim == "adamw_torch_fused"
    assert _Config(output_dir="out", optim="sgd").optim == "sgd"


def test_default_optimizer_is_fused_adamw_on_this_machine(tmp_path):
    # "adamw_torch" would build AdamW(foreach=None): the per-parameter loop on the CPU, 3-7x the fused step's time.
    trainer = _PlainLMTrainer(model=_model(), args=_Config(output_dir=str(tmp_path)), data_collator=_collate)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_explicit_bf16_on_cpu_falls_back_to_fp32_with_a_warning():
    with pytest.warns(UserWarning, match="bf16=True was requested"):
        args = _Config(output_dir="out", bf16=True)
    assert args.bf16 is False and args.mixed_precision == "no"
    with pytest.warns(UserWarning, match="fp16=True was requested"):
        args = _Config(output_dir="out", fp16=True)
    assert args.fp16 is False
    # use_cpu=True says "CPU bf16 autocast on purpose": kept, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        args = _Config(output_dir="out", bf16=True, use_cpu=True)
    assert args.bf16 is True


def test_tokenizer_is_an_alias_of_processing_class(tmp_path):
    sentinel = object()
    args = _args(tmp_path, 2, 1)
    trainer = _PlainLMTrainer(
        model=_model(), args=args, train_dataset=_dataset(), data_collator=_collate, tokenizer=sentinel
    )
    assert trainer.processing_class is sentinel
    with pytest.raises(ValueError, match="alias"):
        _PlainLMTrainer(
            model=_model(), args=args, data_collator=_collate, tokenizer=sentinel, processing_class=object()
        )


def test_batch8_accum1_equals_batch1_accum8_with_uneven_loss_tokens(tmp_path):
    loss_8x1, model_8x1 = _train(_PlainLMTrainer, tmp_path, 8, 1)
    loss_1x8, model_1x8 = _train(_PlainLMTrainer, tmp_path, 1, 8)
    assert len(loss_8x1) == len(loss_1x8) == 2
    assert loss_8x1 == pytest.approx(loss_1x8, abs=1e-5)
    for (name, p), q in zip(model_8x1.named_parameters(), model_1x8.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=name)


def test_per_micro_batch_mean_is_not_equivalent(tmp_path):
    """The negative control: the comparison above is sensitive to the bug it guards against."""
    loss_8x1, _ = _train(_PerMicroBatchMeanTrainer, tmp_path, 8, 1)
    loss_1x8, _ = _train(_PerMicroBatchMeanTrainer, tmp_path, 1, 8)
    assert abs(loss_8x1[0] - loss_1x8[0]) > 1e-3


def test_num_items_is_gathered_and_split_across_processes(tmp_path, monkeypatch):
    trainer = _PlainLMTrainer(model=_model(), args=_args(tmp_path, 2, 1), data_collator=_collate)
    batch = _collate([_dataset()[0], _dataset()[1]])
    local = float(trainer.count_loss_units(batch))
    assert float(trainer._get_num_items_in_batch([batch], torch.device("cpu"))) == local
    # Two processes: the other one holds 3 times as many loss tokens.
    monkeypatch.setattr(type(trainer.args), "world_size", property(lambda self: 2))
    monkeypatch.setattr(trainer.accelerator, "gather", lambda t: torch.cat([t, 3 * t]))
    assert float(trainer._get_num_items_in_batch([batch], torch.device("cpu"))) == pytest.approx(
        4 * local / 2
    )


def _poisoned_trainer(tmp_path, poison_row, *, hook):
    model = _model()
    args = _args(tmp_path, 2, 2, max_steps=6, save_strategy="steps", save_steps=1, save_only_model=True)
    trainer = _PlainLMTrainer(
        model=model, args=args, train_dataset=_dataset(poison_row=poison_row), data_collator=_collate
    )
    hook(model)
    return trainer


def _nan_loss_hook(model):
    def forward_hook(module, args, kwargs, output):
        if (kwargs["input_ids"] == POISON).any():
            output.logits = output.logits * float("nan")
        return output

    model.register_forward_hook(forward_hook, with_kwargs=True)


def test_nonfinite_loss_stops_with_step_batch_and_rows(tmp_path):
    # Sequential batches of 2, accumulation 2: row 9 is in micro-batch 1 of optimizer step 3.
    trainer = _poisoned_trainer(tmp_path, poison_row=9, hook=_nan_loss_hook)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    err = info.value
    assert (err.what, err.global_step, err.micro_batch) == ("loss", 3, 1)
    assert 9 in err.row_ids and sorted(err.row_ids) == [8, 9]
    message = str(err)
    assert "global step 3" in message and "micro-batch 1 of 2" in message and "rows [8, 9]" in message
    out = trainer.args.output_dir
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2"]
    assert err.last_checkpoint == os.path.join(out, "checkpoint-2") and "checkpoint-2" in message
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_gradient_stops_before_the_optimizer_step(tmp_path):
    def grad_hook(model):
        poisoned = {"now": False}

        def forward_hook(module, args, kwargs, output):
            poisoned["now"] = bool((kwargs["input_ids"] == POISON).any())
            return output

        model.register_forward_hook(forward_hook, with_kwargs=True)
        weight = model.model.layers[0].mlp.down_proj.weight
        weight.register_hook(lambda g: g * float("inf") if poisoned["now"] else g)

    trainer = _poisoned_trainer(tmp_path, poison_row=2, hook=grad_hook)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match="Non-finite gradient norm .* global step 1") as info:
        trainer.train()
    assert info.value.row_ids == [0, 1, 2, 3] and info.value.last_checkpoint is None
    assert not os.path.exists(os.path.join(trainer.args.output_dir, "checkpoint-1"))
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p, before[name], msg=name)


def test_raise_nonfinite_drops_the_gradients_and_numbers_the_micro_batch_from_one(tmp_path):
    from rlhf_core.trainers.base import raise_nonfinite

    layer = torch.nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    (tmp_path / "checkpoint-4").mkdir()
    trainer = SimpleNamespace(model=layer, args=SimpleNamespace(output_dir=str(tmp_path)),
                              state=SimpleNamespace(global_step=4))  # fmt: skip
    with pytest.raises(NonFiniteLossError) as info:
        raise_nonfinite(trainer, "loss", math.nan, micro_batch=0, row_ids=[7], where="update 5 (micro-batch 1)",
                        causes="a test", label="PPO ")  # fmt: skip
    err = info.value
    assert (err.what, err.global_step, err.micro_batch, err.row_ids) == ("loss", 5, 1, [7])
    assert err.last_checkpoint == str(tmp_path / "checkpoint-4")
    assert str(err).startswith("Non-finite PPO loss (nan) at update 5 (micro-batch 1). Training stopped")
    assert str(err).endswith(f"last good checkpoint: {tmp_path / 'checkpoint-4'}. Usual causes: a test.")
    assert all(p.grad is None for p in layer.parameters())
