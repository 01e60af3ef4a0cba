"""Run a training stage as a Ray Train `TorchTrainer` job on a Ray cluster (`scale_out.backend: ray`).

The job is a detached Ray actor named by a deterministic id (``rlhf-<stage>-<digest>-<flow run>``): it runs
`TorchTrainer.fit()` on the cluster, so it outlives the Prefect task that submitted it. A Prefect retry of that
task (same stage digest, same flow run) finds the actor by name and waits on it instead of submitting a second
job; a finished job is read (outcome.json, written by rank 0) and its actor removed. Ray Train itself places the
workers, joins them into one torch.distributed group, persists checkpoints to ``storage_path`` and restarts the
worker group from the last checkpoint up to ``max_failures`` times.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from tasks.config import ScaleOutSettings
from tasks.results import TrainOutcome
from tasks.stage_specs import StageSpec
from tasks.training.ray_checks import (
    RaySetupError,
    check_resources,
    check_storage,
    cluster_address,
    import_ray,
    wait_for_answer,
)
from tasks.training.ray_worker import train_loop_per_worker, worker_record

__all__ = [
    "NAMESPACE",
    "RaySetupError",
    "RayStageError",
    "StageTrainingJob",
    "connect",
    "job_id",
    "storage_path",
    "train_on_ray",
    "worker_env",
]

logger = logging.getLogger(__name__)
NAMESPACE = "rlhf"
# Passed to every worker explicitly (a Ray worker does not inherit the Prefect worker's environment).
FORWARDED_ENV = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HOME",
    "HF_TOKEN",
    "RLHF_CACHE",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS",
    "TOKENIZERS_PARALLELISM",
)


class RayStageError(RuntimeError):
    """The stage's Ray Train job failed; the message names the stage and the failed worker(s)."""


def worker_env(spec: StageSpec) -> dict[str, str]:
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    if spec.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def job_id(spec: StageSpec, flow_run_id: str | None = None) -> str:
    """``rlhf-<stage folder = stage + digest>-<flow run id>``: equal for every retry of one stage in one run."""
    if flow_run_id is None:
        from prefect.runtime import flow_run

        flow_run_id = flow_run.get_id() or "no-flow-run"
    return f"rlhf-{Path(spec.stage_dir).name}-{flow_run_id}"


# When one worker dies, its peers fail too, inside the collective they were waiting on (gloo/NCCL report
# the closed connection). Those are consequences: the message leads with the workers whose process died (Ray
# Train's health check names them), then other errors, then the peers' broken collectives; rank order within each.
_DEATHS = ("WorkerHealthCheckFailedError", "WorkerHealthCheckTimeoutError", "ActorDiedError", "RayActorError")
_PEER_SYMPTOMS = (
    "connection closed by peer",
    "remote worker crashing",
    "connection reset by peer",
    "broken pipe",
)


def _failure_order(rank: int, cause: BaseException) -> tuple[int, int]:
    if any(cls.__name__ in _DEATHS for cls in type(cause).__mro__):
        return 0, rank
    text = str(cause).lower()
    return (2 if any(symptom in text for symptom in _PEER_SYMPTOMS) else 1), rank


def _describe_failure(error: Exception, spec: StageSpec) -> str:
    failures = getattr(error, "worker_failures", None) or {}
    if not failures:
        return f"stage {spec.stage}: Ray Train job failed: {str(error).strip().splitlines()[-1]}"
    parts = []
    for rank, cause in sorted(failures.items(), key=lambda item: _failure_order(*item)):
        record = worker_record(spec.stage_dir, rank) or {}
        where = f" (pid {record['pid']} on {record['node']})" if record else ""
        lines = [line for line in str(cause).strip().splitlines() if line.strip()]
        parts.append(f"worker rank {rank}{where}: {type(cause).__name__}: {lines[0] if lines else ''}")
    return f"stage {spec.stage}: Ray Train worker failed: " + "; ".join(parts)


