"""Tokenisation per format on the project's tiny tokenizer: ids, loss masks, special tokens, over-long policy."""

from __future__ import annotations

import logging

import pytest
from chat_messages import assistant, enc, render, user
from tokenizers import processors

from rlhf_core.data.formats import DataFormatError
from rlhf_core.data.tokenization import (
    resolve_pad_token_id,
    special_tokens,
    tokenize_preference,
    tokenize_prompts,
    tokenize_sft,
)


def masked_text(tokenizer, ids, mask):
    return tokenizer.decode([t for t, m in zip(ids, mask) if m])


CHAT = [user("What is 2+2?"), assistant("It is 4."), user("And 3+3?"), assistant("Six.")]


# ------------------------------------------------------------------------------------------------------- SFT


def test_language_modelling_rows(tokenizer):
    ds, report = tokenize_sft([{"body": "the cat sat"}, {"body": "on the mat"}], tokenizer, text_field="body")
    eos = tokenizer.eos_token_id
    assert ds["input_ids"] == [enc(tokenizer, "the cat sat") + [eos], enc(tokenizer, "on the mat") + [eos]]
    assert ds["completion_mask"] == [[1] * len(ids) for ids in ds["input_ids"]]
    assert (report.total, report.truncated, report.dropped) == (2, 0, 0)


def test_prompt_completion_strings_mask_the_prompt(tokenizer):
    row = {"prompt": "Q: 2+2?", "completion": " A: 4"}
    ds, _ = tokenize_sft([row], tokenizer)
    prompt, completion = enc(tokenizer, "Q: 2+2?"), enc(tokenizer, " A: 4") + [tokenizer.eos_token_id]
    assert ds[0]["input_ids"] == prompt + completion
    assert ds[0]["completion_mask"] == [0] * len(prompt) + [1] * len(completion)
    full, _ = tokenize_sft([row], tokenizer, completion_only_loss=False)
    assert full[0]["completion_mask"] == [1] * len(prompt + completion)


def test_special_tokens_are_never_doubled(tokenizer):
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    # The tiny tokenizer adds nothing around plain text (like GPT-2): no bos, eos appended once by us.
    assert special_tokens(tokenizer).prefix == () and special_tokens(tokenizer).end == (eos,)
    ds, _ = tokenize_sft([{"text": "hello<|end|>"}], tokenizer)
    assert ds[0]["input_ids"] == enc(tokenizer, "hello") + [eos]
    # A Llama-style tokenizer whose post-processor adds bos: bos comes once, also when the text already has it.
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", bos)]
    )
    assert special_tokens(tokenizer).prefix == (bos,)
    ds, _ = tokenize_sft([{"text": "hello"}, {"text": "<|bos|>hello"}], tokenizer)
    assert ds["input_ids"] == [[bos] + enc(tokenizer, "hello") + [eos]] * 2
    pref, _ = tokenize_preference([{"prompt": "Q", "chosen": " a", "rejected": " b"}], tokenizer)
    assert pref[0]["prompt_input_ids"] == [bos] + enc(tokenizer, "Q")
    assert pref[0]["chosen_input_ids"] == enc(tokenizer, " a") + [eos]


def test_conversational_assistant_mask_from_generation_markers(tokenizer):
    ds, _ = tokenize_sft([{"messages": CHAT}], tokenizer)
    ids, mask = ds[0]["input_ids"], ds[0]["completion_mask"]
    assert ids == render(tokenizer, CHAT)  # the template's rendering, nothing added (one bos, no extra eos)
    assert ids.count(tokenizer.bos_token_id) == 1
    # exactly the assistant contents and their end-of-turn tokens are trained on
    assert masked_text(tokenizer, ids, mask) == "It is 4.<|end|>Six.<|end|>"
    everything, _ = tokenize_sft([{"messages": CHAT}], tokenizer, assistant_only_loss=False)
    assert everything[0]["completion_mask"] == [1] * len(ids)


