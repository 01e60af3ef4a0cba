"""Scale-out: a stage under `accelerate launch` as 2 CPU processes (gloo) trains and logs once (rank 0 only)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from scale_out_helpers import max_weight_difference

from tasks.config import ScaleOutSettings
from tasks.training.launch import accelerate_command


def test_accelerate_command(tmp_path):
    cmd = accelerate_command(tmp_path / "spec.json", ScaleOutSettings(num_processes=2))
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[-3:] == [
        "-m",
        "tasks.training.entry",
        str(tmp_path / "spec.json"),
    ]
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\n")
    cmd = accelerate_command(
        tmp_path / "spec.json", ScaleOutSettings(num_processes=2, accelerate_config=str(config))
    )
    assert cmd[cmd.index("--config_file") + 1] == str(config) and "--multi_gpu" not in cmd
    assert not ScaleOutSettings().launches("sft") and not ScaleOutSettings(
        num_processes=2, stages=["dpo"]
    ).launches("sft")


@pytest.mark.slow
def test_stage_on_two_cpu_processes_trains_and_logs_once(sft_references):
    """The 2-process reference of the scale-out tests (conftest's sft_references), run under its own stage run."""
    outcome, runs = sft_references["accelerate_outcome"], sft_references["accelerate_runs"]
    assert outcome.num_processes == 2 and outcome.global_step == 3
    difference = max_weight_difference(sft_references["accelerate"], sft_references["one"])
    print(f"sft max |w| difference: accelerate-2 vs 1 process {difference:.2e}")
    assert difference < 1e-5  # the same global batch, the same weights
    client = MlflowClient(runs["uri"])
    losses = client.get_metric_history(runs["child"], "loss")
    assert [m.step for m in losses] == [1, 2, 3]  # one value per step: only rank 0 logged
    assert client.get_run(runs["child"]).data.params["per_device_train_batch_size"] == "4"
    experiment = client.get_run(runs["parent"]).info.experiment_id
    assert len(client.search_runs([experiment])) == 2  # the workers started no runs of their own
