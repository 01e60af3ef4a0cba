"""Format detection, row validation (each bad row names its index and field) and implicit-prompt extraction."""

from __future__ import annotations

import pickle

import pytest
from chat_messages import assistant, system, user

from rlhf_core.data.formats import (
    DataFormat,
    DataFormatError,
    detect_format,
    extract_prompt,
    normalise_preference_row,
    normalise_prompt_row,
    normalise_sft_row,
)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"text": "x"}, DataFormat.LANGUAGE_MODELING),
        ({"prompt": "p", "completion": "c"}, DataFormat.PROMPT_COMPLETION),
        ({"messages": [user("hi"), assistant("yo")]}, DataFormat.CONVERSATIONAL),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, DataFormat.PREFERENCE),
        ({"chosen": "p a", "rejected": "p b"}, DataFormat.PREFERENCE_IMPLICIT),
        ({"prompt": "p"}, DataFormat.PROMPT_ONLY),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0}, DataFormat.PREFERENCE),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns) is expected


def test_detect_format_custom_text_field():
    assert detect_format({"body": "x"}, text_field="body") is DataFormat.LANGUAGE_MODELING
    with pytest.raises(DataFormatError) as err:
        detect_format({"body": "x"}, index=3)
    assert "row 3" in str(err.value) and "'text'" in str(err.value) and "body" in str(err.value)


@pytest.mark.parametrize(
    ("columns", "field"),
    [({"chosen": "a"}, "rejected"), ({"rejected": "a"}, "chosen"), ({"completion": "c"}, "prompt")],
)
def test_detect_format_missing_column_names_it(columns, field):
    with pytest.raises(DataFormatError) as err:
        detect_format(columns, index=7)
    assert err.value.index == 7 and err.value.field == field
    assert str(err.value).startswith(f"row 7, field '{field}'")


def test_error_survives_pickling_with_its_location():
    err = DataFormatError("empty completion", index=4, field="completion")
    again = pickle.loads(pickle.dumps(err))
    assert (again.index, again.field, str(again)) == (
        4,
        "completion",
        "row 4, field 'completion': empty completion",
    )


# ----------------------------------------------------------------------------------------- SFT row validation

LM, PC, CONV = DataFormat.LANGUAGE_MODELING, DataFormat.PROMPT_COMPLETION, DataFormat.CONVERSATIONAL


@pytest.mark.parametrize(
    ("fmt", "row", "field", "words"),
    [
        (LM, {"text": 5}, "text", "expected a string, got int"),
        (LM, {"text": None}, "text", "missing"),
        (LM, {"other": "x"}, "text", "missing column"),
        (PC, {"prompt": "p", "completion": ["a"]}, "completion", "expected a string"),
        (PC, {"prompt": 3, "completion": "c"}, "prompt", "expected a string or a list of messages, got int"),
        (PC, {"prompt": "p"}, "completion", "missing column"),
        (PC, {"prompt": "p", "completion": [assistant("x")]}, "completion", "string prompt needs a string"),
        (PC, {"prompt": [user("q")], "completion": "c"}, "completion", "message-list prompt"),
        (
            PC,
            {"prompt": [user("q")], "completion": [user("c")]},
            "completion[0].role",
            "'assistant' is expected",
        ),
        (CONV, {"messages": []}, "messages", "empty message list"),
        (CONV, {"messages": "hi"}, "messages", "expected a list of messages"),
        (
            CONV,
            {"messages": [user("q"), {"role": "bot", "content": "x"}]},
            "messages[1].role",
            "unknown role 'bot'",
        ),
        (CONV, {"messages": [user("q"), {"content": "x"}]}, "messages[1].role", "missing role"),
        (CONV, {"messages": [user("q"), {"role": "assistant"}]}, "messages[1].content", "missing content"),
        (
            CONV,
            {"messages": [user("q"), {"role": "assistant", "content": 7}]},
            "messages[1].content",
            "got int",
        ),
        (CONV, {"messages": [user("q"), user("q2"), assistant("a")]}, "messages[1].role", "two 'user'"),
        (
            CONV,
            {"messages": [user("q"), assistant("a"), assistant("b")]},
            "messages[2].role",
            "two 'assistant'",
        ),
        (CONV, {"messages": [user("q"), system("s"), assistant("a")]}, "messages[1].role", "only come first"),
        (CONV, {"messages": [assistant("a"), user("q")]}, "messages[0].role", "must open with"),
        (CONV, {"messages": [user("q"), "not a dict"]}, "messages[1]", "expected a message mapping"),
    ],
)
def test_bad_sft_rows_name_index_and_field(fmt, row, field, words):
    with pytest.raises(DataFormatError) as err:
        normalise_sft_row(row, 11, fmt=fmt)
    assert err.value.index == 11 and err.value.field == field
    assert str(err.value).startswith(f"row 11, field '{field}'")
    assert words in str(err.value)


