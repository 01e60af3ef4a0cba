"""The `rlhf` command (deployments.cli): the pipeline's subcommands plus `serve` and `ingest`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

import tasks.ingest
from deployments.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = str(ROOT / "configs" / "default.yaml")


def test_one_parser_with_every_subcommand():
    parser = build_parser()
    choices = next(a.choices for a in parser._actions if hasattr(a, "choices") and a.choices)
    assert {"run", "validate", "train", "serve", "ingest"} <= set(choices)
    args = parser.parse_args(["serve", DEFAULT, "stages.sft.args.max_steps=3", "--cron", "0 * * * *"])
    assert (args.config, args.overrides, args.cron, args.retrain_on_new_data) == (
        DEFAULT,
        ["stages.sft.args.max_steps=3"],
        "0 * * * *",
        True,
    )


def test_pipeline_commands_go_to_the_flows_cli(capsys):
    assert main(["validate", "no-such-config.yaml"]) == 2  # the flows CLI's user-error status
    assert "no-such-config.yaml" in capsys.readouterr().err


def test_serve_dry_run_lists_what_would_be_registered(capsys, tmp_path):
    argv = ["serve", DEFAULT, "--cron", "0 3 * * 1", "--watch-folder", str(tmp_path), "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "rlhf-pipeline/rlhf-pipeline: schedules cron '0 3 * * 1' (UTC); triggers preference-data.arrived",
        "ingest-preferences/ingest-preferences: schedules none; triggers none",
        "watch-preference-folder/watch-preference-folder: schedules every 60 s; triggers none",
    ]


def test_serve_with_a_bad_config_names_the_problem(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: {sft: {args: {max_stepz: 3}}}\n")
    assert main(["serve", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "stages.sft.args" in err and "max_stepz" in err


@pytest.mark.slow
def test_ingest_stores_a_version_and_rejects_bad_files(capsys, tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(tasks.ingest, "emit_event", lambda **fields: sent.append(fields) or object())
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    store = tmp_path / "store"
    with prefect_test_harness(server_startup_timeout=120):  # stopped here, not at exit into a closed capsys
        assert main(["ingest", str(good), "--store-dir", str(store)]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["created"] and result["announced"] and (store / result["version"]).is_dir()
        assert [e["payload"]["version"] for e in sent] == [result["version"]]

        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
        assert main(["ingest", str(bad), "--store-dir", str(store)]) == 1
        assert "bad.jsonl rejected: 1 of 1 rows failed" in capsys.readouterr().err
    assert len(sent) == 1
