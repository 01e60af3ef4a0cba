"""Helpers of the scale-out tests: tiny stage specs with plain SGD, weight comparison, process-group stop."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RAY = Path(sys.executable).with_name("ray")
# Plain SGD at a constant rate, no warm-up, no saving: the weights after a few steps are a deterministic
# function of the global batch, so 1 process and 2 workers with half the batch each must agree.
SGD = {
    "optim": "sgd",
    "learning_rate": 0.05,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "save_strategy": "no",
    "disable_tqdm": True,
    "max_length": 48,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, to the process group the test itself started."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def max_weight_difference(
    folder_a: str | Path, folder_b: str | Path, *, extra: tuple[str, ...] = (), shared_only: bool = False
) -> float:
    """Largest |difference| over the tensors of ``model.safetensors`` (and the ``extra`` files, e.g. PPO's value
    head) of two saved models; ``shared_only``: over the tensors both hold (a reward model vs its backbone)."""
    from safetensors.torch import load_file

    def tensors(folder: str | Path) -> dict:
        files = ["model.safetensors", *extra]
        return {f"{name}:{k}": v for name in files for k, v in load_file(str(Path(folder) / name)).items()}

    a, b = tensors(folder_a), tensors(folder_b)
    keys = a.keys() & b.keys() if shared_only else a.keys()
    assert keys and (shared_only or a.keys() == b.keys())
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in keys)


def stage_spec(stage: str, data: Path, stage_dir: Path, per_device: int, **args):
    from tasks.stage_specs import StageSpec

    return StageSpec(
        stage=stage,
        model="rlhf-tiny",
        train_data=str(data),
        stage_dir=str(stage_dir),
        args={**SGD, "max_steps": 3, "per_device_train_batch_size": per_device, **args},
    )
