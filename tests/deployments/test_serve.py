"""What `rlhf serve` registers: the pipeline's form and defaults, schedule, trigger, the ingestion deployments."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from deployments.serve import ServeOptions, build_deployments, describe
from tasks.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = str(ROOT / "configs" / "default.yaml")


@pytest.fixture(scope="module")
def plain():
    return {d.name: d for d in build_deployments(ServeOptions(config_path=DEFAULT))}


def test_pipeline_deployment_offers_the_config_as_its_form(plain):
    pipeline = plain["rlhf-pipeline"]
    expected = load_config(DEFAULT).model_dump(mode="json")
    assert pipeline.parameters == {"config": expected}
    schema = pipeline._parameter_openapi_schema.model_dump()
    assert schema["required"] == ["config"]
    config_ref = schema["properties"]["config"]["$ref"].rsplit("/", 1)[-1]
    assert config_ref == "PipelineConfig"
    assert {"model", "data", "stages", "evaluation", "tracking"} <= set(
        schema["definitions"]["PipelineConfig"]["properties"]
    )
    assert pipeline.enforce_parameter_schema
    assert pipeline.entrypoint == "flows.pipeline.rlhf_pipeline"  # importable wherever serve runs


def test_by_default_no_schedule_and_one_retraining_trigger(plain):
    pipeline = plain["rlhf-pipeline"]
    assert not pipeline.schedules
    (trigger,) = pipeline.triggers
    assert trigger.expect == {"preference-data.arrived"}
    assert trigger.parameters["config"]["data"]["preference"] == {
        "source": "file",
        "path": "{{ event.payload.uri }}",
    }
    assert set(plain) == {"rlhf-pipeline", "ingest-preferences"}  # no watcher without a folder


def test_options_add_a_cron_schedule_and_a_folder_watcher(tmp_path):
    options = ServeOptions(
        config_path=DEFAULT,
        overrides=["stages.sft.args.max_steps=3"],
        cron="0 3 * * 1",
        timezone="Europe/Paris",
        retrain_on_new_data=False,
        watch_folder=str(tmp_path),
        watch_interval_seconds=30,
        store_dir=str(tmp_path / "store"),
        max_concurrent_runs=2,
    )
    built = {d.name: d for d in build_deployments(options)}
    pipeline = built["rlhf-pipeline"]
    assert pipeline.parameters["config"]["stages"]["sft"]["args"]["max_steps"] == 3
    (schedule,) = pipeline.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * 1", "Europe/Paris")
    assert not pipeline.triggers
    assert pipeline.concurrency_limit == 2
    watcher = built["watch-preference-folder"]
    assert watcher.parameters == {"folder": str(tmp_path), "store_dir": str(tmp_path / "store")}
    assert watcher.schedules[0].schedule.interval == datetime.timedelta(seconds=30)
    assert watcher.concurrency_limit == 1
    assert built["ingest-preferences"].parameters == {"store_dir": str(tmp_path / "store")}
    text = describe(built.values())
    assert "rlhf-pipeline/rlhf-pipeline: schedules cron '0 3 * * 1' (Europe/Paris); triggers none" in text
    assert "watch-preference-folder/watch-preference-folder: schedules every 30 s" in text