def test_assistant_mask_fallback_without_markers_matches(tokenizer):
    with_markers, _ = tokenize_sft([{"messages": CHAT}], tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    without, _ = tokenize_sft([{"messages": CHAT}], tokenizer)
    assert without[0]["input_ids"] == with_markers[0]["input_ids"]
    assert without[0]["completion_mask"] == with_markers[0]["completion_mask"]
    assert sum(without[0]["completion_mask"]) > 0


def test_conversational_prompt_completion(tokenizer):
    row = {"prompt": [user("What is 2+2?")], "completion": [assistant("It is 4.")]}
    ds, _ = tokenize_sft([row], tokenizer)
    ids, mask = ds[0]["input_ids"], ds[0]["completion_mask"]
    assert ids == render(tokenizer, row["prompt"] + row["completion"])
    assert ids[: len(render(tokenizer, row["prompt"], add_generation_prompt=True))] == render(
        tokenizer, row["prompt"], add_generation_prompt=True
    )
    assert masked_text(tokenizer, ids, mask) == "It is 4.<|end|>"


def test_sft_truncate_keeps_start_and_drop_removes(tokenizer, caplog):
    rows = [{"text": "short"}, {"text": "a much longer text that goes on and on " * 3}, {"text": "tiny"}]
    long_ids = enc(tokenizer, rows[1]["text"]) + [tokenizer.eos_token_id]
    with caplog.at_level(logging.WARNING, logger="rlhf_core.data.tokenization"):
        ds, report = tokenize_sft(rows, tokenizer, max_length=8)
    assert (report.total, report.truncated, report.dropped) == (3, 1, 0)
    assert ds[1]["input_ids"] == long_ids[:8] and len(ds) == 3
    assert "1 truncated, 0 dropped" in caplog.text
    ds, report = tokenize_sft(rows, tokenizer, max_length=8, overlong="drop")
    assert (report.truncated, report.dropped, len(ds)) == (0, 1, 2)
    assert ds["input_ids"] == [enc(tokenizer, "short") + [2], enc(tokenizer, "tiny") + [2]]


def test_sft_truncation_leaving_no_loss_token_drops_the_row(tokenizer):
    rows = [{"prompt": "a long prompt " * 10, "completion": " yes"}, {"prompt": "hi", "completion": " yes"}]
    ds, report = tokenize_sft(rows, tokenizer, max_length=6)
    assert (report.truncated, report.dropped, len(ds)) == (0, 1, 1)
    assert sum(ds[0]["completion_mask"]) > 0


def test_sft_bad_row_inside_a_dataset_names_its_index(tokenizer):
    rows = [
        {"prompt": "a", "completion": "b"},
        {"prompt": "c", "completion": "d"},
        {"prompt": "e", "completion": None},
    ]
    with pytest.raises(DataFormatError) as err:
        tokenize_sft(rows, tokenizer)
    assert (err.value.index, err.value.field) == (2, "completion")
    bad_chat = [{"messages": CHAT}, {"messages": [user("q"), {"role": "robot", "content": "x"}]}]
    with pytest.raises(DataFormatError, match=r"row 1, field 'messages\[1\]\.role': unknown role 'robot'"):
        tokenize_sft(bad_chat, tokenizer)


def test_sft_rejects_other_formats_and_bad_arguments(tokenizer):
    with pytest.raises(DataFormatError, match="SFT takes"):
        tokenize_sft([{"prompt": "p", "chosen": "a", "rejected": "b"}], tokenizer)
    with pytest.raises(DataFormatError, match="fits no format"):
        tokenize_sft([{"content": "x"}], tokenizer)
    with pytest.raises(ValueError, match="overlong"):
        tokenize_sft([{"text": "x"}], tokenizer, overlong="wrap")
    with pytest.raises(ValueError, match="empty"):
        tokenize_sft([], tokenizer)
    with pytest.raises(DataFormatError, match=r"row 1, field 'prompt': columns differ"):
        tokenize_preference(
            [{"chosen": "Q a", "rejected": "Q b"}, {"prompt": "Q", "chosen": "a", "rejected": "b"}], tokenizer
        )
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        tokenize_sft([{"messages": CHAT}], tokenizer)


# ------------------------------------------------------------------------------------------------ preference


def test_preference_strings_explicit_and_implicit(tokenizer):
    eos = tokenizer.eos_token_id
    hh = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello there",
        "rejected": "\n\nHuman: hi\n\nAssistant: go away",
    }
    ds, _ = tokenize_preference([hh], tokenizer)
    assert ds[0]["prompt_input_ids"] == enc(tokenizer, "\n\nHuman: hi\n\nAssistant:")
    assert ds[0]["chosen_input_ids"] == enc(tokenizer, " hello there") + [eos]
    assert ds[0]["rejected_input_ids"] == enc(tokenizer, " go away") + [eos]
    assert "margin" not in ds.column_names
    explicit = {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " hello there", "rejected": " go away"}
    assert tokenize_preference([explicit], tokenizer)[0][0] == ds[0]


