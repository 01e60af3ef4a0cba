"""Datasets as people load them: empty answers, rows with nothing to learn, UltraFeedback-binarized rows, system
turns, message-list prompt-completion, extra columns of any type and None in optional columns (fixtures written
here, tokenised on the project's tiny tokenizer)."""

from __future__ import annotations

import logging

import pytest
from chat_messages import assistant, enc, render, system, user
from datasets import Dataset

from rlhf_core.data.formats import DataFormatError
from rlhf_core.data.tokenization import tokenize_preference, tokenize_prompts, tokenize_sft


def test_an_empty_answer_is_the_end_of_text_token_alone(tokenizer):
    eos = tokenizer.eos_token_id
    rows = [
        {"prompt": "Q:", "chosen": "", "rejected": " no"},
        {"prompt": "Q:", "chosen": "  ", "rejected": " yes"},
        {"prompt": [user("q")], "chosen": [assistant("")], "rejected": [assistant("b")]},
    ]
    strings, report = tokenize_preference(rows[:2], tokenizer)
    assert strings["chosen_input_ids"] == [[eos], [eos]] and report.dropped == 0
    assert strings["rejected_input_ids"][0] == enc(tokenizer, " no") + [eos]
    chat, _ = tokenize_preference(rows[2:], tokenizer)
    # the template's empty assistant turn: "<|end|>" (cut after the last eos, as for any chat completion)
    assert chat[0]["chosen_input_ids"] == [eos]
    sft, _ = tokenize_sft([{"prompt": "Q:", "completion": ""}], tokenizer)
    assert sft[0]["input_ids"] == enc(tokenizer, "Q:") + [eos] and sft[0]["completion_mask"][-1:] == [1]


def test_sft_rows_with_no_loss_token_are_dropped_counted_and_logged(tokenizer, caplog):
    rows = [
        {"messages": [user("q"), assistant("a")]},
        {"messages": [system("s"), user("only a question")]},  # no assistant turn: nothing to learn
        {"messages": [user("q2"), assistant("b")]},
    ]
    with caplog.at_level(logging.WARNING, logger="rlhf_core.data.tokenization"):
        ds, report = tokenize_sft(rows, tokenizer)
    assert (len(ds), report.total, report.no_loss, report.dropped) == (2, 3, 1, 0)
    assert "dropped 1 of 3 with no loss token" in caplog.text
    assert (
        tokenizer.decode([t for t, m in zip(ds[1]["input_ids"], ds[1]["completion_mask"]) if m]) == "b<|end|>"
    )
    # without assistant-only loss the same row has loss tokens and stays
    kept, report = tokenize_sft(rows, tokenizer, assistant_only_loss=False)
    assert (len(kept), report.no_loss) == (3, 0)
    texts, report = tokenize_sft([{"text": "a b"}, {"text": ""}, {"text": " \n"}], tokenizer)
    assert (len(texts), report.no_loss) == (1, 2)


def _ultrafeedback_rows():
    def pair(question, good, bad, score_good, score_bad):
        return {
            "prompt": question,
            "prompt_id": f"id-{len(question)}",
            "chosen": [user(question), assistant(good)],
            "rejected": [user(question), assistant(bad)],
            "messages": [user(question), assistant(good)],
            "score_chosen": score_good,
            "score_rejected": score_bad,
        }

    return [pair("What is 2+2?", "4", "5", 9.0, 2.5), pair("Name a colour.", "Blue.", "", 8.0, 1.0)]


