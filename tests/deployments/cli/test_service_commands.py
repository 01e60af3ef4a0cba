"""`rlhf ingest`: without a Prefect API it stores the version directly and says no event was sent; with one, the
flow stores and announces it. A rejected file is bad input: exit status 2, nothing stored."""

from __future__ import annotations

import json

import pytest
from prefect.testing.utilities import prefect_test_harness

import tasks.ingest_tasks
from deployments.cli import EXIT_USAGE, main
from rlhf_core.data.hh_rlhf import default_hh_rlhf_path

HH = default_hh_rlhf_path()
PAIR = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


@pytest.fixture
def events(monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.ingest_tasks, "emit_event", lambda **fields: sent.append(fields) or object())
    return sent


@pytest.fixture
def no_prefect_api(monkeypatch):
    """No Prefect API configured (even when another test of the session runs the Prefect test harness)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ingest_without_a_prefect_api_stores_the_version_and_says_no_event_went_out(
    tmp_path, capsys, events, no_prefect_api
):
    store = tmp_path / "store"
    assert main(["ingest", str(_jsonl(tmp_path / "good.jsonl", [PAIR])), "--store-dir", str(store)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["created"] and not result["announced"] and result["rows"] == 1
    assert (store / result["version"] / "preferences.jsonl").is_file()
    assert "no server is there to receive preference-data.arrived" in captured.err
    assert events == []  # nothing was sent

    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "same", "rejected": "same"}])
    assert main(["ingest", str(bad), "--store-dir", str(store)]) == EXIT_USAGE
    assert "bad.jsonl rejected: 1 of 1 rows failed" in capsys.readouterr().err
    assert [p.name for p in store.iterdir() if not p.name.startswith(".")] == [result["version"]]

    assert main(["ingest", str(bad), "--max-invalid-fraction", "2"]) == EXIT_USAGE
    assert "--max-invalid-fraction: Input should be less than or equal to 1" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "missing.jsonl")]) == EXIT_USAGE
    assert "missing.jsonl: no such file" in capsys.readouterr().err


@pytest.mark.skipif(not HH.is_file(), reason=f"HH-RLHF file not found at {HH}")
def test_ingest_takes_the_whole_hh_file_as_it_is_shipped(tmp_path, capsys, no_prefect_api):
    assert main(["ingest", str(HH), "--store-dir", str(tmp_path / "store")]) == 0  # .jsonl.gz
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 2312  # every pair, the 4 that prefer an empty answer included
    stored = (tmp_path / "store" / result["version"] / "preferences.jsonl").read_text().splitlines()
    assert len(stored) == 2312 and json.loads(stored[86])["chosen"] == ""


@pytest.mark.slow
def test_ingest_with_a_prefect_api_runs_the_flow_and_announces_once(capsys, tmp_path, events):
    good = _jsonl(tmp_path / "good.jsonl", [PAIR])
    store = tmp_path / "store"
    with prefect_test_harness(server_startup_timeout=120):  # stopped here, not at exit into a closed capsys
        assert main(["ingest", str(good), "--store-dir", str(store)]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["created"] and result["announced"] and (store / result["version"]).is_dir()
        assert [e["payload"]["version"] for e in events] == [result["version"]]

        bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "same", "rejected": "same"}])
        assert main(["ingest", str(bad), "--store-dir", str(store)]) == EXIT_USAGE
        assert "bad.jsonl rejected: 1 of 1 rows failed" in capsys.readouterr().err
    assert len(events) == 1
