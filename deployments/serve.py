"""`rlhf serve`: register the pipeline and ingestion deployments with a Prefect API and run their flows here.

Served deployments run in this process's machine (a Prefect "runner"); for runs on another machine (a GPU box)
use the work-pool deployments of `deployments/prefect.yaml` and a worker there.

Deployments:
- ``rlhf-pipeline/rlhf-pipeline``: the pipeline with its `PipelineConfig` form (the served YAML as defaults),
  an optional cron schedule, and the retraining trigger on `preference-data.arrived`;
- ``ingest-preferences/ingest-preferences``: ingest one file (path or URI as the parameter);
- ``watch-preference-folder/watch-preference-folder``: when a folder is given, ingest what is dropped into it
  on an interval schedule.
"""

from __future__ import annotations

import datetime
import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prefect.schedules import Cron, Interval
from prefect.types.entrypoint import EntrypointType

from deployments.triggers import retrain_trigger

PIPELINE_DEPLOYMENT = "rlhf-pipeline"
INGEST_DEPLOYMENT = "ingest-preferences"
WATCH_DEPLOYMENT = "watch-preference-folder"


@dataclass
class ServeOptions:
    """What `rlhf serve` registers (CLI flags map one to one)."""

    config_path: str
    overrides: list[str] = field(default_factory=list)
    cron: str | None = None  # periodic retraining; off unless given
    timezone: str = "UTC"
    retrain_on_new_data: bool = True
    watch_folder: str | None = None
    watch_interval_seconds: float = 60.0
    store_dir: str | None = None
    max_concurrent_runs: int | None = None
    tags: list[str] = field(default_factory=lambda: ["rlhf"])
    # "module:function" of the pipeline flow; another flow taking `config: PipelineConfig` can be served.
    flow_ref: str = "flows.pipeline:rlhf_pipeline"


def load_flow(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise ValueError(f"flow reference {ref!r}: expected 'module:function'")
    return getattr(importlib.import_module(module_name), attr)


def pipeline_deployment(options: ServeOptions) -> Any:
    """The pipeline's RunnerDeployment: parameters = the served config, schedule and trigger per options."""
    from tasks.config import load_config

    pipeline = load_flow(options.flow_ref)

    config = load_config(options.config_path, options.overrides).model_dump(mode="json")
    schedules = [Cron(options.cron, timezone=options.timezone)] if options.cron else None
    triggers = [retrain_trigger(config)] if options.retrain_on_new_data else None
    return pipeline.to_deployment(
        name=PIPELINE_DEPLOYMENT,
        parameters={"config": config},
        schedules=schedules,
        triggers=triggers,
        concurrency_limit=options.max_concurrent_runs,
        tags=options.tags,
        description=f"RLHF pipeline on {options.config_path} (edit any field in the run form).",
        # Module path: the runner imports the flow wherever `rlhf serve` was started from.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def ingestion_deployments(options: ServeOptions) -> list[Any]:
    """The ingest-one-file deployment, plus the scheduled folder watcher when a folder is configured."""
    from flows.ingest import ingest_preferences, watch_preference_folder

    store = {"store_dir": options.store_dir} if options.store_dir else {}
    deployments = [
        ingest_preferences.to_deployment(
            name=INGEST_DEPLOYMENT,
            parameters=store,
            tags=options.tags,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    ]
    if options.watch_folder:
        interval = datetime.timedelta(seconds=options.watch_interval_seconds)
        deployments.append(
            watch_preference_folder.to_deployment(
                name=WATCH_DEPLOYMENT,
                parameters={"folder": options.watch_folder, **store},
                schedules=[Interval(interval)],
                tags=options.tags,
                # A slow tick must not overlap the next one (the ledger is one file).
                concurrency_limit=1,
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def build_deployments(options: ServeOptions) -> list[Any]:
    return [pipeline_deployment(options), *ingestion_deployments(options)]


def serve(options: ServeOptions, *, limit: int | None = None) -> None:
    """Register the deployments and run their flow runs until interrupted (Ctrl+C)."""
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(options), limit=limit)


def _schedule_text(schedule: Any) -> str:
    if getattr(schedule, "cron", None):
        return f"cron {schedule.cron!r} ({schedule.timezone or 'UTC'})"
    if getattr(schedule, "interval", None):
        return f"every {schedule.interval.total_seconds():g} s"
    return str(schedule)


def describe(deployments: Iterable[Any]) -> str:
    """One line per deployment: name, schedules, triggers (printed by `rlhf serve --dry-run`)."""
    lines = []
    for d in deployments:
        schedules = ", ".join(_schedule_text(s.schedule) for s in d.schedules or []) or "none"
        triggers = ", ".join(sorted(e for t in d.triggers or [] for e in t.expect)) or "none"
        lines.append(f"{d.flow_name}/{d.name}: schedules {schedules}; triggers {triggers}")
    return "\n".join(lines)
