"""deployments/prefect.yaml: every deployment loads its flow, its parameters fit the flow's form, its schedule
and trigger are what Prefect accepts, and the trigger's templates render to a valid pipeline config."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml
from deployment_templates import render
from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron
from prefect.server.events.schemas.events import ReceivedEvent
from pydantic import TypeAdapter

from tasks.config import PipelineConfig
from tasks.ingest import IngestPolicy, arrival_event_fields, validate_preference_rows, write_dataset_version

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict]:
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    return {d["name"]: d for d in spec["deployments"]}


def test_the_deployments_and_their_pools(deployments, tmp_path):
    assert set(deployments) == {
        "rlhf-pipeline",
        "rlhf-pipeline-gpu",
        "rlhf-pipeline-k8s",
        "ingest-preferences",
        "watch-preference-folder",
    }
    queues = {
        name: (d["work_pool"]["name"], d["work_pool"]["work_queue_name"]) for name, d in deployments.items()
    }
    assert queues == {
        "rlhf-pipeline": ("rlhf", "default"),
        "rlhf-pipeline-gpu": ("rlhf", "gpu"),
        "rlhf-pipeline-k8s": ("rlhf-k8s", "default"),
        "ingest-preferences": ("rlhf", "default"),
        "watch-preference-folder": ("rlhf", "default"),
    }
    entrypoint = (ROOT / "docker" / "worker-entrypoint.sh").read_text()
    assert 'pool="${RLHF_WORK_POOL:-rlhf}"' in entrypoint
    assert "deployments/prefect.yaml" in entrypoint


def test_entrypoints_load_the_flows_and_parameters_fit_them(deployments):
    for name, spec in deployments.items():
        path, _, function = spec["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{function}")
        assert spec["enforce_parameter_schema"] is True, name
        required = set(flow.parameters.required or [])
        given = set(spec.get("parameters") or {})
        if name != "ingest-preferences":  # the file to ingest is typed into the run form
            assert required <= given, (name, required - given)
        assert given <= set(flow.parameters.properties), (name, given)
    for name in ("rlhf-pipeline", "rlhf-pipeline-gpu", "rlhf-pipeline-k8s"):
        PipelineConfig.model_validate(deployments[name]["parameters"]["config"])


def test_cron_schedule_is_valid_and_off_by_default(deployments):
    (schedule,) = deployments["rlhf-pipeline"]["schedules"]
    assert schedule["active"] is False
    Cron(schedule["cron"], timezone=schedule["timezone"])  # raises on a bad cron string
    (watch,) = deployments["watch-preference-folder"]["schedules"]
    assert watch["interval"] > 0 and watch["active"] is True
    assert "schedules" not in deployments["rlhf-pipeline-gpu"]


def test_trigger_is_a_valid_deployment_trigger_rendering_to_a_valid_config(deployments, tmp_path):
    (raw,) = deployments["rlhf-pipeline"]["triggers"]
    trigger = TypeAdapter(DeploymentTriggerTypes).validate_python(raw)
    assert trigger.expect == {"preference-data.arrived"} and trigger.enabled

    rows = [{"prompt": "Name a colour.", "chosen": "blue", "rejected": "seven"}]
    kept, report = validate_preference_rows(rows, IngestPolicy(), source="new.jsonl")
    fields = arrival_event_fields(write_dataset_version(kept, report, tmp_path))
    event = ReceivedEvent(**fields, occurred=datetime.datetime.now(datetime.timezone.utc))
    assert trigger.match.matches(event.resource)

    config = PipelineConfig.model_validate(render(trigger.parameters, event)["config"])
    assert config.data.preference.path == fields["payload"]["uri"]
    assert config.name == f"default-data-{fields['payload']['version']}"


def test_the_run_form_and_the_retraining_run_are_configs_default_yaml(deployments, tmp_path):
    """The form a UI user edits is the embedded default, and retraining keeps it but for the new data."""
    default = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    for name in ("rlhf-pipeline", "rlhf-pipeline-gpu"):
        assert deployments[name]["parameters"]["config"] == default, name
    on_ray = deployments["rlhf-pipeline-k8s"]["parameters"]["config"]
    assert on_ray["scale_out"]["backend"] == "ray"
    assert {**on_ray, "name": "default", "scale_out": default["scale_out"]} == default
    (raw,) = deployments["rlhf-pipeline"]["triggers"]
    retrain = raw["parameters"]["config"]
    assert retrain["data"]["preference"]["source"] == "file"
    unchanged = {**retrain, "name": default["name"], "data": {**retrain["data"], "preference": None}}
    assert unchanged == {**default, "data": {**default["data"], "preference": None}}
