"""The retraining trigger's parameters, rendered from an event by Prefect's own server-side code."""

from __future__ import annotations

import datetime
import json
import uuid
from pathlib import Path

import pytest
from deployment_templates import render
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.utilities.schema_tools.hydration import InvalidJinja

from deployments.triggers import retrain_config, retrain_trigger
from tasks.config import PipelineConfig, load_config
from tasks.ingest import IngestPolicy, arrival_event_fields, validate_preference_rows, write_dataset_version

ROOT = Path(__file__).resolve().parents[2]


def arrival_event(tmp_path: Path) -> ReceivedEvent:
    """The event ingestion emits for a real stored version."""
    rows = [{"prompt": "Name a colour.", "chosen": "blue", "rejected": "seven"}]
    kept, report = validate_preference_rows(rows, IngestPolicy(), source="new.jsonl")
    fields = arrival_event_fields(write_dataset_version(kept, report, tmp_path / "store"))
    return ReceivedEvent(
        event=fields["event"],
        resource=fields["resource"],
        payload=fields["payload"],
        id=fields["id"],
        occurred=datetime.datetime.now(datetime.timezone.utc),
    )


def test_rendered_trigger_parameters_are_the_served_config_on_the_new_data(tmp_path):
    base = load_config(ROOT / "configs" / "default.yaml").model_dump(mode="json")
    event = arrival_event(tmp_path)
    trigger = retrain_trigger(base)
    assert trigger.expect == {"preference-data.arrived"}
    assert trigger.match.matches(event.resource)

    rendered = render(trigger.parameters, event)
    config = PipelineConfig.model_validate(rendered["config"])  # what the flow run validates
    assert config.data.preference.source == "file"
    assert config.data.preference.path == event.payload["uri"]
    assert config.name == f"default-data-{event.payload['version']}"
    # everything else is the served config, unchanged
    expected = {
        **base,
        "name": config.name,
        "data": {**base["data"], "preference": rendered["config"]["data"]["preference"]},
    }
    assert rendered["config"] == json.loads(json.dumps(expected))


def test_ppo_judged_by_the_synthetic_task_keeps_its_synthetic_prompts():
    base = {
        "name": "n",
        "data": {"preference": {"source": "synthetic", "num_examples": 8}},
        "stages": {"ppo": {"reward": "judge"}},
    }
    config = retrain_config(base)
    assert config["data"]["ppo"] == {"source": "synthetic", "num_examples": 8}
    assert config["data"]["preference"]["path"] == "{{ event.payload.uri }}"
    own_prompts = {**base, "data": {**base["data"], "ppo": {"source": "synthetic", "num_examples": 4}}}
    assert retrain_config(own_prompts)["data"]["ppo"] == {"source": "synthetic", "num_examples": 4}
    reward_model = {**base, "stages": {"ppo": {"reward": "reward_model"}}}
    assert "ppo" not in retrain_config(reward_model)["data"]  # PPO may learn from the new prompts
    assert base["data"] == {"preference": {"source": "synthetic", "num_examples": 8}}  # input untouched


def test_trigger_survives_the_round_trip_through_the_api_schema():
    trigger = retrain_trigger({"name": "x"})
    again = DeploymentEventTrigger.model_validate(json.loads(trigger.model_dump_json()))
    assert again.parameters == trigger.parameters and again.expect == trigger.expect
    deployment_id = uuid.uuid4()
    again.set_deployment_id(deployment_id)
    automation = again.as_automation()  # what serve/deploy registers with the API
    assert automation.name == "retrain-on-new-preference-data"
    action = automation.actions[0]
    assert (action.type, action.deployment_id, action.parameters) == (
        "run-deployment",
        deployment_id,
        trigger.parameters,
    )


def test_an_event_without_the_uri_fails_the_action_instead_of_starting_a_run(tmp_path):
    event = arrival_event(tmp_path)
    event.payload = {"version": "v"}
    parameters = {"config": {"data": {"preference": {"source": "file", "path": "{{ event.payload.uri }}"}}}}
    with pytest.raises(InvalidJinja, match="Undefined"):  # the action fails (logged by the server); no run
        render(parameters, event)