def test_preference_margin_is_kept(tokenizer):
    rows = [{"prompt": "Q", "chosen": " a", "rejected": " b", "margin": m} for m in (0.5, 2)]
    ds, _ = tokenize_preference(rows, tokenizer)
    assert ds["margin"] == [0.5, 2.0]


def test_preference_conversational_completion_ids_follow_the_template(tokenizer):
    prompt = [user("What is 2+2?")]
    row = {"prompt": prompt, "chosen": [assistant("4")], "rejected": [assistant("5, I think")]}
    ds, _ = tokenize_preference([row], tokenizer)
    prompt_ids = render(tokenizer, prompt, add_generation_prompt=True)
    assert ds[0]["prompt_input_ids"] == prompt_ids
    for side in ("chosen", "rejected"):
        full = render(tokenizer, prompt + row[side])
        completion = ds[0][f"{side}_input_ids"]
        # prompt ids + completion ids == the full rendering, minus the template's newline after <|end|>
        assert prompt_ids + completion == full[:-1] and tokenizer.decode(full[-1:]) == "\n"
        assert completion[-1] == tokenizer.eos_token_id and completion.count(tokenizer.eos_token_id) == 1
    # an implicit-prompt conversation gives the same tokens
    implicit = {"chosen": prompt + row["chosen"], "rejected": prompt + row["rejected"]}
    assert tokenize_preference([implicit], tokenizer)[0][0] == ds[0]


def test_preference_template_that_is_not_prefix_stable_raises(tokenizer):
    # generation prompt "<|assistant|>\n" but rendered assistant turns open with "<|assistant|> ": no clean split
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "{{ '<|' + message['role'] + '|>\\n' }}", "{{ '<|' + message['role'] + '|> ' }}"
    )
    row = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    with pytest.raises(DataFormatError) as err:
        tokenize_preference([row, row], tokenizer)
    assert (err.value.index, err.value.field) == (0, "chosen") and "prefix" in str(err.value)


