"""``kill -9`` of ``rlhf run`` while PPO trains, then the same command again: the re-run marks the killed run's
MLflow runs FAILED (ghost tags), says it resumes PPO from its checkpoint, completes, and leaves no run of the
config RUNNING. Local defaults: the CLI's own temporary Prefect API and a SQLite MLflow store."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
COMMON = {"logging_steps": 1, "disable_tqdm": True}
CONFIG = {
    "name": "ghost-check",
    "output_dir": "outputs",
    "data": {
        "sft": {"source": "synthetic", "num_examples": 16},
        "ppo": {"source": "synthetic", "num_examples": 16},
        "eval": {"source": "synthetic", "num_examples": 2, "split": "heldout"},
    },
    "stages": {
        "sft": {"args": {"max_steps": 1, "per_device_train_batch_size": 8, "max_length": 48, **COMMON}},
        "reward": {"enabled": False},
        "dpo": {"enabled": False},
        "ppo": {
            "reward": "judge",
            "args": {"max_steps": 8, "batch_size": 4, "response_length": 6, "save_steps": 2, **COMMON},
        },
    },  # fmt: skip
    "evaluation": {"max_new_tokens": 4, "num_samples": 1, "batch_size": 2},
    "tracking": {
        "experiment_name": "ghost-check",
        "registered_model_name": "ghost-policy",
        "log_models": False,
    },
}


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PREFECT_HOME=str(root / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")  # fmt: skip
    return env


def _rlhf(root: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "deployments.cli", "run", "config.yaml"], cwd=root,
                                env=_env(root), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _kill_tree(pid: int) -> None:
    """SIGKILL the process the test started and the descendants it had (the temporary Prefect API), by pid."""
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(family[1:], timeout=10)  # the root is reaped by its Popen (its exit status is checked)


def _saved_ppo_checkpoint(root: Path) -> Path | None:
    # ppo_state.json is the last file of a PPO checkpoint: the folder is complete
    return next(
        iter(sorted((root / "outputs").glob("stages/ppo-*/checkpoints/checkpoint-*/ppo_state.json"))), None
    )


def test_kill_9_during_ppo_then_rerun_leaves_no_ghosts_and_resumes(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    first = _rlhf(tmp_path, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 600
        while _saved_ppo_checkpoint(tmp_path) is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no PPO checkpoint in 600 s"
            time.sleep(0.2)
    finally:
        _kill_tree(first.pid)
    assert first.wait(timeout=30) == -signal.SIGKILL

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("ghost-check").experiment_id
    left = client.search_runs([experiment], "attributes.status = 'RUNNING'")
    assert {r.data.tags.get("rlhf.stage", "pipeline") for r in left} == {
        "pipeline",
        "ppo",
    }  # what kill -9 leaves

    second = _rlhf(tmp_path, tmp_path / "second.log")
    try:
        assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-4000:]
    finally:
        _kill_tree(second.pid)
    out = (tmp_path / "second.log").read_text()
    assert re.search(r"resuming ppo from checkpoint-(\d+) \(step \1 of 8\)", out), out[-4000:]
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    for run in left:
        marked = client.get_run(run.info.run_id)
        assert marked.info.status == "FAILED"
        assert marked.data.tags["rlhf.ghost.found_by"].startswith("start-up of pipeline run")
    ppo_runs = client.search_runs(
        [experiment], "tags.`rlhf.stage` = 'ppo' and attributes.status = 'FINISHED'"
    )
    assert len(ppo_runs) == 1 and ppo_runs[0].data.tags["rlhf.resumed_step"].isdigit()
