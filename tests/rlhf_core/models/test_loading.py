"""Loading helpers: the built-in tiny name, pass-through of names and objects, pad tokens, clear errors."""

from __future__ import annotations

import logging
import shutil

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_core.models.loading import (
    ModelNotAvailableError,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resolve_model_path,
)
from rlhf_core.models.tiny import TINY_MODEL, tiny_model_path


def test_resolve_model_path(tmp_path):
    assert resolve_model_path(TINY_MODEL) == str(tiny_model_path())
    assert resolve_model_path("gpt2") == "gpt2"
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert resolve_model_path(tmp_path) == str(tmp_path)


def test_tiny_name_and_path_load_the_same_model():
    by_name = load_causal_lm(TINY_MODEL)
    by_path = load_causal_lm(str(tiny_model_path()))
    for (name, a), (_, b) in zip(by_name.state_dict().items(), by_path.state_dict().items()):
        assert a.equal(b), name
    assert load_tokenizer(TINY_MODEL).pad_token == "<|pad|>"


def test_model_object_passes_through():
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    assert load_causal_lm(model) is model
    assert load_sequence_classifier(model) is model


@pytest.fixture
def tiny_copy_without_pad(tmp_path):
    """A local checkpoint like many hub models: no pad token in the tokenizer or the model config."""
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_model_path(), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    model.save_pretrained(folder)
    return folder


def test_tokenizer_without_pad_gets_eos_as_pad(tiny_copy_without_pad, caplog):
    assert AutoTokenizer.from_pretrained(tiny_copy_without_pad).pad_token is None
    with caplog.at_level(logging.INFO, logger="rlhf_core.models.loading"):
        tokenizer = load_tokenizer(tiny_copy_without_pad)
    assert tokenizer.pad_token == "<|end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert "no pad token" in caplog.text


def test_sequence_classifier_gets_pad_token_id_when_missing(tiny_copy_without_pad):
    model = load_sequence_classifier(str(tiny_copy_without_pad))
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == 2  # the eos id, via the tokenizer's fallback


def test_sequence_classifier_keeps_existing_pad_token_id():
    model = load_sequence_classifier(TINY_MODEL, num_labels=1)
    assert model.config.pad_token_id == 0 and model.score.out_features == 1


def test_uncached_hub_name_offline_names_the_model_and_the_cause(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match=r"'no-such-org/no-such-model'.*hub is offline"):
        load_causal_lm("no-such-org/no-such-model")
    with pytest.raises(OSError, match=r"tokenizer 'no-such-org/no-such-model'.*HF_HUB_OFFLINE=1"):
        load_tokenizer("no-such-org/no-such-model")


def test_missing_local_folder_says_so(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"causal LM '.*/missing/ckpt': no such folder"):
        load_causal_lm(str(tmp_path / "missing" / "ckpt"))
