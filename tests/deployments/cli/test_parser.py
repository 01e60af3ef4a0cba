"""The `rlhf` command (deployments.cli): one parser with every subcommand, one exit-code table, lazy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deployments.cli import EXIT_USAGE, build_parser, main

ROOT = Path(__file__).resolve().parents[3]
DEFAULT = str(ROOT / "configs" / "default.yaml")


def _subcommands() -> set[str]:
    parser = build_parser()
    return set(next(a.choices for a in parser._actions if hasattr(a, "choices") and a.choices))


def test_one_parser_with_every_subcommand():
    assert _subcommands() == {"run", "validate", "train", "serve", "ingest", "doctor"}
    args = build_parser().parse_args(["serve", DEFAULT, "stages.sft.args.max_steps=3", "--cron", "0 * * * *"])
    assert (args.config, args.overrides, args.cron, args.retrain_on_new_data) == (
        DEFAULT,
        ["stages.sft.args.max_steps=3"],
        "0 * * * *",
        True,
    )
    args = build_parser().parse_args(["train", "dpo", "c.yaml", "stages.dpo.args.beta=0.2"])
    assert (args.command, args.stage, args.config, args.overrides) == (
        "train",
        "dpo",
        "c.yaml",
        ["stages.dpo.args.beta=0.2"],
    )


def test_help_documents_the_exit_statuses(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit status:" in out
    for line in ("0  done", "1  the run failed", "2  bad usage, configuration or input data"):
        assert line in out
    assert all(f"    {name}" in out for name in _subcommands())


def test_bad_usage_exits_with_the_usage_status(capsys):
    for argv in (["train", "rlhf", "c.yaml"], ["deploy"], []):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == EXIT_USAGE, argv
    assert "invalid choice: 'rlhf'" in capsys.readouterr().err


def test_a_config_error_exits_2_for_every_command(capsys):
    for argv in (
        ["validate", "no-such.yaml"],
        ["run", "no-such.yaml"],
        ["serve", "no-such.yaml", "--dry-run"],
    ):
        assert main(argv) == EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert "config file not found: 'no-such.yaml'" in err and "Traceback" not in err


def test_parsing_imports_neither_torch_nor_prefect_nor_mlflow():
    """`rlhf --help` and the start of every command stay fast: handlers are imported only when they run."""
    script = textwrap.dedent(
        """
        import sys
        from deployments.cli import build_parser
        for argv in (["run", "c.yaml"], ["validate", "c.yaml"], ["ingest", "f.jsonl"], ["serve", "c.yaml"]):
            build_parser().parse_args(argv)
        print(sorted(m for m in ("torch", "transformers", "prefect", "mlflow", "datasets") if m in sys.modules))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


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
    assert main(["serve", str(bad), "--dry-run"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "stages.sft.args" in err and "max_stepz" in err
