"""MLflow structure of a stage: nested under an explicit parent, context-managed, and the trainer's MLflow
callback logging into the stage run without ending it or starting runs of its own."""

from __future__ import annotations

import json
import threading
import warnings

import mlflow
import pytest
from datasets import Dataset, load_from_disk
from mlflow.tracking import MlflowClient

from tasks.stage_specs import StageSpec
from tasks.tracking import runs as tracking
from tasks.training.run import run_stage_training


def _runs(experiment: str) -> list:
    exp = MlflowClient().get_experiment_by_name(experiment)
    return MlflowClient().search_runs([exp.experiment_id])


def test_failed_stage_and_parent_are_marked_failed(mlflow_store):
    ids = {}
    with pytest.raises(RuntimeError, match="boom"):  # noqa: SIM117 - the ids are needed after the failure
        with tracking.parent_run("failures", "pipeline", {"prefect.flow_run_id": "abc"}) as parent:
            ids["parent"] = parent
            with tracking.stage_run(parent, "sft") as child:
                ids["child"] = child
                raise RuntimeError("boom")
    parent, child = ids["parent"], ids["child"]
    client = MlflowClient()
    assert client.get_run(child).info.status == "FAILED"
    assert client.get_run(child).data.tags["rlhf.error"] == "boom"
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(parent).data.tags["prefect.flow_run_id"] == "abc"
    assert mlflow.active_run() is None


def test_stage_run_in_another_thread_uses_the_explicit_parent(mlflow_store):
    seen = {}
    with tracking.parent_run("threads", "pipeline", {}) as parent:

        def stage():
            with tracking.stage_run(parent, "dpo") as child:
                seen["child"] = child

        worker = threading.Thread(target=stage)
        worker.start()
        worker.join()
    run = MlflowClient().get_run(seen["child"])
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"


def test_trainer_callback_logs_into_the_active_stage_run(mlflow_store, tmp_path, monkeypatch):
    from rlhf_core.data.synthetic import SyntheticTask

    # Settings a user might have exported: without the pipeline's guard the callback would start a nested run
    # (MLFLOW_NESTED_RUN) or resume and later end another run (MLFLOW_RUN_ID).
    monkeypatch.setenv("MLFLOW_NESTED_RUN", "TRUE")
    SyntheticTask().sft_dataset(16).save_to_disk(str(tmp_path / "sft"))
    spec = StageSpec(
        stage="sft",
        model="rlhf-tiny",
        train_data=str(tmp_path / "sft"),
        stage_dir=str(tmp_path / "s"),
        args={
            "max_steps": 3,
            "logging_steps": 1,
            "per_device_train_batch_size": 4,
            "save_strategy": "no",
            "disable_tqdm": True,
        },
    )
    with tracking.parent_run("callback", "pipeline", {}) as parent:
        other = MlflowClient().create_run(MlflowClient().get_run(parent).info.experiment_id).info.run_id
        monkeypatch.setenv("MLFLOW_RUN_ID", other)
        with tracking.stage_run(parent, "sft") as child:
            outcome = run_stage_training(spec)
            assert mlflow.active_run().info.run_id == child  # the callback did not end or replace it
    client = MlflowClient()
    losses = client.get_metric_history(child, "loss")
    assert [m.step for m in losses] == [1, 2, 3]
    assert client.get_run(child).data.params["max_steps"] == "3"  # TrainingArguments logged as params
    assert not client.get_metric_history(other, "loss")
    assert len(_runs("callback")) == 3  # parent, stage, the unrelated run: nothing else
    assert outcome.global_step == 3 and (tmp_path / "s" / "final" / "config.json").is_file()


def test_checkpoint_logged_once_as_pyfunc_model_with_explicit_requirements(mlflow_store, tmp_path):
    from rlhf_core.models.tiny import tiny_model_path

    with tracking.parent_run("models", "pipeline", {}) as parent, tracking.stage_run(parent, "sft"):
        uri = tracking.log_checkpoint_model(str(tiny_model_path()), kind="policy", max_new_tokens=4)
    requirements = mlflow.pyfunc.get_model_dependencies(uri)
    with open(requirements) as handle:
        pins = handle.read()
    assert "torch==" in pins and "transformers==" in pins and "torchvision" not in pins
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(["Name two fruits."])
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)


def test_ui_command():
    from pathlib import Path

    assert tracking.ui_command(f"sqlite:///{Path.cwd() / 'mlflow.db'}") == (
        "mlflow ui --backend-store-uri sqlite:///mlflow.db"
    )
    assert tracking.ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"


def test_logged_dataset_has_mlflows_own_schema_and_every_rows_count(mlflow_store, tmp_path):
    """The schema is inferred from the first rows only (speed); it must equal MLflow's inference over 10,000."""
    rows = [
        {"prompt": f"q{i}", "chosen": [{"role": "assistant", "content": "a" * i}], "score": float(i), "n": i}
        for i in range(tracking.SCHEMA_ROWS * 3)
    ]
    path = str(tmp_path / "pairs")
    Dataset.from_list(rows).save_to_disk(path)
    with (
        tracking.parent_run("datasets", "pipeline", {}) as parent,
        tracking.stage_run(parent, "dpo") as child,
    ):
        tracking.log_dataset(path, name="preference", digest="d" * 64, context="training")
    (logged,) = MlflowClient().get_run(child).inputs.dataset_inputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mlflows = mlflow.data.from_huggingface(load_from_disk(path), name="x", digest="0" * 32, source=path)
    assert logged.dataset.schema == mlflows.to_dict()["schema"]
    assert json.loads(logged.dataset.schema)["mlflow_colspec"]  # a real schema: one entry per column
    assert json.loads(logged.dataset.profile)["num_rows"] == len(rows)
