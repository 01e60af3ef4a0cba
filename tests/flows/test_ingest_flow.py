"""The ingestion flows under Prefect: versions, exactly-once events, rejected files, the folder watcher."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.ingest import WATCH_LEDGER, ingest_preferences, watch_preference_folder
from tasks import ingest_tasks
from tasks.ingest import PREFERENCE_DATA_ARRIVED, IngestPolicy, PreferenceDataRejected

ROWS = [
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
    {"prompt": "2+3?", "chosen": "5", "rejected": "6"},
    {"prompt": "Greet me.", "chosen": "Hello!", "rejected": "No."},
]


@pytest.fixture(scope="module", autouse=True)
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def emitted(monkeypatch):
    events = []

    def record(**fields):
        events.append(fields)
        return object()  # what emit_event returns when the event was sent

    monkeypatch.setattr(ingest_tasks, "emit_event", record)
    return events


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    old = time.time() - 60  # "settled": not a file still being copied
    os.utime(path, (old, old))
    return path


def test_ingest_stores_a_version_and_announces_it_once(tmp_path, emitted):
    store = tmp_path / "store"
    first = ingest_preferences(str(write(tmp_path / "new.jsonl", ROWS)), store_dir=str(store))
    assert first["created"] and first["announced"] and first["rows"] == 3
    assert Path(first["uri"]).is_file() and Path(first["uri"]).parent.name == first["version"]
    assert [e["event"] for e in emitted] == [PREFERENCE_DATA_ARRIVED]
    assert emitted[0]["payload"]["uri"] == first["uri"]
    assert emitted[0]["payload"]["version"] == first["version"]

    # Same content under another name: same version, nothing written, no second event (no retraining).
    again = ingest_preferences(str(write(tmp_path / "copy.jsonl", ROWS)), store_dir=str(store))
    assert again["version"] == first["version"]
    assert not again["created"] and not again["announced"]
    assert len(emitted) == 1
    assert [p.name for p in store.iterdir() if not p.name.startswith(".")] == [first["version"]]


def test_rejected_file_fails_the_flow_and_writes_nothing(tmp_path, emitted):
    store = tmp_path / "store"
    bad = write(tmp_path / "bad.jsonl", [*ROWS, {"prompt": "p", "chosen": "same", "rejected": "same"}])
    with pytest.raises(PreferenceDataRejected, match=r"1 of 4 rows failed .* row 3"):
        ingest_preferences(str(bad), store_dir=str(store), policy=IngestPolicy(max_invalid_fraction=0.0))
    assert not store.exists() or list(store.iterdir()) == []
    assert emitted == []
    # the same file passes under a tolerant policy, without the bad row
    result = ingest_preferences(str(bad), store_dir=str(store), policy=IngestPolicy(max_invalid_fraction=0.5))
    assert result["rows"] == 3


def test_watcher_ingests_new_and_changed_files_only(tmp_path, emitted):
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    write(inbox / "a.jsonl", ROWS[:2])
    write(inbox / "b.jsonl", ROWS[1:])
    (inbox / "notes.txt").write_text("ignored")
    results = watch_preference_folder(str(inbox), store_dir=str(store), settle_seconds=5)
    assert sorted(r["rows"] for r in results) == [2, 2] and len(emitted) == 2
    ledger = json.loads((store / WATCH_LEDGER).read_text())
    assert {Path(k).name: v["status"] for k, v in ledger.items()} == {
        "a.jsonl": "ingested",
        "b.jsonl": "ingested",
    }

    assert watch_preference_folder(str(inbox), store_dir=str(store), settle_seconds=5) == []  # nothing new

    write(inbox / "a.jsonl", ROWS)  # changed content -> a new version
    write(inbox / "c.jsonl", [{"chosen": "x", "rejected": "x"}])  # rejected
    (inbox / "d.jsonl").write_text(json.dumps(ROWS[0]) + "\n")  # just written: waits for the next tick
    with pytest.raises(PreferenceDataRejected, match="c.jsonl"):
        watch_preference_folder(str(inbox), store_dir=str(store), settle_seconds=5)
    assert len(emitted) == 3 and emitted[-1]["payload"]["rows"] == 3
    ledger = json.loads((store / WATCH_LEDGER).read_text())
    assert {Path(k).name: v["status"] for k, v in ledger.items()} == {
        "a.jsonl": "ingested",
        "b.jsonl": "ingested",
        "c.jsonl": "rejected",
    }
