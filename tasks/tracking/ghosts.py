"""Ghost runs: MLflow runs left RUNNING by a pipeline process that died (kill -9, OOM, machine loss).

MLflow has no "killed" state a dead process could still set, so a crashed run looks alive in the UI and in
comparisons for ever. Every pipeline parent run carries who owns it (`owner_tags`: host, pid and the process's
start time, which tells a reused pid apart). A run is a ghost when it is still RUNNING and

- its owner ran on this host and that process is gone (or the pid now belongs to another process), or
- it is a stage run whose parent run has ended (the parent was marked, or finished without it).

A RUNNING parent owned by another host cannot be checked from here and is left alone (reported as unchecked).
`mark_ghost_runs` marks ghosts FAILED with tags saying who found them and when; the pipeline calls it at start-up
for its own config (`tasks.tracking.runs.parent_run`), ``rlhf doctor`` for whole experiments.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mlflow.entities import RunStatus, RunTag
from mlflow.tracking import MlflowClient

__all__ = ["GhostReport", "mark_ghost_runs", "owner_tags"]

HOST_TAG, PID_TAG, STARTED_TAG = "rlhf.owner.host", "rlhf.owner.pid", "rlhf.owner.started"
FOUND_BY_TAG, FOUND_AT_TAG, REASON_TAG = "rlhf.ghost.found_by", "rlhf.ghost.found_at", "rlhf.ghost.reason"
_RUNNING = "attributes.status = 'RUNNING'"


def _process_started(pid: int) -> float | None:
    """The start time of process ``pid`` (seconds since the epoch), None when there is no such process."""
    import psutil  # accelerate's dependency, so always installed with the training stack

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run (checked by a later `mark_ghost_runs`)."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), STARTED_TAG: f"{_process_started(pid):.2f}"}


def _owner_gone(tags: dict[str, str]) -> str | None:
    """Why the owner of a run is known dead, or None (alive, another host, or no owner recorded)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    started = _process_started(pid)
    if started is None:
        return f"its process {pid} on {tags[HOST_TAG]} is gone"
    if STARTED_TAG in tags and abs(started - float(tags[STARTED_TAG])) > 1.0:
        return f"its process {pid} on {tags[HOST_TAG]} is gone (the pid now belongs to another process)"
    return None


@dataclass
class GhostReport:
    """What one sweep found: the runs it marked FAILED (id -> reason) and RUNNING parents it could not check."""

    marked: dict[str, str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"marked FAILED {run_id}: {why}" for run_id, why in self.marked.items()]
        return out + [f"left RUNNING {run_id}: owned by another host or by no recorded process"
                      for run_id in self.unchecked]  # fmt: skip


def _mark(client: MlflowClient, run_id: str, reason: str, found_by: str, report: GhostReport) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = {
        FOUND_BY_TAG: found_by,
        FOUND_AT_TAG: now,
        REASON_TAG: reason,
        "rlhf.error": f"ghost run: {reason}",
    }
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    report.marked[run_id] = reason


def _experiment_ids(client: MlflowClient, names: Iterable[str] | None) -> list[str]:
    if names is None:
        return [e.experiment_id for e in client.search_experiments()]
    found = (client.get_experiment_by_name(n) for n in names)
    return [e.experiment_id for e in found if e is not None]


def mark_ghost_runs(
    experiment_names: Iterable[str] | None = None, *, config_digest: str | None = None, found_by: str
) -> GhostReport:
    """Mark FAILED every ghost run (see the module docstring) of the named experiments (None: all of them),
    only pipeline runs of ``config_digest`` and their stage runs when it is given; tags say ``found_by`` and
    when."""
    client = MlflowClient()
    report = GhostReport()
    ids = _experiment_ids(client, experiment_names)
    if not ids:
        return report
    parent_filter = f"{_RUNNING} and tags.`rlhf.role` = 'pipeline'"
    if config_digest:
        parent_filter += f" and tags.`rlhf.config_digest` = '{config_digest}'"
    for parent in client.search_runs(ids, parent_filter, max_results=1000):
        reason = _owner_gone(parent.data.tags)
        if reason is None:
            report.unchecked += [] if _is_owned_here(parent.data.tags) else [parent.info.run_id]
            continue
        _mark(client, parent.info.run_id, f"pipeline run: {reason}", found_by, report)
    stage_filter = f"{_RUNNING} and tags.`rlhf.stage` != ''"
    for stage in client.search_runs(ids, stage_filter, max_results=1000):
        parent_id = stage.data.tags.get("mlflow.parentRunId")
        if parent_id is None or (config_digest and not _parent_of_digest(client, parent_id, config_digest)):
            continue
        parent_status = client.get_run(parent_id).info.status
        if parent_status != "RUNNING":
            _mark(client, stage.info.run_id, f"stage run whose pipeline run {parent_id} is {parent_status}",
                  found_by, report)  # fmt: skip
    return report


def _is_owned_here(tags: dict[str, str]) -> bool:
    """A live owner on this host (not a run this sweep cannot judge)."""
    return tags.get(HOST_TAG) == socket.gethostname() and tags.get(PID_TAG, "").isdigit()


def _parent_of_digest(client: MlflowClient, parent_id: str, digest: str) -> bool:
    return client.get_run(parent_id).data.tags.get("rlhf.config_digest") == digest
