"""The retraining trigger: `preference-data.arrived` -> a pipeline run on the new dataset version.

Prefect renders Jinja templates in a trigger's parameters from the triggering event on the server
(`RunDeployment` action), so the run's `config` is the served config with the preference data source
replaced by the new version's file and the run name carrying the version.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from prefect.events import DeploymentEventTrigger

from tasks.ingest import PREFERENCE_DATA_ARRIVED
from tasks.stage_registry import STAGES

DATASET_URI_TEMPLATE = "{{ event.payload.uri }}"
DATASET_VERSION_TEMPLATE = "{{ event.payload.version }}"
DATASET_RESOURCE_PATTERN = "rlhf.dataset.preferences.*"


def retrain_config(base_config: Mapping[str, Any]) -> dict[str, Any]:
    """`base_config` (a PipelineConfig as JSON) with the new dataset templated in.

    - ``data.preference`` becomes the ingested file (reward model and DPO read it unless they name their own);
    - ``name`` gets ``-data-<version>`` so the run, its MLflow runs and the registry show which data made it;
    - when an online stage (PPO) scores rollouts with the synthetic judge and takes its prompts from
      ``data.preference``, those prompts are pinned to the old source, since the judge only knows the synthetic
      task's prompts.
    """
    config = copy.deepcopy(dict(base_config))
    data = dict(config.get("data") or {})
    previous = data.get("preference")
    for name, stage in STAGES.items():
        block = (config.get("stages") or {}).get(name) or {}
        judged = stage.scored_online and block.get("enabled", True) and block.get("reward") == "judge"
        if judged and data.get(name) is None and previous:
            data[name] = previous
    data["preference"] = {"source": "file", "path": DATASET_URI_TEMPLATE}
    config["data"] = data
    config["name"] = f"{config.get('name') or 'rlhf'}-data-{DATASET_VERSION_TEMPLATE}"
    return config


def retrain_trigger(
    base_config: Mapping[str, Any], *, parameter: str = "config", enabled: bool = True
) -> DeploymentEventTrigger:
    """A deployment trigger that starts one pipeline run per `preference-data.arrived` event."""
    return DeploymentEventTrigger(
        name="retrain-on-new-preference-data",
        description="Retrain when ingestion announces a new preference dataset version.",
        enabled=enabled,
        expect={PREFERENCE_DATA_ARRIVED},
        match={"prefect.resource.id": DATASET_RESOURCE_PATTERN},
        # One run per event, as soon as it is seen.
        threshold=1,
        parameters={parameter: retrain_config(base_config)},
    )
