"""The bundled byte-level BPE tokenizer and its chat template."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.tiny import tiny_model_path
from rlhf_core.models.tokenizer import DEFAULT_VOCAB_SIZE, SPECIAL_TOKENS, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_model_path())


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name two fruits."},
    {"role": "assistant", "content": "Two fruits: mango, cherry."},
    {"role": "user", "content": "Tell me one animal."},
    {"role": "assistant", "content": "One animal: fox."},
]


def test_special_tokens_have_fixed_ids_and_roles(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4, 5]
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (
        "<|pad|>",
        "<|bos|>",
        "<|end|>",
    )
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.padding_side == "right"
    assert len(tokenizer) == DEFAULT_VOCAB_SIZE
    # Each special token is one id even inside text, and skip_special_tokens removes the role markers too.
    ids = tokenizer("<|user|>hi<|end|>")["input_ids"]
    assert ids[0] == 4 and ids[-1] == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi"


@pytest.mark.parametrize(
    "text",
    [
        "Two fruits: mango, cherry.",
        "  Ünïcode 日本語 — tabs\tand\nnewlines $12.50 ",
        "",
        "emoji 🙂 and \x00 bytes",
    ],
)
def test_round_trip_is_lossless_for_any_text(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


def test_plain_calls_add_no_special_tokens(tokenizer):
    ids = tokenizer("Name two fruits.")["input_ids"]
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))


def test_task_words_are_single_tokens(tokenizer):
    # The task's items are single tokens, which is part of why the tiny model learns the task quickly.
    for word in (" mango", " cherry", " otter", " rowing", " fruits", " colours"):
        assert len(tokenizer(word)["input_ids"]) == 1, word


def test_chat_template_renders_the_contract_format(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION[:3], tokenize=False)
    assert text == (
        "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nName two fruits.<|end|>\n"
        "<|assistant|>\nTwo fruits: mango, cherry.<|end|>\n"
    )
    prompt = tokenizer.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|user|>\nName two fruits.<|end|>\n<|assistant|>\n"


def test_assistant_mask_covers_exactly_assistant_content_and_end(tokenizer):
    out = tokenizer.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    masked = [i for i, m in zip(ids, mask) if m]
    assert tokenizer.decode(masked) == "Two fruits: mango, cherry.<|end|>One animal: fox.<|end|>"
    # Both spans are contiguous and each ends on <|end|>; the token after each span is the template's "\n".
    starts = [i for i in range(len(mask)) if mask[i] and not mask[i - 1]]
    ends = [i for i in range(len(mask)) if mask[i] and (i + 1 == len(mask) or not mask[i + 1])]
    assert len(starts) == len(ends) == 2
    assert all(ids[e] == tokenizer.eos_token_id and tokenizer.decode([ids[e + 1]]) == "\n" for e in ends)
    assert all(tokenizer.decode([ids[s - 1]]) == "\n" and ids[s - 2] == 5 for s in starts)


def test_prompt_plus_completion_tokens_equal_full_conversation(tokenizer):
    # Generation-time prompts must be a token prefix of the training sequence (no mismatch at the boundary).
    full = tokenizer.apply_chat_template(CONVERSATION[1:3])["input_ids"]
    prompt = tokenizer.apply_chat_template(CONVERSATION[1:2], add_generation_prompt=True)["input_ids"]
    assert full[: len(prompt)] == prompt
    assert tokenizer.decode(full[len(prompt) :]) == "Two fruits: mango, cherry.<|end|>\n"


def test_unknown_role_is_rejected_with_its_name(tokenizer):
    with pytest.raises(Exception, match="role must be system, user or assistant, got tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_training_is_deterministic():
    corpus = SyntheticTask().corpus()
    a, b = train_tokenizer(corpus), train_tokenizer(corpus)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
