"""Exact resume after a real kill: a stage whose process is SIGKILLed right after a checkpoint, then run again,
ends with the same weights as a run that was never interrupted (optimizer, scheduler, RNG and data order all
restored), and the second attempt says where it resumed from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_core.data.synthetic import SyntheticTask
from tasks.stage_specs import StageSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROBE = Path(__file__).with_name("resume_probe.py")
ROOT = Path(__file__).resolve().parents[2]
# Adam with a decaying rate and dropout-free tiny models: any state not restored (moments, schedule position, data
# order, sampling RNG) changes the weights after the resumed steps.
COMMON = {"learning_rate": 1e-3, "lr_scheduler_type": "linear", "logging_steps": 1, "save_steps": 2,
          "max_steps": 4, "disable_tqdm": True, "report_to": "none"}  # fmt: skip
STAGES = {
    "sft": ({"per_device_train_batch_size": 4, "max_length": 48}, lambda: SyntheticTask().sft_dataset(32)),
    "ppo": (
        {
            "per_device_train_batch_size": 4,
            "num_mini_batches": 2,
            "num_ppo_epochs": 2,
            "response_length": 8,
            "temperature": 1.0,
        },  # fmt: skip
        lambda: SyntheticTask().prompt_dataset(16, split="train"),
    ),
}


def _attempt(spec_file: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, str(PROBE), str(spec_file), *([str(kill_at)] if kill_at else [])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _spec(tmp_path: Path, stage: str, name: str) -> Path:
    args, data = STAGES[stage]
    data_dir = tmp_path / "data"
    if not data_dir.exists():
        data().save_to_disk(str(data_dir))
    spec = StageSpec(stage=stage, model="rlhf-tiny", train_data=str(data_dir), stage_dir=str(tmp_path / name),
                     args={**COMMON, **args}, reward="judge" if stage == "ppo" else "reward_model")  # fmt: skip
    path = tmp_path / f"{name}.json"
    path.write_text(spec.model_dump_json())
    return path


def _max_weight_difference(a: Path, b: Path) -> float:
    """Over every saved weight file of the final folders (PPO: the policy and its value head)."""
    from safetensors.torch import load_file

    files = sorted(p.name for p in a.glob("*.safetensors"))
    assert files and files == sorted(p.name for p in b.glob("*.safetensors"))
    worst = 0.0
    for name in files:
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys()
        worst = max(worst, *(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa))
    return worst


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_killed_at_a_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path, stage):
    whole = _attempt(_spec(tmp_path, stage, "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed_spec = _spec(tmp_path, stage, "killed")
    first = _attempt(killed_spec, kill_at=2)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    stage_dir = tmp_path / "killed"
    assert (stage_dir / "checkpoints" / "checkpoint-2").is_dir() and not (stage_dir / "final").exists()

    second = _attempt(killed_spec)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming {stage} from checkpoint-2 (step 2 of 4)" in second.stderr
    difference = _max_weight_difference(tmp_path / "whole" / "final", stage_dir / "final")
    print(f"{stage}: max |weight difference| resumed vs uninterrupted = {difference:.3g}")
    assert difference <= 1e-6
