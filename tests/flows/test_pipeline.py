"""The whole pipeline flow on a tiny config, under Prefect's test harness: the MLflow structure it leaves, the
registry, caching of unchanged stages, and a failing stage failing the flow and its runs."""

from __future__ import annotations

import re
import shutil

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import rlhf_pipeline
from tasks.config import config_from_mapping

pytestmark = pytest.mark.slow

TRAINING = ("sft", "reward", "dpo", "kto", "ppo", "grpo")
# The opt-in stages, on as small as the others; GRPO scored by the reward model trained above (the judge and a
# "module:function" are covered in tests/tasks/test_stage_registry.py).
OPT_IN = {
    "kto": {"enabled": True, "args": {"max_steps": 2, "per_device_train_batch_size": 8, "max_length": 48,
                                      "logging_steps": 1, "save_steps": 1, "disable_tqdm": True}},
    "grpo": {"enabled": True, "reward": "reward_model",
             "args": {"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 4,
                      "max_completion_length": 6, "gradient_checkpointing": False, "logging_steps": 1,
                      "save_steps": 1, "disable_tqdm": True}},
}  # fmt: skip


def _children(parent_id: str) -> dict[str, mlflow.entities.Run]:
    parent = MlflowClient().get_run(parent_id)
    runs = MlflowClient().search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.info.run_name: run for run in runs}


def _artifacts(run_id: str, folder: str = "") -> set[str]:
    return {a.path for a in MlflowClient().list_artifacts(run_id, folder)}


@pytest.fixture(scope="module")
def first_run(prefect_harness, tiny_config):
    return rlhf_pipeline(config_from_mapping(tiny_config(stages=OPT_IN)))


def test_flow_parameter_is_the_pydantic_config():
    schema = rlhf_pipeline.parameters.model_dump()
    assert schema["properties"]["config"]["$ref"].endswith("/PipelineConfig")
    assert "StagesSettings" in schema["definitions"] and "refresh" in schema["properties"]
    # the Prefect UI form offers every stage; the opt-in ones are off until switched on
    stages = schema["definitions"]["StagesSettings"]["properties"]
    assert list(stages) == ["sft", "reward", "dpo", "kto", "ppo", "grpo"]
    for name in ("kto", "grpo"):
        block = schema["definitions"][stages[name]["$ref"].rpartition("/")[2]]["properties"]
        assert block["enabled"]["default"] is False and block["args"]["type"] == "object", name
    grpo = schema["definitions"]["GRPOStage"]["properties"]["reward"]
    assert grpo["type"] == "string" and "'module:function'" in grpo["description"]