def test_good_sft_rows_pass_through():
    assert normalise_sft_row({"body": "x y", "id": 1}, 0, fmt=LM, text_field="body") == {"text": "x y"}
    assert normalise_sft_row({"prompt": "", "completion": "c"}, 0, fmt=PC) == {
        "prompt": "",
        "completion": "c",
    }
    messages = [system("s"), user("q"), assistant("a"), user("q2"), assistant("a2")]
    assert normalise_sft_row({"messages": messages}, 0, fmt=CONV) == {"messages": messages}


# ---------------------------------------------------------------------------------- preference validation


def test_explicit_preference_row_keeps_margin():
    row = normalise_preference_row({"prompt": "Q?", "chosen": " yes", "rejected": " no", "margin": 2}, 0)
    assert row == {"prompt": "Q?", "chosen": " yes", "rejected": " no", "margin": 2.0}
    assert "margin" not in normalise_preference_row(
        {"prompt": "Q?", "chosen": "a", "rejected": "b", "margin": None}, 0
    )


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "rejected", "identical"),
        ({"chosen": "Q: a b", "rejected": "Q: a b"}, "rejected", "identical"),
        ({"prompt": "Q", "chosen": "a", "rejected": None}, "rejected", "missing"),
        ({"prompt": "Q", "chosen": 1.5, "rejected": "b"}, "chosen", "expected a string, got float"),
        ({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "expected a number"),
        ({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": True}, "margin", "expected a number"),
        (
            {"prompt": [user("q")], "chosen": [user("a")], "rejected": [assistant("b")]},
            "chosen[0].role",
            "'assistant'",
        ),
        (
            {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": "b"},
            "rejected",
            "message-list prompt",
        ),
        (
            {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("a")]},
            "rejected",
            "identical",
        ),
        ({"chosen": "yes", "rejected": "no"}, "chosen", "share no prompt"),
        (
            {"chosen": "\n\nHuman: hi\n\nAssistant: ok", "rejected": ["x"]},
            "rejected[0]",
            "expected a message mapping",
        ),
    ],
)
def test_bad_preference_rows_name_index_and_field(row, field, words):
    with pytest.raises(DataFormatError) as err:
        normalise_preference_row(row, 42)
    assert err.value.index == 42 and err.value.field == field
    assert str(err.value).startswith(f"row 42, field '{field}'")
    assert words in str(err.value)


def test_rows_with_nothing_to_learn_are_valid_sft_rows():
    # the tokeniser drops and counts them (test_tokenization); validation must not stop the dataset
    assert normalise_sft_row({"text": ""}, 0, fmt=LM) == {"text": ""}
    assert normalise_sft_row({"prompt": "p", "completion": "   "}, 0, fmt=PC) == {
        "prompt": "p",
        "completion": "",
    }
    no_answer = [system("s"), user("q")]
    assert normalise_sft_row({"messages": no_answer}, 0, fmt=CONV) == {"messages": no_answer}
    empty_answer = [user("q"), assistant("")]
    assert normalise_sft_row({"messages": empty_answer}, 0, fmt=CONV) == {"messages": empty_answer}


def test_empty_preference_answers_are_valid_completions():
    assert normalise_preference_row({"prompt": "Q", "chosen": "", "rejected": "b"}, 0) == {
        "prompt": "Q",
        "chosen": "",
        "rejected": "b",
    }
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant:  ", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    assert normalise_preference_row(hh, 0) == {
        "prompt": "\n\nHuman: hi\n\nAssistant:",
        "chosen": "",
        "rejected": " no",
    }
    chat = {"prompt": [user("q")], "chosen": [assistant("")], "rejected": [assistant("b")]}
    assert normalise_preference_row(chat, 0)["chosen"] == [assistant("")]
    with pytest.raises(DataFormatError, match="identical"):  # both empty: still no preference signal
        normalise_preference_row({"prompt": "Q", "chosen": " ", "rejected": ""}, 0)