class StageTrainingJob:
    """The detached actor behind one job id: `TorchTrainer.fit()` in a thread; `status()` answers meanwhile."""

    def __init__(self, spec_json: str, env: dict[str, str], scale_out_json: str, name: str) -> None:
        self.spec = StageSpec.model_validate_json(spec_json)
        self.scale_out = ScaleOutSettings.model_validate_json(scale_out_json)
        self.env, self.name = env, name
        self.started = time.time()
        self._state: dict[str, Any] = {"status": "running", "error": None, "started": self.started}
        threading.Thread(target=self._fit, name=f"fit-{name}", daemon=True).start()

    def _trainer(self) -> Any:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        scale_out = self.scale_out
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"spec": self.spec.model_dump_json(), "env": self.env},
            scaling_config=ScalingConfig(
                num_workers=scale_out.num_workers,
                use_gpu=scale_out.use_gpu,
                resources_per_worker=dict(scale_out.resources_per_worker),
            ),
            run_config=RunConfig(
                name=self.name,
                storage_path=storage_path(self.spec, scale_out),
                failure_config=FailureConfig(max_failures=scale_out.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )

    def _fit(self) -> None:
        try:
            self._trainer().fit()
        except Exception as error:  # reported to the driver, which raises it in the Prefect task
            self._state.update(status="failed", error=_describe_failure(error, self.spec))
        else:
            self._state.update(status="succeeded")
        self._state["finished"] = time.time()

    def status(self) -> dict[str, Any]:
        return dict(self._state)


def storage_path(spec: StageSpec, scale_out: ScaleOutSettings) -> str:
    if scale_out.storage_path is None:
        return str((Path(spec.stage_dir) / "ray").resolve())
    if "://" in scale_out.storage_path:
        return scale_out.storage_path
    return str(Path(scale_out.storage_path).expanduser().resolve())


def connect(address: str) -> Any:
    """Check that ``address`` answers, then join the cluster as a driver in the `rlhf` namespace."""
    ray = import_ray()
    wait_for_answer(address)
    if ray.is_initialized():
        ray.shutdown()  # another address, or a stale connection: join the one asked for
    ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=True)
    return ray


def _log_to_run(message: str) -> None:
    """The Prefect task's log when there is one (the UI shows it), else this module's logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().info(message)
    except MissingContextError:
        logger.info(message)


def _submit_or_attach(ray: Any, spec: StageSpec, scale_out: ScaleOutSettings, name: str) -> Any:
    try:
        actor = ray.get_actor(name, namespace=NAMESPACE)
        verb = "re-attached to"
    except ValueError:  # no such job yet
        spec.outcome_file.unlink(missing_ok=True)  # a previous attempt's outcome is not this job's
        actor_class = ray.remote(StageTrainingJob).options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=4,
        )
        actor = actor_class.remote(
            spec.model_dump_json(), worker_env(spec), scale_out.model_dump_json(), name
        )
        verb = "submitted"
    state = ray.get(actor.status.remote())
    _log_to_run(
        f"stage {spec.stage}: {verb} Ray job {name} (running for {time.time() - state['started']:.0f} s) on the "
        f"cluster at {ray.get_runtime_context().gcs_address}; follow it with `ray list actors --filter name={name}` "
        f"and Ray Train's run {name} under {storage_path(spec, scale_out)}"
    )
    return actor


def _absolute_paths(spec: StageSpec) -> StageSpec:
    """Paths as every node sees them (a worker's working folder is not the pipeline's)."""
    fields = {"stage_dir": str(Path(spec.stage_dir).resolve())}
    for name in ("model", "train_data", "reward_model"):
        value = getattr(spec, name)
        if value is not None and Path(value).exists():
            fields[name] = str(Path(value).resolve())
    return spec.model_copy(update=fields)


def train_on_ray(
    spec: StageSpec, scale_out: ScaleOutSettings, *, flow_run_id: str | None = None
) -> TrainOutcome:
    """Run ``spec`` on the Ray cluster (after the set-up checks), wait for it and read back its outcome."""
    address = cluster_address(scale_out)
    ray = connect(address)
    check_resources(ray, scale_out, address)
    stage_dir = Path(spec.stage_dir).resolve()
    spec = _absolute_paths(spec)
    check_storage(
        ray, {"scale_out.storage_path": storage_path(spec, scale_out), "stage folder": str(stage_dir)}
    )
    name = job_id(spec, flow_run_id)
    (stage_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
    actor = _submit_or_attach(ray, spec, scale_out, name)
    while (state := ray.get(actor.status.remote()))["status"] == "running":
        time.sleep(1.0)
    ray.kill(actor)  # frees the name: a later retry after a failure submits afresh (and resumes from storage)
    if state["status"] == "failed":
        raise RayStageError(f"{state['error']} (Ray job {name}, max_failures={scale_out.max_failures})")
    if not spec.outcome_file.is_file():
        raise RayStageError(f"stage {spec.stage}: Ray job {name} finished but wrote no {spec.outcome_file}")
    return TrainOutcome.model_validate_json(spec.outcome_file.read_text())
