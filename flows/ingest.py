"""Flows that bring new preference data in: ingest one file, or watch a folder on a schedule.

`ingest_preferences` validates a file, stores it as a content-addressed dataset version and emits
`preference-data.arrived` (the retraining trigger of the pipeline deployment). Ingesting content that is
already stored is a no-op: no new version, no event, no retraining.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from tasks.ingest import SUPPORTED_SUFFIXES, IngestPolicy, PreferenceDataRejected, default_store_dir
from tasks.ingest_tasks import (
    announce_dataset_version,
    load_preference_file,
    store_dataset_version,
    validate_preferences,
)
from tasks.tracking.check import mask_credentials

WATCH_LEDGER = ".watch-ledger.json"


@flow(name="ingest-preferences", log_prints=True)
def ingest_preferences(
    path_or_uri: str,
    store_dir: str | None = None,
    policy: IngestPolicy | None = None,
) -> dict[str, Any]:
    """Validate a preference file (JSONL / JSON / Parquet, local or fsspec URI) and store it as a version.

    Returns the version (`version`, `sha256`, `uri`, `rows`, `created`, `announced`). Raises
    `PreferenceDataRejected` (the flow run fails; the validation report artifact says why) when the file
    is rejected; nothing is written then.
    """
    policy = policy or IngestPolicy()
    source = mask_credentials(path_or_uri)
    rows = load_preference_file(path_or_uri)
    kept, report = validate_preferences(rows, policy, source)
    if not report.accepted:
        raise PreferenceDataRejected(f"{source} rejected: {report.reason}")
    dataset = store_dataset_version(kept, report, store_dir)
    announced = announce_dataset_version(dataset)
    logger = get_run_logger()
    if dataset.created:
        logger.info(
            "New preference dataset version %s: %d rows at %s", dataset.version, dataset.rows, dataset.uri
        )
    else:
        logger.info("Content already stored as version %s: nothing new written.", dataset.version)
    return {**dataset.to_dict(), "announced": announced}


def _file_signature(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_ledger(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_ledger(path: Path, ledger: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(ledger, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def new_files(folder: Path, ledger: dict[str, Any], settle_seconds: float) -> list[Path]:
    """Files in `folder` not yet seen with this size and mtime, and not still being written."""
    now = time.time()
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in SUPPORTED_SUFFIXES or not path.is_file():
            continue
        if now - path.stat().st_mtime < settle_seconds:
            continue  # a copy in progress; the next tick picks it up
        seen = ledger.get(str(path.resolve()), {})
        if {k: seen.get(k) for k in ("size", "mtime_ns")} != _file_signature(path):
            found.append(path)
    return found


@flow(name="watch-preference-folder", log_prints=True)
def watch_preference_folder(
    folder: str,
    store_dir: str | None = None,
    policy: IngestPolicy | None = None,
    settle_seconds: float = 2.0,
) -> list[dict[str, Any]]:
    """Ingest every new or changed preference file dropped into `folder` (run it on a schedule).

    A ledger in the store remembers each file's size and mtime, so an unchanged file is not read again;
    a changed one is re-ingested (and only announced if its content is new). A rejected file fails this
    run after the other files were processed, so the failure is visible in the UI.
    """
    watched = Path(folder)
    if not watched.is_dir():
        raise FileNotFoundError(f"watch folder {folder!r} does not exist")
    store = Path(store_dir) if store_dir else default_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    ledger_path = store / WATCH_LEDGER
    ledger = _read_ledger(ledger_path)
    results, rejected = [], []
    for path in new_files(watched, ledger, settle_seconds):
        key = str(path.resolve())
        signature = _file_signature(path)
        try:
            result = ingest_preferences(str(path), store_dir=str(store), policy=policy)
        except PreferenceDataRejected as exc:
            rejected.append(f"{path.name}: {exc}")
            ledger[key] = {**signature, "status": "rejected"}
        else:
            results.append(result)
            ledger[key] = {**signature, "status": "ingested", "version": result["version"]}
        _write_ledger(ledger_path, ledger)
    if rejected:
        raise PreferenceDataRejected("rejected files:\n" + "\n".join(rejected))
    return results
