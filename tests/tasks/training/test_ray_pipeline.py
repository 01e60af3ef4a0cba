"""The demo pipeline with `scale_out.backend: ray`: every training stage a Ray Train job on 2 workers of the local
Ray head. The flow completes with the MLflow structure of a local run (a parent, one child per stage, the workers
start no runs), each step metric is logged once (rank 0 alone), and each stage's weights equal one process
training the same stage spec on the same global batch (within 1e-5 after a few SGD steps), PPO included: its
rollouts are sampled per episode, not per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from scale_out_helpers import SGD, max_weight_difference

from tasks.config import config_from_mapping
from tasks.stage_specs import StageSpec
from tasks.training.run import run_stage_training

pytestmark = pytest.mark.slow

TRAINING = ("sft", "reward", "dpo", "ppo")
TOLERANCE = 1e-5
SFT_LIKE = {**SGD, "max_steps": 2, "per_device_train_batch_size": 4}
# PPO's batch_size is per process: 2 workers x 2 prompts = the global batch of 4 the 1-process reference takes.
# A rate at which a few SGD steps move the policy well past the tolerance (PPO's own default is 3e-6).
PPO = {"max_steps": 2, "batch_size": 2, "response_length": 6, "optim": "sgd", "learning_rate": 0.05,
       "lr_scheduler_type": "constant", "logging_steps": 1, "disable_tqdm": True}  # fmt: skip
ONE_PROCESS = {"sft": {"per_device_train_batch_size": 8}, "reward": {"per_device_train_batch_size": 8},
               "dpo": {"per_device_train_batch_size": 8}, "ppo": {"batch_size": 4}}  # fmt: skip


@pytest.fixture(scope="module")
def ray_run(prefect_harness, ray_head, tiny_config):
    from flows.pipeline import rlhf_pipeline

    stages = {name: {"args": dict(SFT_LIKE)} for name in ("sft", "reward", "dpo")} | {"ppo": {"args": PPO}}
    raw = tiny_config(stages=stages, scale_out={"backend": "ray", "address": ray_head, "num_workers": 2})
    raw["name"] = "tiny-ray"
    return rlhf_pipeline(config_from_mapping(raw))


@pytest.fixture(scope="module")
def references(ray_run, tmp_path_factory) -> dict[str, Any]:
    """Each stage once more in this process, from the spec (and inputs) its Ray job had, the per-device batch
    doubled; its MLflow run goes to a store of its own. {"uri": that store, stage: (final folder, run id)}."""
    folder = tmp_path_factory.mktemp("one-process")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous, found = mlflow.get_tracking_uri(), {"uri": uri}
    mlflow.set_tracking_uri(uri)
    try:
        for stage in TRAINING:
            spec = StageSpec.model_validate_json((_stage_dir(ray_run, stage) / "spec.json").read_text())
            outcome = run_stage_training(
                spec.model_copy(update={"stage_dir": str(folder / stage), "mlflow_run_id": None,
                                        "tracking_uri": None, "args": {**spec.args, **ONE_PROCESS[stage]}})
            )  # fmt: skip
            (run,) = MlflowClient(uri).search_runs(
                [e.experiment_id for e in MlflowClient(uri).search_experiments()],
                f"attributes.run_name = '{stage}'",
            )
            found[stage] = (Path(outcome.final_dir), run.info.run_id)
    finally:
        mlflow.set_tracking_uri(previous)
    return found


def _stage_dir(run: Any, stage: str) -> Path:
    return Path(run.stages[stage].model_dir).parent


def _children(parent_id: str) -> dict[str, mlflow.entities.Run]:
    client = MlflowClient()
    experiment = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.info.run_name: run for run in runs}


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_ray_pipeline_has_the_local_mlflow_structure_and_logs_each_step_once(ray_run, references):
    client, local = MlflowClient(), MlflowClient(references["uri"])
    parent = client.get_run(ray_run.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = _children(parent.info.run_id)
    assert set(children) == {"prepare_data", *TRAINING, "evaluate"}
    assert all(run.info.status == "FINISHED" for run in children.values())
    # the Ray workers started no runs of their own: the parent and its children are all there is
    assert len(client.search_runs([parent.info.experiment_id])) == 1 + len(children)
    assert all(f"{policy}_judge_score" in parent.data.metrics for policy in ("base", "sft", "dpo", "ppo"))
    for stage in TRAINING:
        run, result = children[stage], ray_run.stages[stage]
        assert result.global_step == 2 and run.data.tags["rlhf.digest"] == result.digest
        assert (_stage_dir(ray_run, stage) / "ray").is_dir()  # it ran as a Ray Train job
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert {"samples/before.json", "samples/after.json"} <= artifacts
        model = mlflow.get_logged_model(result.model_uri.removeprefix("models:/"))
        assert model.source_run_id == run.info.run_id
        step_metric = "objective/scores" if stage == "ppo" else "loss"
        assert _steps(client, run.info.run_id, step_metric) == [1, 2], stage
        # every trainer metric at the steps one process logs it (2 ranks logging would double each value)
        local_run = local.get_run(references[stage][1])
        assert local_run.data.metrics.keys() <= run.data.metrics.keys(), stage
        for key in local_run.data.metrics:
            assert _steps(client, run.info.run_id, key) == _steps(local, local_run.info.run_id, key), (
                stage,
                key,
            )


def test_each_ray_stage_trains_like_one_process_with_the_same_global_batch(ray_run, references, tmp_path):
    differences, moved = {}, {}
    for stage in TRAINING:
        spec = StageSpec.model_validate_json((_stage_dir(ray_run, stage) / "spec.json").read_text())
        ray_dir = Path(ray_run.stages[stage].model_dir)
        extra = ("value_head.safetensors",) if stage == "ppo" else ()
        differences[stage] = max_weight_difference(ray_dir, references[stage][0], extra=extra)
        moved[stage] = max_weight_difference(ray_dir, _start(spec, tmp_path), shared_only=True)
    print("2 Ray workers vs 1 process, max |w| difference: " + _line(differences))
    print("moved from the stage's starting weights, max |w|: " + _line(moved))
    assert all(value < TOLERANCE for value in differences.values()), differences
    assert all(value > 100 * TOLERANCE for value in moved.values()), moved


def _start(spec: StageSpec, tmp_path: Path) -> Path:
    """The stage's starting weights as a folder (the base model is a name: saved once)."""
    if Path(spec.model).is_dir():
        return Path(spec.model)
    from rlhf_core.models.loading import load_causal_lm

    folder = tmp_path / "start"
    if not folder.is_dir():
        load_causal_lm(spec.model).save_pretrained(str(folder))
    return folder


def _line(values: dict[str, float]) -> str:
    return ", ".join(f"{stage} {value:.2e}" for stage, value in values.items())
