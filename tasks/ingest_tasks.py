"""The ingestion steps of `tasks.ingest` as Prefect tasks (retries, the validation report as an artifact, the
`preference-data.arrived` event), composed by `flows.ingest`. `tasks.ingest` itself needs no Prefect, so
``rlhf ingest`` without a Prefect API runs the same steps directly (`tasks.ingest.ingest_file`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger

from tasks.ingest import (
    PREFERENCE_DATA_ARRIVED,
    DatasetVersion,
    IngestPolicy,
    PreferenceDataRejected,
    ValidationReport,
    arrival_event_fields,
    claim_announcement,
    read_preference_file,
    release_announcement,
    validate_preference_rows,
    write_dataset_version,
)

__all__ = [
    "announce_dataset_version",
    "load_preference_file",
    "store_dataset_version",
    "validate_preferences",
]


def _retry_unless_rejected(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups (a remote store), never a file that is simply invalid."""
    try:
        state.result()
    except PreferenceDataRejected:
        return False
    except Exception:
        return True
    return True


@task(
    name="load-preference-file",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_retry_unless_rejected,
    timeout_seconds=600,
)
def load_preference_file(path_or_uri: str) -> list[Any]:
    return read_preference_file(path_or_uri)


@task(name="validate-preferences", timeout_seconds=600)
def validate_preferences(
    rows: list[Any], policy: IngestPolicy, source: str
) -> tuple[list[dict], ValidationReport]:
    kept, report = validate_preference_rows(rows, policy, source=source)
    create_markdown_artifact(
        markdown=report.to_markdown(),
        key="preference-validation",
        description=f"Validation of {source}",
    )
    get_run_logger().info(
        "%s: %d rows read, %d kept, problems %s -> %s",
        source,
        report.total_rows,
        report.kept_rows,
        report.counts() or "none",
        "accepted" if report.accepted else f"rejected ({report.reason})",
    )
    return kept, report


@task(name="store-dataset-version", timeout_seconds=600)
def store_dataset_version(
    rows: list[dict], report: ValidationReport, store_dir: str | None = None
) -> DatasetVersion:
    return write_dataset_version(rows, report, store_dir)


@task(name="announce-dataset-version", retries=2, retry_delay_seconds=2)
def announce_dataset_version(dataset: DatasetVersion) -> bool:
    """Emit `preference-data.arrived` unless this version was already announced; True when emitted."""
    version_dir = Path(dataset.uri).parent
    logger = get_run_logger()
    if not claim_announcement(version_dir):
        logger.info("Version %s was already announced: no event, no retraining.", dataset.version)
        return False
    try:
        event = emit_event(**arrival_event_fields(dataset))
    except BaseException:
        release_announcement(version_dir)
        raise
    if event is None:  # events are off (no API): let a later ingest announce it
        release_announcement(version_dir)
        logger.warning("Prefect events are disabled here: %s not announced.", PREFERENCE_DATA_ARRIVED)
        return False
    logger.info("Emitted %s for version %s (%s)", PREFERENCE_DATA_ARRIVED, dataset.version, dataset.uri)
    return True
