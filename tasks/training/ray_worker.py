"""What every Ray Train worker runs: the stage's own trainer code (`run_stage_training`) on this worker's rank.

Ray Train has already joined the workers into one torch.distributed group (gloo on CPUs, NCCL on GPUs) and set
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR, so the trainers' accelerate set-up finds a ready process group:
nothing here distributes anything. Rank 0 alone attaches to the stage's MLflow run (as under accelerate launch).
Every checkpoint the Trainer saves is reported to Ray Train (`RayTrainReportCallback`), which copies it to the
run's storage path; after a worker-group restart (`FailureConfig.max_failures`) training resumes from the last
reported checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from tasks.stage_specs import StageSpec
from tasks.training.entry import train_as_rank

__all__ = ["WORKERS_FOLDER", "train_loop_per_worker", "worker_record"]

# <stage_dir>/ray-workers/rank-<N>.json: pid and node of each live worker (the failure message names the worker
# from them; an operator finds the process to inspect).
WORKERS_FOLDER = "ray-workers"


def worker_record(stage_dir: str | Path, rank: int) -> dict[str, Any] | None:
    """The pid/node record the worker of ``rank`` wrote when it started (None when it never started)."""
    path = Path(stage_dir) / WORKERS_FOLDER / f"rank-{rank}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _record_worker(spec: StageSpec, rank: int, attempt: int) -> None:
    folder = Path(spec.stage_dir) / WORKERS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "pid": os.getpid(), "node": socket.gethostname(), "attempt": attempt}
    tmp = folder / f".rank-{rank}.json.{os.getpid()}"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / f"rank-{rank}.json")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """`TorchTrainer`'s per-worker function. ``config``: ``spec`` (StageSpec JSON) and ``env`` (variables the
    driver passes explicitly: the Prefect API, the MLflow server and its credentials, hub settings)."""
    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback

    os.environ.update(config["env"])
    if not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = (
            "true"  # accelerate's multi-CPU (gloo) mode, as under accelerate launch
        )
    spec = StageSpec.model_validate_json(config["spec"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    checkpoint = ray.train.get_checkpoint()
    _record_worker(spec, rank, attempt=int(checkpoint is not None))
    callbacks = [RayTrainReportCallback()]
    if checkpoint is None:
        train_as_rank(spec, rank, callbacks=callbacks)
        return
    with checkpoint.as_directory() as folder:
        resume = Path(folder) / RayTrainReportCallback.CHECKPOINT_NAME
        train_as_rank(spec, rank, callbacks=callbacks, resume_from=str(resume))
