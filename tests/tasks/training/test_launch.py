"""Scale-out: a stage under `accelerate launch` as 2 CPU processes (gloo) trains and logs once (rank 0 only)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from rlhf_core.data.synthetic import SyntheticTask
from tasks.config import ScaleOutSettings
from tasks.stage_specs import StageSpec
from tasks.tracking import runs as tracking
from tasks.training.launch import accelerate_command, train_stage


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
def test_stage_on_two_cpu_processes_trains_and_logs_once(mlflow_store, tmp_path):
    SyntheticTask().sft_dataset(32).save_to_disk(str(tmp_path / "data"))
    spec = StageSpec(
        stage="sft",
        model="rlhf-tiny",
        train_data=str(tmp_path / "data"),
        stage_dir=str(tmp_path / "s"),
        args={
            "max_steps": 3,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "save_strategy": "no",
            "disable_tqdm": True,
            "max_length": 48,
        },
    )
    with (
        tracking.parent_run("scale-out", "pipeline", {}) as parent,
        tracking.stage_run(parent, "sft") as child,
    ):
        outcome = train_stage(
            spec.model_copy(update={"mlflow_run_id": child, "tracking_uri": mlflow_store}),
            ScaleOutSettings(num_processes=2),
        )
    assert outcome.num_processes == 2 and outcome.global_step == 3
    assert (tmp_path / "s" / "final" / "model.safetensors").is_file()
    client = MlflowClient()
    losses = client.get_metric_history(child, "loss")
    assert [m.step for m in losses] == [1, 2, 3]  # one value per step: only rank 0 logged
    assert client.get_run(child).data.params["per_device_train_batch_size"] == "4"
    experiment = client.get_run(parent).info.experiment_id
    assert len(client.search_runs([experiment])) == 2  # the workers started no runs of their own
