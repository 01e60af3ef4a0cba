"""Shared fixtures for the rollout tests: the tiny model and its tokenizer, loaded once per module."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.models.tiny import TINY_MODEL


@pytest.fixture(scope="module")
def tiny():
    model = load_causal_lm(TINY_MODEL).eval()
    tokenizer = load_tokenizer(TINY_MODEL)
    return model, tokenizer


@pytest.fixture(scope="module")
def prompts(tiny):
    """Three chat prompts of different lengths, left padded: (input_ids, attention_mask, rows)."""
    _, tok = tiny
    texts = ["Name two fruits.", "List three colours, please.", "Hi"]
    rows = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)["input_ids"]
            for t in texts]  # fmt: skip
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    return ids, mask, [torch.tensor(r) for r in rows]