def test_prompt_rows():
    assert normalise_prompt_row({"prompt": "go"}, 0) == "go"
    assert normalise_prompt_row({"prompt": [user("q")]}, 0) == [user("q")]
    for row, field in (
        ({"prompt": ""}, "prompt"),
        ({"text": "x"}, "prompt"),
        ({"prompt": [user(3)]}, "prompt[0].content"),
    ):
        with pytest.raises(DataFormatError) as err:
            normalise_prompt_row(row, 5)
        assert (err.value.index, err.value.field) == (5, field)


# ------------------------------------------------------------------------------------- implicit prompts


def test_extract_prompt_hh_style_cuts_at_last_assistant_turn():
    shared = "\n\nHuman: How do I bake bread?\n\nAssistant: You need flour.\n\nHuman: And then?\n\nAssistant:"
    chosen, rejected = shared + " Knead the dough.", shared + " Kill yourself."
    # the character-level common prefix runs into " K"; the cut goes back to the last "\n\nAssistant:"
    assert extract_prompt(chosen, rejected) == (shared, " Knead the dough.", " Kill yourself.")


def test_extract_prompt_hh_divergence_in_a_later_turn_keeps_the_whole_tail():
    head = "\n\nHuman: hi\n\nAssistant:"
    chosen = head + " Hello!\n\nHuman: thanks\n\nAssistant: Any time."
    rejected = head + " Hello!\n\nHuman: bye\n\nAssistant: Bye."
    prompt, c, r = extract_prompt(chosen, rejected)
    assert (
        prompt == head and c == " Hello!\n\nHuman: thanks\n\nAssistant: Any time." and r.startswith(" Hello!")
    )
    assert prompt + c == chosen and prompt + r == rejected


def test_extract_prompt_plain_text_cuts_at_whitespace():
    assert extract_prompt("The answer is four", "The answer is forty") == ("The answer is", " four", " forty")
    assert extract_prompt("Sum:\n\n4", "Sum:\n\n5") == ("Sum:", "\n\n4", "\n\n5")
    # one answer extends the other: still cut at a word boundary, never inside a word
    assert extract_prompt("Say hello", "Say hello world") == ("Say", " hello", " hello world")


def test_extract_prompt_message_lists():
    chosen = [system("s"), user("q"), assistant("good")]
    rejected = [system("s"), user("q"), assistant("bad")]
    assert extract_prompt(chosen, rejected) == (
        [system("s"), user("q")],
        [assistant("good")],
        [assistant("bad")],
    )
    # divergence at a user turn: the prompt is cut back so completions start with an assistant message
    chosen = [user("q"), assistant("a"), user("more?"), assistant("yes")]
    rejected = [user("q"), assistant("a"), user("less?"), assistant("no")]
    prompt, c, r = extract_prompt(chosen, rejected)
    assert prompt == [user("q")] and c == chosen[1:] and r == rejected[1:]


def test_implicit_preference_row_is_normalised():
    row = normalise_preference_row(
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, 0
    )
    assert row == {"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": " a", "rejected": " b"}
    conv = normalise_preference_row(
        {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}, 0
    )
    assert conv == {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
