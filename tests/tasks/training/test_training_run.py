"""One stage from its spec: trains and saves; after a crash, the next attempt resumes from the last checkpoint."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from rlhf_core.data.synthetic import SyntheticTask
from tasks.stage_specs import StageSpec
from tasks.training import run as training
from tasks.training.run import resolve_trainer_config, run_stage_training


class _CrashAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated crash after saving step {self.step}")


def _spec(tmp_path, **args) -> StageSpec:
    data = tmp_path / "sft-data"
    if not data.exists():
        SyntheticTask().sft_dataset(32).save_to_disk(str(data))
    defaults = {
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "save_steps": 2,
        "disable_tqdm": True,
        "max_length": 48,
    }
    return StageSpec(
        stage="sft",
        model="rlhf-tiny",
        train_data=str(data),
        stage_dir=str(tmp_path / "stage"),
        args={**defaults, **args},
    )


def test_pipeline_owns_output_dir_seed_and_mlflow_reporting(tmp_path):
    spec = _spec(tmp_path, report_to=["tensorboard"])
    config = resolve_trainer_config(spec)
    assert config.output_dir == str(tmp_path / "stage" / "checkpoints")
    assert config.report_to == ["mlflow", "tensorboard"] and config.run_name == "sft"
    assert config.seed == 0 and resolve_trainer_config(spec.model_copy(update={"seed": 7})).seed == 7


def test_crashed_stage_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    build = training.build_trainer

    def crashing(spec, args):
        trainer = build(spec, args)
        trainer.add_callback(_CrashAfterSave(step=2))
        return trainer

    monkeypatch.setattr(training, "build_trainer", crashing)
    spec = _spec(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_stage_training(spec)
    assert (spec.checkpoints_dir / "checkpoint-2").is_dir() and not spec.final_dir.exists()

    monkeypatch.setattr(training, "build_trainer", build)
    outcome = run_stage_training(spec)
    assert outcome.resumed_from == str(spec.checkpoints_dir / "checkpoint-2")
    assert outcome.global_step == 4
    state = json.loads((spec.checkpoints_dir / "checkpoint-4" / "trainer_state.json").read_text())
    # steps 1-2 from the first attempt, 3-4 from the resumed one: each logged exactly once
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    assert (spec.final_dir / "config.json").is_file() and (spec.final_dir / "tokenizer_config.json").is_file()
    assert json.loads(spec.outcome_file.read_text())["global_step"] == 4

    # with resume off, the checkpoints are ignored (a fresh start)
    assert training._last_checkpoint(spec.model_copy(update={"resume": False})) is None


def test_pipeline_stage_keeps_two_checkpoints_unless_its_args_say_otherwise(tmp_path):
    assert resolve_trainer_config(_spec(tmp_path)).save_total_limit == 2
    assert resolve_trainer_config(_spec(tmp_path, save_total_limit=5)).save_total_limit == 5
    assert resolve_trainer_config(_spec(tmp_path, save_total_limit=None)).save_total_limit is None
    spec = _spec(tmp_path, max_steps=6, save_steps=1)
    run_stage_training(spec)
    # six saves, the two newest kept; the final model is apart and complete
    assert sorted(p.name for p in spec.checkpoints_dir.iterdir()) == ["checkpoint-5", "checkpoint-6"]
    assert (spec.final_dir / "model.safetensors").is_file()
