"""Each tiny family follows its family's special-token conventions, and loads with the Auto classes."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoTokenizer

from rlhf_core.models.families import FAMILIES, family_model_path

# family -> (bos, eos, pad, what plain tokenizer(text) puts first / last), as the real tokenizers do
CONVENTIONS = {
    "llama": ("<s>", "</s>", None, "<s>", None),
    "gpt2": ("<|endoftext|>", "<|endoftext|>", None, None, None),
    "qwen2": (None, "<|im_end|>", "<|endoftext|>", None, None),
    "gemma": ("<bos>", "<eos>", "<pad>", "<bos>", None),
    "bert": (None, None, "[PAD]", "[CLS]", "[SEP]"),
    "modernbert": (None, None, "[PAD]", "[CLS]", "[SEP]"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_special_tokens_follow_the_family(family):
    path = family_model_path(family)
    tok = AutoTokenizer.from_pretrained(path)
    bos, eos, pad, first, last = CONVENTIONS[family]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (bos, eos, pad)
    ids = tok("the river ran quickly")["input_ids"]
    words = tok("the river ran quickly", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[0]) == first if first else ids[0] == words[0]
    assert tok.convert_ids_to_tokens(ids[-1]) == last if last else ids[-1] == words[-1]
    assert (tok.chat_template is not None) == (family in ("llama", "qwen2", "gemma"))
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == family and config.vocab_size == len(tok)
    assert family_model_path(family) == path  # cached: the same folder, not rebuilt


def test_chatml_ends_turns_with_the_eos():
    tok = AutoTokenizer.from_pretrained(family_model_path("qwen2"))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                   tokenize=False)  # fmt: skip
    assert text.endswith("<|im_start|>assistant\nyo<|im_end|>\n") and tok.eos_token == "<|im_end|>"
