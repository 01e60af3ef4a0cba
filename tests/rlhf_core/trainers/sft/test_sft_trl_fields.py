"""TRL 1.16 SFTConfig fields this project implements: loss_type "dft", truncation_mode, shuffle_dataset,
pad_to_multiple_of, pad_token / eos_token / chat_template_path (on the tiny model and tokenizer)."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.trainers.sft.config import SFTConfig
from rlhf_core.trainers.sft.trainer import SFTTrainer


@pytest.fixture(scope="module")
def _tokenizer():
    return load_tokenizer("rlhf-tiny")


@pytest.fixture
def tokenizer(_tokenizer):
    return copy.deepcopy(_tokenizer)


def _config(**kw):
    defaults = dict(output_dir="out", per_device_train_batch_size=2, max_steps=1, save_strategy="no",
                    disable_tqdm=True, train_sampling_strategy="sequential", padding_free=False)  # fmt: skip
    defaults.update(kw)
    return SFTConfig(**defaults)


ROWS = Dataset.from_dict(
    {"prompt": ["Q: one plus one?", "Q: two?"], "completion": [" A: two", " A: four and more"]}
)


@pytest.mark.parametrize("fused", [True, False])
def test_dft_loss_is_the_probability_weighted_nll(fused, tokenizer):
    trainer = SFTTrainer(load_causal_lm("rlhf-tiny"), args=_config(loss_type="dft", use_fused_loss=fused),
                         train_dataset=ROWS, processing_class=tokenizer)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    model = trainer.model.eval()
    loss = trainer.compute_loss(model, {k: v for k, v in batch.items()})
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        logps = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)[mask]
    expected = -(logps.exp() * logps).sum() / mask.sum()  # DFT, arXiv:2508.05629: -sum(sg(p) log p) / N
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    nll = SFTTrainer(load_causal_lm("rlhf-tiny"), args=_config(use_fused_loss=fused), train_dataset=ROWS,
                     processing_class=tokenizer).compute_loss(model, dict(batch))  # fmt: skip
    assert nll.item() == pytest.approx((-logps.sum() / mask.sum()).item(), rel=1e-4)


def test_truncation_mode_shuffle_and_pad_to_multiple_of(tokenizer):
    long = Dataset.from_dict({"text": ["one two three four five six seven eight nine ten", "short"]})
    ids = tokenizer("one two three four five six seven eight nine ten", add_special_tokens=False)["input_ids"]
    ids = ids + [tokenizer.eos_token_id]
    keep_end = SFTTrainer("rlhf-tiny", args=_config(max_length=4, truncation_mode="keep_end"), train_dataset=long,
                          processing_class=tokenizer)  # fmt: skip
    assert keep_end.train_dataset[0]["input_ids"] == ids[-4:]
    keep_start = SFTTrainer(
        "rlhf-tiny", args=_config(max_length=4), train_dataset=long, processing_class=tokenizer
    )
    assert keep_start.train_dataset[0]["input_ids"] == ids[:4]
    many = Dataset.from_dict({"text": [f"row {i}" for i in range(32)]})
    shuffled = SFTTrainer("rlhf-tiny", args=_config(shuffle_dataset=True, seed=3), train_dataset=many,
                          processing_class=tokenizer).train_dataset  # fmt: skip
    expected = many.shuffle(seed=3)["text"]
    assert [tokenizer.decode(r["input_ids"][:-1]) for r in shuffled] == expected != many["text"]
    padded = SFTTrainer("rlhf-tiny", args=_config(pad_to_multiple_of=8), train_dataset=ROWS,
                        processing_class=tokenizer)  # fmt: skip
    batch = padded.data_collator([padded.train_dataset[i] for i in range(2)])
    assert batch["input_ids"].shape[1] % 8 == 0
    assert SFTConfig(output_dir="out").pad_to_multiple_of is None  # "auto": no rounding off AWS Neuron


def test_pad_eos_and_chat_template_options(tokenizer, tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|end|>{% endfor %}")
    args = _config(pad_token="<|bos|>", eos_token="<|pad|>", chat_template_path=str(template))
    trainer = SFTTrainer("rlhf-tiny", args=args, train_dataset=Dataset.from_dict({"text": ["hi"]}),
                         processing_class=tokenizer)  # fmt: skip
    tok = trainer.processing_class
    assert (tok.pad_token, tok.eos_token, tok.chat_template) == ("<|bos|>", "<|pad|>", template.read_text())
    assert trainer.train_dataset[0]["input_ids"][-1] == tok.convert_tokens_to_ids(
        "<|pad|>"
    )  # the new eos ends rows
    with pytest.raises(ValueError, match="not a token of the tokenizer's vocabulary"):
        SFTTrainer("rlhf-tiny", args=_config(pad_token="<|nope|>"), train_dataset=ROWS,
                   processing_class=copy.deepcopy(tokenizer))  # fmt: skip
