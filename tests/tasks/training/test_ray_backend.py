"""`scale_out.backend: ray`: a stage as a Ray Train job with 2 workers on a local Ray head (real processes).

Same weights as one process and as 2 accelerate processes with the same global batch; rank 0 alone logs; a killed
worker is replaced and training resumes from the last checkpoint (and a retry of the submitting task re-attaches
to the running job); with no restarts allowed the stage fails fast, naming the stage and the worker.
"""

from __future__ import annotations

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
from mlflow.tracking import MlflowClient
from scale_out_helpers import ROOT, max_weight_difference, stage_spec

from tasks.config import ScaleOutSettings
from tasks.tracking import runs as tracking
from tasks.training.launch import train_stage
from tasks.training.ray_job import RayStageError, job_id, storage_path, train_on_ray
from tasks.training.ray_worker import worker_record

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5


def _ray(address: str, **settings) -> ScaleOutSettings:
    return ScaleOutSettings(backend="ray", address=address, num_workers=2, **settings)


def test_sft_on_two_ray_workers_matches_one_process_and_accelerate(
    ray_head, stage_data, sft_references, mlflow_store, tmp_path
):
    spec = stage_spec("sft", stage_data["sft"], tmp_path / "ray", 4)
    with (
        tracking.parent_run("ray", "pipeline", {}) as parent,
        tracking.stage_run(parent, "sft") as child,
    ):
        outcome = train_stage(spec.model_copy(update={"mlflow_run_id": child, "tracking_uri": mlflow_store}),
                              _ray(ray_head))  # fmt: skip
    assert outcome.num_processes == 2 and outcome.global_step == 3
    vs_one = max_weight_difference(outcome.final_dir, sft_references["one"])
    vs_accelerate = max_weight_difference(outcome.final_dir, sft_references["accelerate"])
    moved = max_weight_difference(sft_references["one"], _initial_weights(tmp_path))
    print(f"sft max |w| difference: ray-2 vs 1 process {vs_one:.2e}, vs accelerate-2 {vs_accelerate:.2e}")
    assert vs_one < TOLERANCE and vs_accelerate < TOLERANCE and moved > 100 * TOLERANCE
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(child, "loss")] == [1, 2, 3]  # rank 0 alone logged
    experiment = client.get_run(parent).info.experiment_id
    assert len(client.search_runs([experiment])) == 2  # the workers started no runs of their own


def _initial_weights(tmp_path: Path) -> Path:
    from rlhf_core.models.loading import load_causal_lm

    folder = tmp_path / "initial"
    load_causal_lm("rlhf-tiny").save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("stage", ["reward", "dpo"])
def test_preference_stage_on_two_ray_workers_matches_one_process(
    ray_head, stage_data, mlflow_store, tmp_path, stage
):
    one = train_stage(stage_spec(stage, stage_data[stage], tmp_path / "one", 8), ScaleOutSettings())
    two = train_stage(stage_spec(stage, stage_data[stage], tmp_path / "ray", 4), _ray(ray_head))
    difference = max_weight_difference(one.final_dir, two.final_dir)
    print(f"{stage} max |w| difference: ray-2 vs 1 process {difference:.2e}")
    assert two.num_processes == 2 and difference < TOLERANCE


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _reported_checkpoint(spec, scale_out, name) -> bool:
    """Ray Train's controller registered a checkpoint (its snapshot is written once it has; a checkpoint folder
    alone may still be in flight, and a restart would not see it)."""
    return (Path(storage_path(spec, scale_out)) / name / "checkpoint_manager_snapshot.json").is_file()


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


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
        _wait_for(lambda: _reported_checkpoint(spec, scale_out, name), 300, "the first reported checkpoint")
    finally:
        _kill(driver.pid)
        driver.wait()
    victim = worker_record(spec.stage_dir, 1)
    _kill(victim["pid"])  # and a training worker dies mid-stage
    killed = time.monotonic()
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
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(train_on_ray, spec, _ray(ray_head, max_failures=0), flow_run_id="flow-run-2")
        record = _wait_for(lambda: worker_record(spec.stage_dir, 1), 300, "worker rank 1 to start")
        _kill(record["pid"])
        killed = time.monotonic()
        with pytest.raises(RayStageError) as failure:
            job.result(timeout=120)
    elapsed = time.monotonic() - killed
    message = str(failure.value)
    print(f"worker kill -> stage failed: {elapsed:.1f} s: {message}")
    assert message.startswith("stage sft: Ray Train worker failed: worker rank 1")
    assert f"pid {record['pid']}" in message and "max_failures=0" in message
    assert elapsed < 60