def test_ultrafeedback_binarized_rows(tokenizer):
    data = Dataset.from_list(_ultrafeedback_rows())
    ds, report = tokenize_preference(data, tokenizer)
    assert ds.column_names == ["prompt_input_ids", "chosen_input_ids", "rejected_input_ids"]
    prompt = render(tokenizer, [user("What is 2+2?")], add_generation_prompt=True)
    assert ds[0]["prompt_input_ids"] == prompt  # the repeated user turn is the prompt, once
    assert tokenizer.decode(ds[0]["chosen_input_ids"]) == "4<|end|>"
    assert tokenizer.decode(ds[1]["rejected_input_ids"]) == "<|end|>"  # an empty rejected answer
    assert report.total == 2 and report.dropped == 0
    # answers that do not repeat the user turn: the string prompt becomes the user turn
    short = [{"prompt": "Hi?", "chosen": [assistant("Hello.")], "rejected": [assistant("Go away.")]}]
    ds, _ = tokenize_preference(short, tokenizer)
    assert ds[0]["prompt_input_ids"] == render(tokenizer, [user("Hi?")], add_generation_prompt=True)
    # a prompt that is none of the repeated conversation's user turns is ambiguous: a clear error
    odd = [{**_ultrafeedback_rows()[0], "prompt": "Something else"}]
    with pytest.raises(
        DataFormatError, match=r"row 0, field 'prompt': the 'prompt' string is not a user turn"
    ):
        tokenize_preference(odd, tokenizer)


def test_conversations_with_a_system_turn(tokenizer):
    chat = [system("Be brief."), user("2+2?"), assistant("4")]
    ds, _ = tokenize_sft([{"messages": chat}], tokenizer)
    assert ds[0]["input_ids"] == render(tokenizer, chat)
    trained = [t for t, m in zip(ds[0]["input_ids"], ds[0]["completion_mask"]) if m]
    assert tokenizer.decode(trained) == "4<|end|>"
    pairs = [
        {"chosen": chat, "rejected": [*chat[:2], assistant("5")]}
    ]  # implicit prompt with the system turn
    pref, _ = tokenize_preference(pairs, tokenizer)
    assert pref[0]["prompt_input_ids"] == render(tokenizer, chat[:2], add_generation_prompt=True)
    prompts = tokenize_prompts([{"prompt": chat[:2]}], tokenizer)
    assert prompts[0]["input_ids"] == pref[0]["prompt_input_ids"]


def test_prompt_completion_as_message_lists(tokenizer):
    row = {"prompt": [system("s"), user("q")], "completion": [assistant("a")]}
    ds, _ = tokenize_sft([row], tokenizer)
    full = render(tokenizer, row["prompt"] + row["completion"])
    prompt = render(tokenizer, row["prompt"], add_generation_prompt=True)
    assert ds[0]["input_ids"] == full
    trained = [t for t, m in zip(ds[0]["input_ids"], ds[0]["completion_mask"]) if m]
    assert trained == full[len(prompt) : len(prompt) + len(enc(tokenizer, "a")) + 1]


def test_extra_columns_of_any_type_are_ignored_and_none_in_optional_columns(tokenizer):
    extras = {
        "meta": {"source": "web", "turns": 2},
        "tags": ["a", "b"],
        "ids": [1, 2, 3],
        "score": 0.5,
        "flag": True,
        "note": None,
    }
    plain = [
        {"prompt": "Q", "chosen": " a", "rejected": " b"},
        {"prompt": "R", "chosen": " c", "rejected": " d"},
    ]
    with_extras = Dataset.from_list(
        [{**row, **extras, "margin": margin} for row, margin in zip(plain, [None, 2.0])]
    )
    ds, _ = tokenize_preference(with_extras, tokenizer)
    reference, _ = tokenize_preference(plain, tokenizer)
    for column in reference.column_names:
        assert ds[column] == reference[column]
    assert ds["margin"] == [None, 2.0]  # None in the optional margin column stays "no margin"
    sft = Dataset.from_list([{"text": "hello", **extras}, {"text": "world", **extras}])
    tokenized, _ = tokenize_sft(sft, tokenizer)
    assert tokenized.column_names == ["input_ids", "completion_mask"] and len(tokenized) == 2
    prompts = tokenize_prompts(Dataset.from_list([{"prompt": "go", **extras}]), tokenizer)
    assert prompts[0]["input_ids"] == enc(tokenizer, "go") and prompts[0]["meta"] == extras["meta"]
