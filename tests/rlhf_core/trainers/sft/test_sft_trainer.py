"""SFTTrainer / SFTConfig: the reference example, formats, config aliases, metrics, save/reload, LoRA."""

from __future__ import annotations

import json
import os

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.trainers.sft.config import SFTConfig
from rlhf_core.trainers.sft.trainer import SFTTrainer

TEXTS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Rain falls on the green hills in spring.",
    "Two apples and a pear.",
] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("rlhf-tiny")


def _config(**kw):
    defaults = dict(
        output_dir="out", per_device_train_batch_size=4, max_steps=2, logging_steps=1, save_strategy="no",
        disable_tqdm=True, learning_rate=1e-3, train_sampling_strategy="sequential",
    )  # fmt: skip
    defaults.update(kw)
    return SFTConfig(**defaults)


def test_reference_example_runs_as_written():
    """The issue's example with only the model, the dataset and the import changed."""
    model = load_causal_lm("rlhf-tiny")
    tokenizer = load_tokenizer("rlhf-tiny")
    dataset = Dataset.from_dict({"text": TEXTS})

    from rlhf_core import SFTConfig, SFTTrainer

    config = SFTConfig(max_seq_length=512, learning_rate=2e-5, num_train_epochs=3)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, tokenizer=tokenizer,
                         dataset_text_field="text")  # fmt: skip
    trainer.train()
    trainer.save_model("path/to/save/model")

    assert config.max_length == 512 and trainer.state.global_step == 6  # 16 rows / batch 8 x 3 epochs
    reloaded = AutoModelForCausalLM.from_pretrained("path/to/save/model")
    for (name, p), q in zip(trainer.model.named_parameters(), reloaded.parameters()):
        torch.testing.assert_close(p, q, msg=name)
    assert AutoTokenizer.from_pretrained("path/to/save/model").get_vocab() == tokenizer.get_vocab()


def test_max_seq_length_is_an_alias_and_conflicts_are_errors():
    assert SFTConfig(output_dir="o", max_seq_length=64).max_length == 64
    assert SFTConfig(output_dir="o", max_length=64, max_seq_length=64).max_length == 64
    with pytest.raises(ValueError, match="alias"):
        SFTConfig(output_dir="o", max_length=32, max_seq_length=64)


def test_config_rejects_unknown_policies():
    with pytest.raises(ValueError, match="overlong"):
        SFTConfig(output_dir="o", overlong="cut")
    with pytest.raises(ValueError, match="packing_strategy"):
        SFTConfig(output_dir="o", packing_strategy="ffd")


def _first_batch(trainer):
    """The first training batch and the dataset rows it holds (in order)."""
    batch = next(iter(trainer.get_train_dataloader()))
    return batch, batch.pop("__row_ids__").tolist()


def test_prompt_completion_trains_on_the_completion_only(tokenizer):
    data = Dataset.from_dict(
        {"prompt": ["Name one fruit.", "Name two tools."], "completion": [" Mango.", " Saw, drill."]}
    )
    trainer = SFTTrainer(
        "rlhf-tiny", args=_config(per_device_train_batch_size=2, padding_free=False), train_dataset=data
    )
    row = trainer.train_dataset[0]
    prompt_ids = [t for t, m in zip(row["input_ids"], row["completion_mask"]) if not m]
    assert tokenizer.decode(prompt_ids, skip_special_tokens=True) == "Name one fruit."
    batch, rows = _first_batch(trainer)
    loss_ids = batch["input_ids"][0][batch["labels"][0] != -100].tolist()
    assert tokenizer.decode(loss_ids).strip().startswith(data[rows[0]]["completion"].strip())
    assert loss_ids[-1] == tokenizer.eos_token_id
    # completion_only_loss=False: every token counts.
    full = SFTTrainer("rlhf-tiny", args=_config(completion_only_loss=False), train_dataset=data)
    assert all(all(m) for m in full.train_dataset["completion_mask"])


def test_conversational_trains_on_assistant_turns_only(tokenizer):
    data = SyntheticTask(0).sft_dataset(4)
    trainer = SFTTrainer("rlhf-tiny", args=_config(padding_free=False), train_dataset=data)
    batch, rows = _first_batch(trainer)
    text = tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100].tolist())
    user, assistant = data[rows[0]]["messages"]
    assert text == assistant["content"] + tokenizer.eos_token
    assert user["content"] not in text


