"""Data sources -> the rows each stage reads, validated row by row, with a content digest."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from tasks.config import FileSource, HHRLHFSource, SyntheticSource
from tasks.data_sources import DataSourceError, content_digest, hh_transcript_to_messages, load_role_dataset

HH_ROW = {
    "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: A mango.",
    "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: No.",
}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_synthetic_task_gives_each_stage_its_form():
    sft = load_role_dataset(SyntheticSource(num_examples=5), "sft")
    assert sft.column_names == ["messages"] and len(sft) == 5
    pairs = load_role_dataset(SyntheticSource(num_examples=4), "dpo")
    assert set(pairs.column_names) == {"prompt", "chosen", "rejected"}
    prompts = load_role_dataset(SyntheticSource(num_examples=3, split="heldout"), "eval")
    assert prompts.column_names == ["prompt"] and prompts[0]["prompt"][0]["role"] == "user"


def test_hh_transcript_becomes_chat_turns():
    assert hh_transcript_to_messages("\n\nHuman: a b\n\nAssistant: c\n\nHuman: d\n\nAssistant:") == [
        {"role": "user", "content": "a b"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    # an empty human turn between two answers: the answers are joined, so roles still alternate
    assert hh_transcript_to_messages(
        "\n\nHuman: a\n\nAssistant: b\n\nHuman: \n\nAssistant: c\n\nHuman: d"
    ) == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b\n\nc"},
        {"role": "user", "content": "d"},
    ]


def test_implicit_preference_file_serves_every_role(tmp_path):
    source = FileSource(path=_jsonl(tmp_path / "hh.jsonl", [HH_ROW, HH_ROW]))
    pair = load_role_dataset(source, "reward")[0]
    assert (
        pair["prompt"].endswith("\n\nAssistant:")
        and pair["chosen"] == " A mango."
        and pair["rejected"] == " No."
    )
    sft = load_role_dataset(source, "sft")[0]  # preference pairs train SFT on prompt + chosen
    assert sft == {"prompt": pair["prompt"], "completion": " A mango."}
    assert load_role_dataset(source, "ppo")[0] == {"prompt": pair["prompt"]}


def test_hh_source_as_messages(tmp_path):
    path = tmp_path / "hh.jsonl"
    _jsonl(path, [HH_ROW])
    pair = load_role_dataset(HHRLHFSource(path=str(path)), "dpo")[0]
    assert pair["prompt"][-1] == {"role": "user", "content": "Name a fruit"} and len(pair["prompt"]) == 3
    assert pair["chosen"] == [{"role": "assistant", "content": "A mango."}]


def test_bad_row_names_the_key_the_row_and_the_field(tmp_path):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": 5, "rejected": "c"}]
    source = FileSource(path=_jsonl(tmp_path / "pairs.jsonl", rows))
    with pytest.raises(DataSourceError) as info:
        load_role_dataset(source, "dpo", key="data.preference")
    message = str(info.value)
    assert message.startswith("data.preference (file(") and "row 1" in message and "'chosen'" in message


def test_what_the_trainers_accept_validation_accepts(tmp_path):
    rows = [
        {"prompt": "a", "chosen": "", "rejected": "c"}
    ]  # an empty answer: eos alone, as the trainers take it
    source = FileSource(path=_jsonl(tmp_path / "pairs.jsonl", rows))
    assert load_role_dataset(source, "dpo")[0] == {"prompt": "a", "chosen": "", "rejected": "c"}
    chat = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}]
    source = FileSource(path=_jsonl(tmp_path / "chat.jsonl", chat))
    assert load_role_dataset(source, "eval")[0] == {"prompt": chat[0]["messages"]}  # no answer: all prompt
    assert load_role_dataset(source, "sft")[0] == chat[0]  # the SFT trainer drops it (no loss token), counted


def test_language_modelling_rows_hold_no_prompts(tmp_path):
    source = FileSource(path=_jsonl(tmp_path / "lm.jsonl", [{"text": "hello"}]))
    assert load_role_dataset(source, "sft")[0] == {"text": "hello"}
    with pytest.raises(DataSourceError, match="hold no prompts"):
        load_role_dataset(source, "eval")


def test_parquet_and_limit(tmp_path):
    path = tmp_path / "p.parquet"
    Dataset.from_list([{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]).to_parquet(str(path))
    rows = load_role_dataset(FileSource(path=str(path), limit=2), "sft")
    assert rows["prompt"] == ["q0", "q1"]


def test_content_digest_follows_content_not_origin():
    a = Dataset.from_list([{"x": 1, "y": "a"}, {"x": 2, "y": "b"}])
    b = Dataset.from_dict({"y": ["a", "b"], "x": [1, 2]})  # same rows, built another way
    assert content_digest(a) == content_digest(b)
    assert content_digest(a) != content_digest(Dataset.from_list([{"x": 1, "y": "a"}, {"x": 2, "y": "c"}]))
    assert content_digest(a) != content_digest(a.select([1, 0]))
