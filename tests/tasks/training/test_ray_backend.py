"""`scale_out.backend: ray`, a stage as a Ray Train job with 2 workers on a local Ray head (real processes): a killed
worker is replaced and training resumes from the last checkpoint (and a retry of the submitting task re-attaches
to the running job); with no restarts allowed the stage fails fast, naming the stage and the worker.

Every stage's weights on 2 Ray workers against one process, rank 0 alone logging and the MLflow structure: the
demo pipeline on Ray (test_ray_pipeline); 2 accelerate processes against one process: test_launch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from scale_out_helpers import ROOT, max_weight_difference, stage_spec

from tasks.config import ScaleOutSettings
from tasks.training.launch import train_stage
from tasks.training.ray_job import NAMESPACE, RayStageError, connect, job_id, storage_path, train_on_ray
from tasks.training.ray_worker import worker_record

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


def _ray(address: str, **settings) -> ScaleOutSettings:
    return ScaleOutSettings(backend="ray", address=address, num_workers=2, **settings)


def _wait_for(predicate, timeout_s: float, what: str, *, ended=lambda: None):
    """Poll ``predicate`` until it holds; ``ended()``: why waiting longer is pointless (the job died), or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if (why := ended()) is not None:
            raise AssertionError(f"{why} before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _reported_checkpoint(spec, scale_out, name) -> bool:
    """Ray Train's controller registered a checkpoint (its snapshot is written once it has; a checkpoint folder
    alone may still be in flight, and a restart would not see it)."""
    return (Path(storage_path(spec, scale_out)) / name / "checkpoint_manager_snapshot.json").is_file()


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _frozen(*pids: int):
    """The processes stopped (SIGSTOP) inside the block: a worker killed in it dies mid-stage, however fast the
    stage's remaining steps would have run on an idle machine."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _no_job_left_behind(address: str, name: str) -> None:
    """Stop the job's actor (its driver thread then returns) when a test failed before the job ended."""
    with contextlib.suppress(Exception):
        ray = connect(address)  # this process may not have joined the cluster yet
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))


def test_killed_worker_resumes_from_checkpoint_and_a_retry_reattaches(
    ray_head, stage_data, mlflow_store, tmp_path, caplog
):
    spec = stage_spec("sft", stage_data["sft"], tmp_path / "stage", 4, max_steps=16, save_strategy="steps",
                      save_steps=4)  # fmt: skip
    scale_out = _ray(ray_head, max_failures=1)
    name = job_id(spec.model_copy(update={"stage_dir": str((tmp_path / "stage").resolve())}), "flow-run-1")
    # The Prefect task's process submits the job, then dies (kill -9) while the job trains.
    (tmp_path / "job.json").write_text(
        json.dumps({"spec": spec.model_dump_json(), "scale_out": scale_out.model_dump_json()})
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(tmp_path / "job.json")], cwd=ROOT, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(lambda: _reported_checkpoint(spec, scale_out, name), 300, "the first reported checkpoint",
                  ended=lambda: None if driver.poll() is None else f"the driver exited ({driver.returncode})")  # fmt: skip
        workers = [worker_record(spec.stage_dir, rank) for rank in (0, 1)]
        with _frozen(*(record["pid"] for record in workers)):
            assert not spec.outcome_file.exists(), "the stage finished before its worker could be killed"
            _kill(driver.pid)  # the Prefect task's process dies...
            driver.wait()
            victim = workers[1]
            _kill(victim["pid"])  # ...and a training worker dies mid-stage
            killed = time.monotonic()
    except BaseException:
        _kill(driver.pid)
        _no_job_left_behind(ray_head, name)
        raise
    with caplog.at_level(logging.INFO, logger="tasks.training.ray_job"):
        outcome = train_on_ray(spec, scale_out, flow_run_id="flow-run-1")  # the task's retry
    recovery = time.monotonic() - killed
    assert f"re-attached to Ray job {name}" in caplog.text
    replacement = worker_record(spec.stage_dir, 1)
    assert replacement["pid"] != victim["pid"] and replacement["attempt"] == 1
    assert outcome.global_step == 16 and outcome.resumed_from and outcome.resumed_from.endswith("checkpoint")
    reference = train_stage(
        stage_spec("sft", stage_data["sft"], tmp_path / "one", 8, max_steps=16), ScaleOutSettings()
    )
    difference = max_weight_difference(outcome.final_dir, reference.final_dir)
    print(
        f"worker kill -> stage complete: {recovery:.1f} s; resumed weights vs uninterrupted 1 process: {difference:.2e}"
    )
    assert difference < TOLERANCE


_DRIVER = """
import json, sys
from tasks.config import ScaleOutSettings
from tasks.training.ray_job import train_on_ray
from tasks.stage_specs import StageSpec
job = json.load(open(sys.argv[1]))
train_on_ray(StageSpec.model_validate_json(job["spec"]), ScaleOutSettings.model_validate_json(job["scale_out"]),
             flow_run_id="flow-run-1")
"""


def test_killed_worker_without_restarts_fails_fast_naming_stage_and_worker(
    ray_head, stage_data, mlflow_store, tmp_path
):
    spec = stage_spec("sft", stage_data["sft"], tmp_path / "stage", 4, max_steps=400)
    name = job_id(spec.model_copy(update={"stage_dir": str((tmp_path / "stage").resolve())}), "flow-run-2")
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(train_on_ray, spec, _ray(ray_head, max_failures=0), flow_run_id="flow-run-2")
        try:
            record = _wait_for(lambda: worker_record(spec.stage_dir, 1), 300, "worker rank 1 to start",
                               ended=lambda: f"the job ended ({job.exception()!r})" if job.done() else None)  # fmt: skip
            _kill(record["pid"])
            killed = time.monotonic()
            with pytest.raises(RayStageError) as failure:
                job.result(timeout=120)
        finally:
            if not job.done():  # the pool would wait for all 400 steps
                _no_job_left_behind(ray_head, name)
    elapsed = time.monotonic() - killed
    message = str(failure.value)
    print(f"worker kill -> stage failed: {elapsed:.1f} s: {message}")
    assert message.startswith("stage sft: Ray Train worker failed: worker rank 1")
    assert f"pid {record['pid']}" in message and "max_failures=0" in message
    assert elapsed < 60
