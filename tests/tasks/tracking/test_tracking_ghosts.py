"""Ghost runs: RUNNING runs whose pipeline process is dead are marked FAILED (with who found them and when) by
the next pipeline run of the same config and by ``rlhf doctor``; live runs, other configs and other hosts are
left alone."""

from __future__ import annotations

import subprocess
import sys

from mlflow.tracking import MlflowClient

from deployments.cli.parser import main
from tasks.tracking import ghosts
from tasks.tracking import runs as tracking


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _pipeline_run(experiment: str, digest: str, owner: dict[str, str]) -> tuple[str, str]:
    """A parent run left RUNNING with the given owner, and its RUNNING stage run (what kill -9 leaves)."""
    client = MlflowClient()
    exp = tracking._experiment_id(experiment)
    parent = client.create_run(exp, tags={"rlhf.role": "pipeline", "rlhf.config_digest": digest, **owner})
    stage = client.create_run(exp, tags={"rlhf.stage": "ppo", "mlflow.parentRunId": parent.info.run_id})
    return parent.info.run_id, stage.info.run_id


def _status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def test_next_pipeline_run_of_the_config_marks_its_dead_runs_failed(mlflow_store):
    owner = ghosts.owner_tags()
    dead = {**owner, ghosts.PID_TAG: str(_dead_pid())}
    reused_pid = {**owner, ghosts.STARTED_TAG: "12.00"}  # this pid, but a process that started long ago
    ghost = _pipeline_run("ghosts", "d1", dead)
    reused = _pipeline_run("ghosts", "d1", reused_pid)
    alive = _pipeline_run("ghosts", "d1", owner)  # a concurrent run of the same config, still training
    other_config = _pipeline_run("ghosts", "d2", dead)
    other_host = _pipeline_run("ghosts", "d1", {**dead, ghosts.HOST_TAG: "elsewhere"})

    with tracking.parent_run("ghosts", "again", {"rlhf.role": "pipeline", "rlhf.config_digest": "d1"}) as new:
        assert _status(new) == "RUNNING"
    for run_id in (*ghost, *reused):
        assert _status(run_id) == "FAILED"
        tags = MlflowClient().get_run(run_id).data.tags
        assert tags[ghosts.FOUND_BY_TAG].startswith("start-up of pipeline run 'again'")
        assert tags[ghosts.FOUND_AT_TAG].startswith("20") and tags["rlhf.error"].startswith("ghost run: ")
    for parent, stage in (ghost, reused):
        assert "is gone" in MlflowClient().get_run(parent).data.tags[ghosts.REASON_TAG]
        assert (
            f"pipeline run {parent} is FAILED" in MlflowClient().get_run(stage).data.tags[ghosts.REASON_TAG]
        )
    for run_id in (*alive, *other_config, *other_host):
        assert _status(run_id) == "RUNNING"
    assert MlflowClient().get_run(new).data.tags[ghosts.PID_TAG] == owner[ghosts.PID_TAG]


def test_doctor_marks_every_experiments_ghosts(mlflow_store, capsys):
    dead = {**ghosts.owner_tags(), ghosts.PID_TAG: str(_dead_pid())}
    one, two = _pipeline_run("doctor-a", "x", dead), _pipeline_run("doctor-b", "y", dead)
    alive = _pipeline_run("doctor-a", "x", ghosts.owner_tags())

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for run_id in (*one, *two):
        assert _status(run_id) == "FAILED" and f"marked FAILED {run_id}" in out
        assert MlflowClient().get_run(run_id).data.tags[ghosts.FOUND_BY_TAG].startswith("rlhf doctor (")
    assert all(_status(run_id) == "RUNNING" for run_id in alive)
    assert main(["doctor"]) == 0 and "no ghost runs" in capsys.readouterr().out