def test_dataset_text_field_keyword_and_formatting_func(tokenizer):
    data = Dataset.from_dict({"body": TEXTS[:4]})
    trainer = SFTTrainer("rlhf-tiny", args=_config(), train_dataset=data, dataset_text_field="body")
    assert trainer.args.dataset_text_field == "body" and len(trainer.train_dataset) == 4
    formatted = SFTTrainer(
        "rlhf-tiny", args=_config(), train_dataset=Dataset.from_dict({"q": ["x"], "a": ["y"]}),
        formatting_func=lambda ex: f"Q: {ex['q']} A: {ex['a']}",
    )  # fmt: skip
    ids = formatted.train_dataset[0]["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Q: x A: y"


def test_bad_rows_name_the_row_and_field():
    from rlhf_core.data.formats import DataFormatError

    data = Dataset.from_dict({"prompt": ["ok", "fine"], "completion": [" yes", None]})  # "" would be valid
    with pytest.raises(DataFormatError) as info:
        SFTTrainer("rlhf-tiny", args=_config(), train_dataset=data)
    assert "1" in str(info.value) and "completion" in str(info.value)


def test_logs_loss_accuracy_entropy_and_cumulative_tokens():
    data = Dataset.from_dict({"text": TEXTS[:8]})
    trainer = SFTTrainer("rlhf-tiny", args=_config(max_steps=2), train_dataset=data)
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2
    for h in steps:
        assert {"loss", "mean_token_accuracy", "entropy", "num_tokens"} <= set(h)
        assert 0.0 <= h["mean_token_accuracy"] <= 1.0 and 0.0 < h["entropy"] <= float(
            torch.log(torch.tensor(1024.0))
        )
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert steps[0]["num_tokens"] == sum(lengths[:4]) and steps[1]["num_tokens"] == sum(lengths)
    metrics = trainer.evaluate(Dataset.from_dict({"text": TEXTS[:4]}))
    assert {"eval_loss", "eval_mean_token_accuracy", "eval_entropy", "eval_num_tokens"} <= set(metrics)


def test_model_by_name_loads_its_tokenizer_and_save_model_reloads(tmp_path):
    trainer = SFTTrainer("rlhf-tiny", args=_config(), train_dataset=Dataset.from_dict({"text": TEXTS[:4]}))
    assert trainer.processing_class.pad_token == "<|pad|>"
    trainer.train()
    trainer.save_model(str(tmp_path / "ckpt"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(reloaded.lm_head.weight, trainer.model.lm_head.weight)
    assert (tmp_path / "ckpt" / "tokenizer_config.json").exists()


def test_lora_trains_adapters_only_and_keeps_the_fused_loss(tmp_path):
    from peft import LoraConfig

    model = load_causal_lm("rlhf-tiny")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = SFTTrainer(model, args=_config(learning_rate=1e-2, max_steps=3), train_dataset=Dataset.from_dict(
        {"text": TEXTS[:8]}), tokenizer=load_tokenizer("rlhf-tiny"), peft_config=lora)  # fmt: skip
    assert trainer._fused_ok
    trainer.train()
    lora_params = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert lora_params and all("lora_" in n for n in lora_params)
    base = trainer.model.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(p, frozen[name.replace(".base_layer", "")], msg=name)
    assert any(p.abs().sum() > 0 for n, p in base.named_parameters() if "lora_B" in n)
    trainer.save_model(str(tmp_path / "adapter"))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert os.path.exists(tmp_path / "adapter" / "adapter_model.safetensors")


def test_plain_training_arguments_become_an_sft_config_with_their_values():
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="o", learning_rate=3e-4, logging_steps=3, hub_token="secret")
    trainer = SFTTrainer("rlhf-tiny", args=args, train_dataset=Dataset.from_dict({"text": TEXTS[:4]}))
    assert isinstance(trainer.args, SFTConfig)
    kept = trainer.args.learning_rate, trainer.args.logging_steps, trainer.args.hub_token
    assert kept == (3e-4, 3, "secret")
    assert trainer.args.max_length == 1024 and trainer.args.use_fused_loss
