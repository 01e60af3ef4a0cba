"""The one pad-token policy: the tokenizer's pad token, else its eos (logged), else a clear error."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from rlhf_core.models.pad_token import ensure_pad_token, resolve_pad_token_id
from rlhf_core.models.tiny import tiny_model_path


@pytest.fixture
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_model_path())


def test_own_pad_token_is_kept_and_nothing_is_logged(tokenizer, caplog):
    pad = tokenizer.pad_token_id
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=None))
    with caplog.at_level(logging.INFO):
        assert ensure_pad_token(tokenizer, model) == pad
    assert tokenizer.pad_token_id == pad and pad != tokenizer.eos_token_id
    assert model.config.pad_token_id == pad  # copied to a config that had none
    assert "no pad token" not in caplog.text


def test_without_pad_token_eos_is_used_and_said(tokenizer, caplog):
    tokenizer.pad_token = None
    with caplog.at_level(logging.WARNING):
        assert resolve_pad_token_id(tokenizer) == tokenizer.eos_token_id
    assert tokenizer.pad_token is None  # resolve leaves the tokenizer as it is
    assert "no pad token" in caplog.text
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=7))
    assert ensure_pad_token(tokenizer, model) == tokenizer.eos_token_id
    assert tokenizer.pad_token == tokenizer.eos_token  # ensure applies it
    assert model.config.pad_token_id == 7  # a config's own pad id is not overwritten


def test_neither_pad_nor_eos_is_a_clear_error(tokenizer):
    tokenizer.pad_token, tokenizer.eos_token = None, None
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        ensure_pad_token(tokenizer)
    with pytest.raises(ValueError, match="tokenizer is required"):
        resolve_pad_token_id(None)
