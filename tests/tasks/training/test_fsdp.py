"""FSDP2 through accelerate (configs/accelerate/fsdp2.yaml) on 2 processes: the model is sharded (DTensor
parameters, accelerate's FSDP v2) and trains like DDP with the same per-process batch.

Needs 2 GPUs. torch 2.13 itself runs FSDP2 (`fully_shard`) on CPU processes over gloo, but accelerate 1.15 turns
FSDP on only for accelerator process groups (`AcceleratorState`: the FSDP branch is inside the MULTI_GPU / NPU /
XPU / HPU / ... case); on a CPU-only machine `accelerate launch --config_file fsdp2.yaml` runs plain multi-CPU DDP
(MULTI_CPU, no fsdp_plugin), which this test's probe would report as a failure rather than pass off as FSDP."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from scale_out_helpers import ROOT, max_weight_difference, stage_spec

from tasks.config import ScaleOutSettings
from tasks.training.launch import accelerate_command

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        torch.cuda.device_count() < 2,
        reason="FSDP through accelerate needs 2 GPUs: accelerate 1.15 enables FSDP only for accelerator process "
        "groups and runs MULTI_CPU DDP on CPUs (torch 2.13's fully_shard itself works on CPU/gloo)",
    ),
]
FSDP2 = ROOT / "configs" / "accelerate" / "fsdp2.yaml"
PROBE = Path(__file__).with_name("fsdp_probe.py")


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_fsdp2_on_two_cpu_processes_shards_and_trains_like_ddp(stage, stage_data, sft_references, tmp_path):
    spec = stage_spec(stage, stage_data[stage], tmp_path / "fsdp", 4)
    Path(spec.stage_dir).mkdir(parents=True)
    spec_file = Path(spec.stage_dir) / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    cmd = accelerate_command(spec_file, ScaleOutSettings(num_processes=2, accelerate_config=str(FSDP2)))
    cmd = [*cmd[: cmd.index("-m", 3)], str(PROBE), str(spec_file)]  # the stage entry point + the probe
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        probe = json.loads((Path(spec.stage_dir) / f"probe-rank-{rank}.json").read_text())
        assert probe["distributed_type"] == "DistributedType.FSDP" and probe["fsdp_version"] == 2, probe
        assert probe["dtensor_params"] == probe["params"] > 0, probe  # every parameter sharded
    if stage == "sft":  # DDP reference with the same batches (trained once for the session)
        difference = max_weight_difference(Path(spec.stage_dir) / "final", sft_references["accelerate"])
        print(f"fsdp2 vs ddp, 2 CPU processes, sft: max |w| difference {difference:.2e}")
        assert difference < 1e-4  # GPU kernels: the reduction order differs between DDP and FSDP
    else:
        assert (Path(spec.stage_dir) / "final" / "model.safetensors").is_file()
