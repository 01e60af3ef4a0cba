"""`rlhf run / validate / train`: validate, dotted overrides, and user errors (key + problem, exit 2, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deployments.cli import EXIT_USAGE, build_parser, main

DEFAULT = str(Path(__file__).resolve().parents[3] / "configs" / "default.yaml")
SMALL_DATA = [
    "data.sft.num_examples=8",
    "data.preference.num_examples=8",
    "data.ppo.num_examples=4",
    "data.eval.num_examples=4",
]


def _fails(argv: list[str], capsys) -> str:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_parser_has_the_pipeline_commands():
    parser = build_parser()
    args = parser.parse_args(["train", "dpo", "c.yaml", "stages.dpo.args.beta=0.2"])
    assert (args.command, args.stage, args.config, args.overrides) == (
        "train",
        "dpo",
        "c.yaml",
        ["stages.dpo.args.beta=0.2"],
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "rlhf", "c.yaml"])


def test_validate_reads_every_source_without_training(capsys):
    assert main(["validate", DEFAULT, *SMALL_DATA]) == 0
    out = capsys.readouterr().out
    for role in ("sft", "reward", "dpo", "ppo", "eval"):
        assert f"data.{role}: " in out
    assert "stages: sft -> reward -> dpo -> ppo" in out and out.rstrip().endswith("OK")
    assert not Path("outputs").exists() and not Path("mlflow.db").exists()


def test_validate_reports_unknown_and_mistyped_keys(capsys):
    err = _fails(["validate", DEFAULT, "stages.sft.args.lerning_rate=0.1", "seed=abc"], capsys)
    assert "stages.sft.args.lerning_rate: unknown SFTConfig argument (did you mean 'learning_rate'?)" in err
    assert "seed: Input should be a valid integer" in err
    err = _fails(["validate", DEFAULT, "stages.sft.args.max_steps"], capsys)
    assert "override 'stages.sft.args.max_steps': expected dotted.key=value" in err
    assert "config file not found" in _fails(["validate", "nope.yaml"], capsys)


def test_validate_reports_a_bad_data_row(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Name a fruit.", "chosen": "Mango.", "rejected": "Rock."},
        {"prompt": "Hi", "chosen": "x"},
    ]
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    # a YAML mapping as the value replaces the whole source
    err = _fails(
        ["validate", DEFAULT, *SMALL_DATA, f"data.preference={{source: file, path: {pairs}}}"], capsys
    )
    assert "data.reward (file(" in err and "row 1" in err and "'rejected'" in err


def test_run_with_a_bad_config_fails_before_any_training(tmp_path, capsys):
    config = yaml.safe_load(Path(DEFAULT).read_text())
    config["stages"]["reward"]["enabled"] = False  # PPO would have no reward model
    config["stages"]["ppo"]["reward"] = "reward_model"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    err = _fails(["run", str(path)], capsys)
    assert "stages.ppo: PPO scores rollouts with a reward model" in err
    err = _fails(
        ["train", "ppo", DEFAULT, "stages.ppo.reward=reward_model"], capsys
    )  # alone: no reward model
    assert "model.reward_model is not set" in err
    err = _fails(["run", DEFAULT, "data.sft.source=file", "data.sft.path=missing.jsonl"], capsys)
    assert "data.sft.path: data file not found: 'missing.jsonl'" in err
    assert not Path("outputs").exists() and not Path("mlflow.db").exists()


@pytest.mark.slow
def test_train_one_stage_prints_the_table_and_the_ui_command(prefect_harness, tiny_config, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(name="cli")))
    assert main(["train", "sft", str(path), "stages.sft.args.max_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "stage" in out and "judge score" in out and "\nsft " in out and "\ndpo " not in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert "overhead (Prefect + MLflow" in out