def test_preference_truncation_keeps_prompt_end_and_completion_start(tokenizer):
    prompt_ids = enc(tokenizer, "one two three four five six seven eight nine ten")
    chosen_ids = enc(tokenizer, " alpha beta gamma") + [tokenizer.eos_token_id]
    rows = [
        {
            "prompt": "one two three four five six seven eight nine ten",
            "chosen": " alpha beta gamma",
            "rejected": " no",
        }
    ]
    n_prompt, n_chosen = len(prompt_ids), len(chosen_ids)
    ds, report = tokenize_preference(rows, tokenizer, max_length=n_prompt + n_chosen)
    assert (report.truncated, report.dropped) == (0, 0) and ds[0]["prompt_input_ids"] == prompt_ids
    limit = n_chosen + 4  # completions fit only if the prompt gives up tokens (down to half the budget)
    ds, report = tokenize_preference(rows, tokenizer, max_length=limit)
    kept = max(limit - n_chosen, min(n_prompt, limit // 2))
    assert report.truncated == 1
    assert ds[0]["prompt_input_ids"] == prompt_ids[-kept:]
    assert ds[0]["chosen_input_ids"] == chosen_ids[: limit - kept]
    ds, report = tokenize_preference(rows, tokenizer, max_length=None, max_prompt_length=3)
    assert report.truncated == 1 and ds[0]["prompt_input_ids"] == prompt_ids[-3:]
    assert ds[0]["chosen_input_ids"] == chosen_ids
    ds, report = tokenize_preference(rows * 2, tokenizer, max_length=limit, overlong="drop")
    assert (report.total, report.truncated, report.dropped, len(ds)) == (2, 0, 2, 0)


def test_prompt_truncation_keeps_bos(tokenizer):
    messages = [user("a question with quite a few words in it")]
    full = render(tokenizer, messages, add_generation_prompt=True)
    ds = tokenize_prompts([{"prompt": messages}], tokenizer, max_prompt_length=6)
    # the chat template's bos is kept at the front, then the prompt's last tokens (its generation prompt)
    assert ds[0]["input_ids"] == full[:1] + full[-5:] and full[0] == tokenizer.bos_token_id


def test_preference_bad_rows_name_index(tokenizer):
    rows = [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}] * 3
    rows.append({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b"})
    with pytest.raises(DataFormatError, match=r"row 3, field 'rejected': identical"):
        tokenize_preference(rows, tokenizer)
    with pytest.raises(DataFormatError, match="preference data needs"):
        tokenize_preference([{"text": "x"}], tokenizer)


# ---------------------------------------------------------------------------------------------------- prompts


def test_tokenize_prompts_strings_and_messages_keep_columns(tokenizer):
    rows = [{"prompt": [user("What is 2+2?")], "id": 0}, {"prompt": [user("Hi")], "id": 1}]
    ds = tokenize_prompts(rows, tokenizer)
    assert ds["input_ids"] == [render(tokenizer, r["prompt"], add_generation_prompt=True) for r in rows]
    assert ds["id"] == [0, 1] and ds["prompt"] == [r["prompt"] for r in rows]
    text = tokenize_prompts([{"prompt": "Once upon a time"}], tokenizer)
    assert text[0]["input_ids"] == enc(tokenizer, "Once upon a time")
    with pytest.raises(DataFormatError, match=r"row 1, field 'prompt'"):
        tokenize_prompts([{"prompt": "ok"}, {"prompt": "  "}], tokenizer)


# -------------------------------------------------------------------------------------------------- pad token


def test_resolve_pad_token(tokenizer, caplog):
    assert resolve_pad_token_id(tokenizer) == tokenizer.pad_token_id
    tokenizer.pad_token = None
    with caplog.at_level(logging.WARNING, logger="rlhf_core.data.tokenization"):
        assert resolve_pad_token_id(tokenizer) == tokenizer.eos_token_id
    assert "no pad token" in caplog.text
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        resolve_pad_token_id(tokenizer)


def test_tokenizer_without_eos_ends_completions_with_its_own_suffix(tokenizer):
    # an encoder-style tokenizer (BERT family): no eos, its post-processor wraps text as "[CLS] text [SEP]"
    bos, sep = tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<|system|>")
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A <|system|>", special_tokens=[("<|bos|>", bos), ("<|system|>", sep)]
    )
    tokenizer.eos_token = None
    assert special_tokens(tokenizer).prefix == (bos,) and special_tokens(tokenizer).end == (sep,)
    ds, _ = tokenize_preference([{"prompt": "Q", "chosen": " a", "rejected": " b"}], tokenizer)
    assert ds[0]["prompt_input_ids"] == [bos] + enc(tokenizer, "Q")
    assert ds[0]["chosen_input_ids"] == enc(tokenizer, " a") + [sep]
