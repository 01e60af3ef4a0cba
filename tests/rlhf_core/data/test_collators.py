"""Collators: hand-built rows -> exact tensors (padding side, labels, position ids, margins)."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.data.collators import (
    IGNORE_INDEX as X,
)
from rlhf_core.data.collators import (
    PreferenceCollator,
    PromptCollator,
    SFTCollator,
    block_diagonal_causal_mask,
)
from rlhf_core.data.tokenization import tokenize_prompts

PAD = 0


def test_sft_padded_rows():
    rows = [{"input_ids": [5, 6, 7], "completion_mask": [0, 1, 1]}, {"input_ids": [8, 9]}]
    batch = SFTCollator(PAD)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[X, 6, 7], [8, 9, X]]  # aligned with input_ids, not shifted
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert all(t.dtype == torch.long for t in batch.values())
    no_completion_only = SFTCollator(PAD, completion_only_loss=False)(rows)
    assert no_completion_only["labels"].tolist() == [[5, 6, 7], [8, 9, X]]


def test_pad_token_equal_to_eos_is_not_mistaken_for_padding():
    eos = 2
    batch = SFTCollator(eos)([{"input_ids": [5, eos]}, {"input_ids": [7]}])
    assert batch["labels"].tolist() == [[5, eos], [7, X]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_pad_to_multiple_of():
    batch = SFTCollator(PAD, pad_to_multiple_of=8)([{"input_ids": [1, 2, 3]}])
    assert batch["input_ids"].shape == (1, 8) and batch["labels"][0, 3:].eq(X).all()
    pref = PreferenceCollator(PAD, pad_to_multiple_of=4)(
        [{"prompt_input_ids": [1], "chosen_input_ids": [2], "rejected_input_ids": [3, 4, 5, 6]}]
    )
    assert pref["input_ids"].shape == (2, 8)
    prompts = PromptCollator(PAD, pad_to_multiple_of=4)([{"input_ids": [1, 2, 3, 4, 5]}])
    assert prompts["input_ids"].tolist() == [[PAD, PAD, PAD, 1, 2, 3, 4, 5]]


def test_sft_packed_rows_restart_positions_and_mask_document_starts():
    rows = [
        {"input_ids": [11, 12, 13, 21, 22], "completion_mask": [1, 1, 1, 0, 1], "seq_lengths": [3, 2]},
        {"input_ids": [31, 32], "completion_mask": [1, 1], "seq_lengths": [2]},
    ]
    batch = SFTCollator(PAD)(rows)
    assert "attention_mask" not in batch  # transformers derives the block-diagonal mask from position_ids
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22], [31, 32, PAD, PAD, PAD]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]  # padding is its own segment
    assert batch["labels"].tolist() == [[X, 12, 13, X, 22], [X, 32, X, X, X]]


def test_sft_packed_rows_with_explicit_4d_mask():
    rows = [{"input_ids": [1, 2, 3], "seq_lengths": [2, 1]}, {"input_ids": [4], "seq_lengths": [1]}]
    batch = SFTCollator(PAD, return_attention_mask_4d=True)(rows)
    allowed = batch["attention_mask"] == 0
    assert batch["attention_mask"].shape == (2, 1, 3, 3) and batch["attention_mask"].dtype == torch.float32
    assert allowed[0, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert allowed[1, 0].int().tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert torch.equal(block_diagonal_causal_mask([[2, 1]]), batch["attention_mask"][:1])


def test_sft_rejects_inconsistent_seq_lengths():
    with pytest.raises(ValueError, match="seq_lengths"):
        SFTCollator(PAD)([{"input_ids": [1, 2, 3], "seq_lengths": [2, 2]}])
    with pytest.raises(ValueError, match="pad_token_id"):
        SFTCollator(None)


def test_preference_collator():
    rows = [
        {"prompt_input_ids": [1, 2], "chosen_input_ids": [3, 4], "rejected_input_ids": [5], "margin": 1.5},
        {"prompt_input_ids": [6], "chosen_input_ids": [7], "rejected_input_ids": [8, 9, 10], "margin": 0},
    ]
    batch = PreferenceCollator(PAD)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [6, 7, PAD, PAD], [1, 2, 5, PAD], [6, 8, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[X, X, 3, 4], [X, 7, X, X], [X, X, 5, X], [X, 8, 9, 10]]
    assert batch["margin"].tolist() == [1.5, 0.0] and batch["margin"].dtype == torch.float32
    rows[0]["margin"] = 2.0
    rows[1]["margin"] = None  # None in the optional column: no margin, i.e. 0
    assert PreferenceCollator(PAD)(rows)["margin"].tolist() == [2.0, 0.0]
    rows[1].pop("margin")
    assert PreferenceCollator(PAD)(rows)["margin"].tolist() == [2.0, 0.0]
    rows[0].pop("margin")
    assert "margin" not in PreferenceCollator(PAD)(rows)


def test_prompt_collator_pads_left_and_passes_other_columns(tokenizer):
    messages = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "What is two plus two?"}]]
    ds = tokenize_prompts([{"prompt": m} for m in messages], tokenizer)
    batch = PromptCollator(tokenizer.pad_token_id)(list(ds))
    short, long = ds[0]["input_ids"], ds[1]["input_ids"]
    width = len(long)
    assert batch["input_ids"].shape == (2, width)
    assert batch["input_ids"][0].tolist() == [tokenizer.pad_token_id] * (width - len(short)) + short
    assert batch["attention_mask"][0].tolist() == [0] * (width - len(short)) + [1] * len(short)
    assert batch["input_ids"][1].tolist() == long and batch["attention_mask"][1].all()
    # every row ends with the generation prompt at the same (last) position
    assert tokenizer.decode(batch["input_ids"][:, -2:][0]) == tokenizer.decode(batch["input_ids"][:, -2:][1])
    assert batch["prompt"] == messages
