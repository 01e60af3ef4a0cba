"""Run a training stage in this process, or through ``accelerate launch`` with N processes.

In-process is the default. With ``scale_out.num_processes > 1`` (or an accelerate config file) the stage's spec
is written to ``<stage_dir>/spec.json`` and ``accelerate launch ... -m tasks.training.entry spec.json`` runs it: DDP by
default (gloo on a CPU-only machine), or whatever the accelerate config says (FSDP, DeepSpeed). Rank 0 logs to the
stage's MLflow run and writes ``outcome.json``, which this side reads back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.config import ScaleOutSettings
from tasks.results import TrainOutcome
from tasks.stage_specs import StageSpec
from tasks.training.run import run_stage_training

__all__ = ["LaunchError", "accelerate_command", "train_stage"]


class LaunchError(RuntimeError):
    """``accelerate launch`` exited with an error; the message holds the end of its output."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(spec_file: Path, scale_out: ScaleOutSettings) -> list[str]:
    """The ``accelerate launch`` command line for one stage."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(scale_out.num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
    ]
    if scale_out.accelerate_config is not None:
        cmd += ["--config_file", scale_out.accelerate_config]
    elif scale_out.num_processes > 1:
        # The multi-process launcher (torchrun); on a CPU-only machine ACCELERATE_USE_CPU makes it gloo.
        cmd += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*cmd, "-m", "tasks.training.entry", str(spec_file)]


def train_stage(spec: StageSpec, scale_out: ScaleOutSettings, trainer_config: Any = None) -> TrainOutcome:
    """Train ``spec`` here (with ``trainer_config`` when the caller resolved it) or under accelerate launch
    (each worker resolves its own), per ``scale_out``."""
    if not scale_out.launches(spec.stage):
        return run_stage_training(spec, trainer_config)
    import torch

    stage_dir = Path(spec.stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    spec_file = stage_dir / "spec.json"
    spec_file.write_text(spec.model_dump_json(indent=2))
    spec.outcome_file.unlink(missing_ok=True)
    cpu = not torch.cuda.is_available()
    env = dict(os.environ)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    env.pop("MLFLOW_RUN_ID", None)  # rank 0 attaches to spec.mlflow_run_id explicitly
    cmd = accelerate_command(spec_file, scale_out)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout[-2000:] + "\n" + proc.stderr[-6000:]).strip()
        raise LaunchError(f"stage {spec.stage}: accelerate launch failed (exit {proc.returncode}):\n{tail}")
    if not spec.outcome_file.is_file():
        raise LaunchError(f"stage {spec.stage}: accelerate launch finished but wrote no {spec.outcome_file}")
    return TrainOutcome.model_validate_json(spec.outcome_file.read_text())
