"""Multi-node accelerate on one host: two launchers as machine 0 (the pipeline's `train_stage`) and machine 1
(`python -m tasks.training.launch SPEC --machine-rank 1`) rendezvous at 127.0.0.1 and train exactly like 2
processes on one machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from scale_out_helpers import ROOT, free_port, max_weight_difference, stage_spec

from tasks.config import ScaleOutSettings
from tasks.training.launch import train_stage

pytestmark = pytest.mark.slow


def test_two_machines_train_like_two_processes_on_one(stage_data, sft_references, mlflow_store, tmp_path):
    spec = stage_spec("sft", stage_data["sft"], tmp_path / "stage", 4)
    settings = ScaleOutSettings(
        num_processes=2,
        num_machines=2,
        machine_rank=0,
        main_process_ip="127.0.0.1",
        main_process_port=free_port(),
    )
    written = Path(spec.stage_dir) / "scale_out.json"
    with ThreadPoolExecutor(1) as pool:
        machine_0 = pool.submit(train_stage, spec, settings)
        deadline = time.monotonic() + 60
        while not written.is_file() and time.monotonic() < deadline and not machine_0.done():
            time.sleep(0.1)
        machine_1 = subprocess.run(
            [sys.executable, "-m", "tasks.training.launch", str(Path(spec.stage_dir) / "spec.json"),
             "--machine-rank", "1"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        outcome = machine_0.result(timeout=600)
    assert machine_1.returncode == 0, machine_1.stderr[-3000:]
    assert outcome.num_processes == 2 and outcome.global_step == 3
    difference = max_weight_difference(outcome.final_dir, sft_references["accelerate"])
    print(f"2 machines x 1 process vs 1 machine x 2 processes: max |w| difference {difference:.2e}")
    assert difference < 1e-5
