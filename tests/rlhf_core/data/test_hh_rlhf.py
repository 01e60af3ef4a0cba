"""The bundled HH-RLHF loader and implicit-prompt extraction on real rows (skips when the data is absent)."""

from __future__ import annotations

import gzip
import json

import pytest

from rlhf_core.data.formats import DataFormatError, extract_prompt
from rlhf_core.data.hh_rlhf import HH_ENV, default_hh_rlhf_path, load_hh_rlhf
from rlhf_core.data.tokenization import tokenize_preference

HH = default_hh_rlhf_path()
needs_hh = pytest.mark.skipif(
    not HH.is_file(), reason=f"HH-RLHF file not found at {HH} (CI has it at ../shared/data/hh-rlhf/)"
)
EMPTY_ANSWER_ROWS = [86, 516, 925, 1103]  # the chosen answer is empty in these rows of the file


def _raw_rows(n=None):
    with gzip.open(HH, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return rows if n is None else rows[:n]


@needs_hh
def test_loads_every_pair_of_the_file():
    ds = load_hh_rlhf()
    assert ds.column_names == ["chosen", "rejected"]
    assert len(ds) == len(_raw_rows()) == 2312
    raw = _raw_rows(3)
    assert ds[:3] == {"chosen": [r["chosen"] for r in raw], "rejected": [r["rejected"] for r in raw]}


@needs_hh
def test_empty_answers_are_valid_pairs():
    # the annotator preferred an empty answer: the completion is the end-of-text token alone
    ds = load_hh_rlhf(explicit_prompt=True, skip_invalid=False)
    raw = _raw_rows()
    assert [i for i, row in enumerate(ds) if row["chosen"] == ""] == EMPTY_ANSWER_ROWS
    for i in EMPTY_ANSWER_ROWS:
        assert raw[i]["chosen"].endswith("\n\nAssistant: ") and ds[i]["rejected"].strip()


def test_invalid_rows_raise_when_not_skipped(tmp_path):
    rows = [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}] * 2
    rows.insert(1, {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": 7})
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFormatError) as err:
        load_hh_rlhf(path, skip_invalid=False)
    assert (err.value.index, err.value.field) == (1, "rejected")
    assert len(load_hh_rlhf(path)) == 2


@needs_hh
def test_explicit_prompt_on_real_rows():
    raw = _raw_rows(50)
    ds = load_hh_rlhf(explicit_prompt=True, limit=50)
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    for row, original in zip(ds, raw):
        assert row["prompt"].startswith("\n\nHuman:") and row["prompt"].endswith("\n\nAssistant:")
        assert row["prompt"] + row["chosen"] == original["chosen"]
        assert row["prompt"] + row["rejected"] == original["rejected"]
        assert row["chosen"].startswith(" ") and row["rejected"].startswith(" ")
        assert row["chosen"] != row["rejected"]
    # a hand-checked row: the first pair of the file diverges in the last assistant answer
    prompt, chosen, rejected = extract_prompt(raw[0]["chosen"], raw[0]["rejected"])
    assert prompt.endswith("okay some of these do not have anything to do with pens\n\nAssistant:")
    assert chosen.startswith(" No, sorry!") and "\n\nHuman:" not in chosen


@needs_hh
def test_real_rows_tokenise_back_to_the_text(tokenizer):
    raw = _raw_rows(8)
    ds, report = tokenize_preference(raw, tokenizer, max_length=None)
    assert report.total == 8 and report.truncated == report.dropped == 0
    for row, original in zip(ds, raw):
        assert (
            tokenizer.decode(row["prompt_input_ids"] + row["chosen_input_ids"])
            == original["chosen"] + "<|end|>"
        )
        assert (
            tokenizer.decode(row["prompt_input_ids"] + row["rejected_input_ids"])
            == original["rejected"] + "<|end|>"
        )


@needs_hh
def test_splits_are_disjoint_deterministic_and_complete():
    test, train = (
        load_hh_rlhf(split="test", test_fraction=0.1),
        load_hh_rlhf(split="train", test_fraction=0.1),
    )
    assert len(test) == round(2312 * 0.1) and len(test) + len(train) == 2312
    assert not set(test["chosen"]) & set(train["chosen"])
    assert load_hh_rlhf(split="test")["chosen"] == test["chosen"]
    assert load_hh_rlhf(split="test", seed=1)["chosen"] != test["chosen"]
    assert len(load_hh_rlhf(split="train", limit=5)) == 5


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="HH-RLHF data not found at .*nowhere"):
        load_hh_rlhf(tmp_path / "nowhere")


def test_path_from_a_folder_or_the_environment(tmp_path, monkeypatch):
    rows = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"},
        {
            "chosen": "\n\nHuman: a\n\nAssistant: b",
            "rejected": "\n\nHuman: a\n\nAssistant: b",
        },  # identical: invalid
    ]
    with gzip.open(tmp_path / "harmless-base-test.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    assert load_hh_rlhf(tmp_path)["chosen"] == [rows[0]["chosen"]]
    monkeypatch.setenv(HH_ENV, str(tmp_path))
    assert default_hh_rlhf_path() == tmp_path / "harmless-base-test.jsonl.gz"
    assert load_hh_rlhf(explicit_prompt=True)[0] == {
        "prompt": "\n\nHuman: hi\n\nAssistant:",
        "chosen": " hello",
        "rejected": " go",
    }
    with pytest.raises(ValueError, match="split"):
        load_hh_rlhf(split="validation")
