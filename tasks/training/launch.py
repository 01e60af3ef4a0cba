"""Run a training stage where `scale_out` says: in this process, under ``accelerate launch``, or on Ray.

In-process is the default. With ``backend: accelerate`` the stage's spec is written to ``<stage_dir>/spec.json``
and ``accelerate launch ... -m tasks.training.entry spec.json`` runs it: DDP by default (gloo on a CPU-only
machine), or whatever the accelerate config says (FSDP, DeepSpeed). Several machines: the pipeline's machine is
rank 0; every other machine runs the same spec with its own rank (a folder all machines see holds the stage)::

    python -m tasks.training.launch outputs/stages/sft-<digest>/spec.json --machine-rank 1

With ``backend: ray`` the stage is a Ray Train job (`tasks.training.ray_job`). Rank 0 logs to the stage's MLflow
run and writes ``outcome.json``, which this side reads back.
"""

from __future__ import annotations

import argparse
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

__all__ = ["LaunchError", "accelerate_command", "launch_machine", "main", "train_stage"]

MULTI_NODE_PORT = 29500  # torchrun's default rendezvous port, when several machines must agree on one


class LaunchError(RuntimeError):
    """``accelerate launch`` exited with an error; the message holds the end of its output."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_command(spec_file: Path, scale_out: ScaleOutSettings) -> list[str]:
    """The ``accelerate launch`` command line for one stage (on machine ``scale_out.machine_rank``)."""
    multi_node = scale_out.num_machines > 1
    port = scale_out.main_process_port or (MULTI_NODE_PORT if multi_node else _free_port())
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(scale_out.num_processes),
        "--num_machines",
        str(scale_out.num_machines),
        "--main_process_port",
        str(port),
    ]
    if multi_node:
        cmd += [
            "--machine_rank",
            str(scale_out.machine_rank),
            "--main_process_ip",
            str(scale_out.main_process_ip),
        ]
    if scale_out.accelerate_config is not None:
        cmd += ["--config_file", scale_out.accelerate_config]
    elif scale_out.num_processes > 1:
        # The multi-process launcher (torchrun); on a CPU-only machine ACCELERATE_USE_CPU makes it gloo.
        cmd += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*cmd, "-m", "tasks.training.entry", str(spec_file)]


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # a launcher on another machine never reads half a file


def launch_machine(spec_file: Path, scale_out: ScaleOutSettings, stage: str) -> None:
    """Run this machine's share of the stage under accelerate launch; raise `LaunchError` when it fails."""
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
    env.pop("MLFLOW_RUN_ID", None)  # rank 0 attaches to spec.mlflow_run_id explicitly
    proc = subprocess.run(accelerate_command(spec_file, scale_out), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout[-2000:] + "\n" + proc.stderr[-6000:]).strip()
        raise LaunchError(
            f"stage {stage}: accelerate launch (machine {scale_out.machine_rank}) failed "
            f"(exit {proc.returncode}):\n{tail}"
        )


def train_stage(spec: StageSpec, scale_out: ScaleOutSettings, trainer_config: Any = None) -> TrainOutcome:
    """Train ``spec`` here (with ``trainer_config`` when the caller resolved it), under accelerate launch or on
    Ray (each worker resolves its own), per ``scale_out``."""
    if not scale_out.launches(spec.stage):
        return run_stage_training(spec, trainer_config)
    if scale_out.backend == "ray":
        from tasks.training.ray_job import train_on_ray

        return train_on_ray(spec, scale_out)
    stage_dir = Path(spec.stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    spec_file = stage_dir / "spec.json"
    _write_atomically(spec_file, spec.model_dump_json(indent=2))
    _write_atomically(stage_dir / "scale_out.json", scale_out.model_dump_json(indent=2))
    spec.outcome_file.unlink(missing_ok=True)
    launch_machine(spec_file, scale_out, spec.stage)
    if not spec.outcome_file.is_file():
        raise LaunchError(f"stage {spec.stage}: accelerate launch finished but wrote no {spec.outcome_file}")
    return TrainOutcome.model_validate_json(spec.outcome_file.read_text())


def main(argv: list[str] | None = None) -> int:
    """Another machine's launcher of a multi-node stage: the spec machine 0 wrote, this machine's rank."""
    parser = argparse.ArgumentParser(prog="python -m tasks.training.launch", description=main.__doc__)
    parser.add_argument("spec", type=Path, help="<stage folder>/spec.json (scale_out.json beside it)")
    parser.add_argument("--machine-rank", type=int, required=True)
    parsed = parser.parse_args(argv)
    spec = StageSpec.model_validate_json(parsed.spec.read_text())
    settings = ScaleOutSettings.model_validate_json((parsed.spec.parent / "scale_out.json").read_text())
    scale_out = ScaleOutSettings.model_validate(
        {**settings.model_dump(exclude_unset=True), "machine_rank": parsed.machine_rank}
    )
    try:
        launch_machine(parsed.spec, scale_out, spec.stage)
    except LaunchError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