def test_parent_run_and_one_child_per_stage(first_run):
    client = MlflowClient()
    parent = client.get_run(first_run.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tiny"
    assert parent.data.tags["prefect.flow_run_id"] and parent.data.tags["prefect.flow_run_name"]
    assert "pipeline_config.json" in _artifacts(parent.info.run_id)
    children = _children(parent.info.run_id)
    assert set(children) == {"prepare_data", *TRAINING, "evaluate"}
    assert all(run.info.status == "FINISHED" for run in children.values())
    for stage in TRAINING:
        run = children[stage]
        assert run.data.tags["rlhf.digest"] == first_run.stages[stage].digest
        assert {"samples/before.json", "samples/after.json"} <= _artifacts(run.info.run_id, "samples")
        assert "stage_config.json" in _artifacts(run.info.run_id)
        assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest
        # step metrics from the trainer's MLflow callback, once per logging step
        metric = {"ppo": "objective/scores", "grpo": "reward"}.get(stage, "loss")
        history = client.get_metric_history(run.info.run_id, metric)
        assert history and len({m.step for m in history}) == len(history), stage
        # the final checkpoint, logged once as a model of this run
        model = mlflow.get_logged_model(first_run.stages[stage].model_uri.removeprefix("models:/"))
        assert model.source_run_id == run.info.run_id
    assert len(client.search_logged_models([parent.info.experiment_id])) == len(TRAINING)
    grpo = children["grpo"]  # and the completions it sampled and scored while training, as a table
    table = client.load_table(grpo.info.experiment_id, "samples/training.json", run_ids=[grpo.info.run_id])
    assert len(table) == 4 and {"step", "prompt", "completion", "advantage"} <= set(table.columns)


def test_samples_table_columns(first_run):
    run = _children(first_run.parent_run_id)["dpo"]
    table = MlflowClient().load_table(run.info.experiment_id, "samples/after.json", run_ids=[run.info.run_id])
    assert list(table.columns)[:4] == ["prompt", "response", "judge_score", "reward_score"]
    assert (
        len(table) == 2 and table["judge_score"].between(0, 1).all() and table["reward_score"].notna().all()
    )


def test_evaluation_on_the_parent_and_the_stage_table(first_run):
    parent = MlflowClient().get_run(first_run.parent_run_id)
    for policy in ("base", "sft", "dpo", "kto", "ppo", "grpo"):
        for metric in ("judge_score", "reward_score", "win_rate", "kl_to_ref"):
            assert f"{policy}_{metric}" in parent.data.metrics, (policy, metric)
    assert parent.data.metrics["sft_kl_to_ref"] == 0.0 and parent.data.metrics["sft_win_rate"] == 0.5
    assert [row.stage for row in first_run.rows] == ["prepare_data", "base", *TRAINING, "evaluate"]
    assert first_run.wall_seconds > first_run.work_seconds > first_run.train_seconds > 0
    assert "stage_comparison.png" in _artifacts(first_run.parent_run_id)  # the same comparison as a figure


def test_final_policy_registered_as_champion(first_run):
    registration = first_run.registration
    assert registration is not None and registration.policy in ("dpo", "kto", "ppo", "grpo")
    assert registration.version == "1" and registration.champion_moved
    version = MlflowClient().get_model_version_by_alias("tiny-policy", "champion")
    assert str(version.version) == "1" and version.tags["pipeline_run_id"] == first_run.parent_run_id


def test_prefect_artifacts(first_run):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read(key):
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    import asyncio

    # Other flow tests in this Prefect session write artifacts under the same keys: pick this run's.
    links = [a for a in asyncio.run(read("mlflow-parent-run")) if first_run.parent_run_id in a.data]
    assert len(links) == 1
    (table,) = [a for a in asyncio.run(read("rlhf-stage-table")) if a.flow_run_id == links[0].flow_run_id]
    assert (
        "| stage | judge score | reward-model score | win rate vs SFT | KL to reference | wall time (s) |"
        in table.data
    )
    assert all(f"| {stage} |" in table.data for stage in ("kto", "ppo", "grpo"))


def _prefect_logs(flow_run_id: str) -> list[str]:
    import asyncio
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # logs are sent in batches

    async def read():
        async with get_client() as client:
            flow_runs = LogFilterFlowRunId(any_=[UUID(flow_run_id)])
            return await client.read_logs(log_filter=LogFilter(flow_run_id=flow_runs))

    return [log.message for log in asyncio.run(read())]


def test_flow_run_is_named_after_the_config_and_each_stage_logs_its_story(first_run):
    parent = MlflowClient().get_run(first_run.parent_run_id)
    digest = parent.data.tags["rlhf.config_digest"]
    assert parent.data.tags["prefect.flow_run_name"] == f"tiny-{digest[:8]}"
    messages = _prefect_logs(parent.data.tags["prefect.flow_run_id"])
    for stage in TRAINING:
        result = first_run.stages[stage]
        (start,) = [m for m in messages if m.startswith(f"{stage}: starts from ")]
        (end,) = [m for m in messages if m.startswith(f"{stage}: done at step {result.global_step} ")]
        assert result.run_id in start and result.run_id in end  # the MLflow run link
        assert " rows from synthetic(" in start and re.search(
            r", \d+ (steps?|episodes|epochs) \(batch ", start
        )
        assert "final metrics: " in end and "train_runtime=" in end
    for stage in ("ppo", "grpo"):
        (start,) = [m for m in messages if m.startswith(f"{stage}: starts from ")]
        assert "rollouts scored by the reward model " + first_run.stages["reward"].model_dir in start


def test_unchanged_stage_is_reused_and_a_deleted_checkpoint_retrained(first_run, tiny_config):
    only_sft = config_from_mapping(
        tiny_config(
            stages={"reward": {"enabled": False}, "dpo": {"enabled": False}, "ppo": {"enabled": False}}
        )
    )
    again = rlhf_pipeline(only_sft)
    sft = again.stages["sft"]
    assert sft.digest == first_run.stages["sft"].digest
    assert sft.run_id == first_run.stages["sft"].run_id  # the cached result: no training this time
    assert set(_children(again.parent_run_id)) == {"prepare_data", "evaluate"}
    assert MlflowClient().get_run(again.parent_run_id).data.tags["rlhf.sft.cached_from_run"] == sft.run_id
    assert again.registration is None  # no preference stage ran: nothing to register

    shutil.rmtree(sft.model_dir)
    third = rlhf_pipeline(only_sft)
    assert third.stages["sft"].parent_run_id == third.parent_run_id and third.stages["sft"].exists()
    assert "sft" in _children(third.parent_run_id)


def test_failing_stage_fails_the_flow_and_its_runs(first_run, tiny_config, monkeypatch):
    from tasks.training import run as training

    build = training.build_trainer

    def explode(spec, args):
        if spec.stage == "dpo":
            raise RuntimeError("dpo exploded")
        return build(spec, args)

    monkeypatch.setattr(training, "build_trainer", explode)
    # another DPO setting: a new digest, so the stage really runs; retries off so it fails at once
    config = config_from_mapping(
        tiny_config(
            stages={"dpo": {"retries": 0, "args": {"max_steps": 3, "beta": 0.2}}, "ppo": {"enabled": False}}
        )
    )
    state = rlhf_pipeline(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match="dpo exploded"):
        state.result()
    experiment = MlflowClient().get_experiment_by_name("tiny")
    (parent,) = MlflowClient().search_runs(
        [experiment.experiment_id],
        "tags.`rlhf.role` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert parent.info.status == "FAILED"
    dpo = _children(parent.info.run_id)["dpo"]
    assert dpo.info.status == "FAILED" and dpo.data.tags["rlhf.error"] == "dpo exploded"
    assert "evaluate" not in _children(parent.info.run_id)
