"""Ingestion building blocks: reading, validation rules, the content-addressed store, exactly-once announce."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import ingest
from tasks.ingest import (
    ANNOUNCED_MARKER,
    DATA_FILE,
    MANIFEST_FILE,
    PREFERENCE_DATA_ARRIVED,
    IngestPolicy,
    PreferenceDataRejected,
    arrival_event_fields,
    claim_announcement,
    read_preference_file,
    validate_preference_rows,
    write_dataset_version,
)

GOOD = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
    {
        "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello, how can I help?",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away.",
    },
    {
        "prompt": [{"role": "user", "content": "Say yes"}],
        "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    },
]


def write_jsonl(path: Path, rows, extra_lines=()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_jsonl_json_and_parquet_to_the_same_rows(tmp_path):
    flat = GOOD[:2]
    jsonl = write_jsonl(tmp_path / "a.jsonl", flat)
    (tmp_path / "a.json").write_text(json.dumps(flat))
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "a.parquet")
    assert read_preference_file(str(jsonl)) == flat
    assert read_preference_file(jsonl.as_uri()) == flat  # file:// URI
    assert read_preference_file(str(tmp_path / "a.json")) == flat
    assert read_preference_file(str(tmp_path / "a.parquet")) == flat


def test_unreadable_sources_are_rejected_with_the_reason(tmp_path):
    with pytest.raises(PreferenceDataRejected, match="no such file"):
        read_preference_file(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(PreferenceDataRejected, match="unsupported file type '.csv'"):
        read_preference_file(str(tmp_path / "data.csv"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(PreferenceDataRejected, match="not a readable Parquet"):
        read_preference_file(str(tmp_path / "broken.parquet"))


def test_each_bad_row_is_dropped_and_named_with_its_reason(tmp_path):
    bad = [
        {"prompt": "p", "chosen": "same", "rejected": "same"},  # 4 identical
        {"prompt": "p", "chosen": "", "rejected": "b"},  # 5 kept: an empty answer is valid (eos alone)
        dict(GOOD[0]),  # 6 duplicate of row 0
        {"question": "no preference columns"},  # 7 schema
        {"prompt": "p" * 100, "chosen": "a", "rejected": "b"},  # 8 overlong (limit 60 below)
        {"prompt": "p", "chosen": 3, "rejected": "b"},  # 9 schema: not a string
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", GOOD + bad, extra_lines=["{not json"])  # 10 parse
    rows = read_preference_file(str(path))
    kept, report = validate_preference_rows(
        rows, IngestPolicy(max_row_chars=60, max_invalid_fraction=1.0), source=str(path)
    )
    assert report.total_rows == 11 and report.kept_rows == 5 and len(kept) == 5
    assert kept[-1] == {"prompt": "p", "chosen": "", "rejected": "b"}
    by_row = {p.index: p.kind for p in report.problems}
    assert by_row == {
        4: "identical",
        6: "duplicate",
        7: "schema",
        8: "overlong",
        9: "schema",
        10: "parse",
    }
    assert report.counts() == {
        "identical": 1,
        "duplicate": 1,
        "schema": 2,
        "overlong": 1,
        "parse": 1,
    }
    assert "line 11" in next(p.detail for p in report.problems if p.kind == "parse")
    assert "field 'chosen'" in next(p.detail for p in report.problems if p.index == 9)
    # implicit-prompt rows are normalised to an explicit prompt
    assert kept[2] == {
        "prompt": "\n\nHuman: Hi there\n\nAssistant:",
        "chosen": " Hello, how can I help?",
        "rejected": " Go away.",
    }
    markdown = report.to_markdown()
    assert "| 8 | overlong |" in markdown and "accepted" in markdown


def test_whole_file_is_rejected_past_the_invalid_fraction():
    rows = [*GOOD, {"prompt": "p", "chosen": "x", "rejected": "x"}]
    _, report = validate_preference_rows(rows, IngestPolicy(max_invalid_fraction=0.2), source="s")
    assert report.accepted  # 1 of 5 = 20 % is allowed
    _, report = validate_preference_rows(rows, IngestPolicy(max_invalid_fraction=0.1), source="s")
    assert not report.accepted
    assert "1 of 5 rows failed" in report.reason and "row 4" in report.reason
    _, report = validate_preference_rows([], IngestPolicy(), source="s")
    assert not report.accepted and "no rows" in report.reason
    _, report = validate_preference_rows(GOOD, IngestPolicy(min_rows=5), source="s")
    assert not report.accepted and "4 valid rows < min_rows=5" in report.reason


def _validated(rows):
    kept, report = validate_preference_rows(rows, IngestPolicy(), source="src.jsonl")
    assert report.accepted
    return kept, report


def test_version_is_the_content_hash_and_the_folder_is_complete(tmp_path):
    kept, report = _validated(GOOD)
    dataset = write_dataset_version(kept, report, tmp_path / "store")
    data = Path(dataset.uri).read_bytes()
    assert dataset.sha256 == hashlib.sha256(data).hexdigest()
    assert dataset.version == dataset.sha256[:16]
    assert Path(dataset.uri).parent.name == dataset.version
    assert [json.loads(line) for line in data.decode().splitlines()] == kept
    manifest = json.loads((Path(dataset.uri).parent / MANIFEST_FILE).read_text())
    assert manifest["rows"] == 4 and manifest["sha256"] == dataset.sha256
    assert dataset.created and dataset.rows == 4
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [dataset.version]


def test_same_content_twice_creates_no_second_version(tmp_path):
    kept, report = _validated(GOOD)
    first = write_dataset_version(kept, report, tmp_path)
    mtime = Path(first.uri).stat().st_mtime_ns
    second = write_dataset_version(kept, report, tmp_path)
    assert (second.version, second.created) == (first.version, False)
    assert Path(first.uri).stat().st_mtime_ns == mtime
    other = write_dataset_version(kept[:3], report, tmp_path)
    assert other.created and other.version != first.version
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_an_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    kept, report = _validated(GOOD)
    real_write = ingest._write_synced

    def crash_on_manifest(path, data):
        if path.name == MANIFEST_FILE:
            raise KeyboardInterrupt("killed while writing")
        real_write(path, data)

    monkeypatch.setattr(ingest, "_write_synced", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        write_dataset_version(kept, report, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ingest, "_write_synced", real_write)
    assert write_dataset_version(kept, report, tmp_path).created  # and a retry stores it


def test_announcement_is_claimed_exactly_once_across_threads(tmp_path):
    results = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        results.append(claim_announcement(tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert (tmp_path / ANNOUNCED_MARKER).exists()


def test_arrival_event_carries_uri_and_version_and_masks_the_source(tmp_path):
    kept, report = _validated(GOOD)
    report.source = "s3://user:hunter2@bucket/new.jsonl"
    dataset = write_dataset_version(kept, report, tmp_path)
    fields = arrival_event_fields(dataset)
    assert fields["event"] == PREFERENCE_DATA_ARRIVED
    assert fields["payload"]["uri"] == dataset.uri == fields["resource"]["rlhf.dataset.uri"]
    assert fields["payload"]["version"] == dataset.version == fields["resource"]["rlhf.dataset.version"]
    assert fields["resource"]["prefect.resource.id"].endswith(dataset.version)
    assert "hunter2" not in json.dumps(fields["payload"])
    assert fields["id"] == arrival_event_fields(dataset)["id"]  # stable id per content
    assert Path(dataset.uri).name == DATA_FILE


def test_ingest_accepts_what_the_trainers_accept(tmp_path):
    """The whole shared HH file (empty answers included) and UltraFeedback-binarized rows with extra columns."""
    from rlhf_core.data.hh_rlhf import default_hh_rlhf_path

    hh = default_hh_rlhf_path()
    if hh.is_file():  # the HH half needs the shared file; the fixture half runs everywhere
        import gzip

        with gzip.open(hh, "rt", encoding="utf-8") as handle:
            raw = [json.loads(line) for line in handle]
        kept, report = validate_preference_rows(raw, IngestPolicy(), source=str(hh))
        assert report.accepted and report.problems == [] and len(kept) == len(raw) == 2312
        assert kept[86]["chosen"] == "" and kept[86]["prompt"].endswith("\n\nAssistant:")
    user = {"role": "user", "content": "Name a colour."}
    ultrafeedback = {
        "prompt": "Name a colour.",
        "chosen": [user, {"role": "assistant", "content": "Blue."}],
        "rejected": [user, {"role": "assistant", "content": "Seven."}],
        "messages": [user, {"role": "assistant", "content": "Blue."}],
        "score_chosen": 8.0,
        "score_rejected": 2.0,
    }
    path = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback])
    kept, report = validate_preference_rows(read_preference_file(str(path)), IngestPolicy(), source=str(path))
    assert report.accepted and kept == [
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "Seven."}],
        }
    ]
