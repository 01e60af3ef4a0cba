"""Scale-out fixtures: one local Ray head for the whole session (a real `ray start` process on 127.0.0.1, stopped
through its own process group), the stage data, and reference weights trained once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scale_out_helpers import RAY, ROOT, free_port, stage_spec, stop_process_group


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """``ray start --head`` on 127.0.0.1 with 2 CPUs; yields its address. Its daemons (GCS, raylet, workers)
    share the process group of the ``ray start`` the fixture ran, which teardown signals."""
    pytest.importorskip("ray")
    temp = tmp_path_factory.mktemp("ray")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = temp / "ray-start.log"
    with open(log, "w") as out:
        start = subprocess.Popen(
            [str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
             "2", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp / "t")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        rc = start.wait(timeout=240)
    if rc != 0:
        stop_process_group(start.pid)
        pytest.fail(f"ray start failed ({rc}):\n{log.read_text()[-3000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        stop_process_group(start.pid)


@pytest.fixture(scope="session")
def stage_data(tmp_path_factory) -> dict[str, Path]:
    """32 SFT rows and 32 preference pairs of the bundled synthetic task, saved once."""
    from rlhf_core.data.synthetic import SyntheticTask

    folder = tmp_path_factory.mktemp("stage-data")
    task = SyntheticTask()
    task.sft_dataset(32).save_to_disk(str(folder / "sft"))
    task.preference_dataset(32).save_to_disk(str(folder / "preference"))
    return {"sft": folder / "sft", "reward": folder / "preference", "dpo": folder / "preference"}


@pytest.fixture(scope="session")
def sft_references(stage_data, tmp_path_factory) -> dict[str, Any]:
    """SFT weights after 3 SGD steps of global batch 8: one process (batch 8) and 2 accelerate processes (4
    each) on this machine, the latter logging to a stage run of its own MLflow store (what test_launch checks).
    Trained once for every test that compares a scale-out backend against them."""
    from tasks.config import ScaleOutSettings
    from tasks.tracking import runs as tracking
    from tasks.training.launch import train_stage

    folder = tmp_path_factory.mktemp("sft-references")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        one = train_stage(stage_spec("sft", stage_data["sft"], folder / "one", 8), ScaleOutSettings())
        spec = stage_spec("sft", stage_data["sft"], folder / "accelerate", 4)
        with (
            tracking.parent_run("scale-out", "pipeline", {}) as parent,
            tracking.stage_run(parent, "sft") as child,
        ):
            two = train_stage(spec.model_copy(update={"mlflow_run_id": child, "tracking_uri": uri}),
                              ScaleOutSettings(num_processes=2))  # fmt: skip
    assert (one.num_processes, two.num_processes) == (1, 2)
    return {"one": Path(one.final_dir), "accelerate": Path(two.final_dir), "accelerate_outcome": two,
            "accelerate_runs": {"uri": uri, "parent": parent, "child": child}}  # fmt: skip
