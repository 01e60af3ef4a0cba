"""Fixtures for the pipeline flow tests: one Prefect test harness per session (it starts a server process, which
is slow), one MLflow store per module, and a tiny pipeline config (a few steps per stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory):
    """A folder with the module's MLflow store (MLFLOW_TRACKING_URI) and pipeline outputs."""
    import mlflow

    root = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(uri)
        yield root
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def tiny_config(pipeline_root):
    """``tiny_config(**sections)``: the raw mapping of a tiny pipeline under the module's folder."""
    return lambda **sections: _tiny_raw_config(pipeline_root, **sections)


def _tiny_raw_config(root: Path, **sections: Any) -> dict[str, Any]:
    """A pipeline that trains each stage for a couple of steps on a few synthetic rows."""
    common = {"logging_steps": 1, "save_steps": 1, "disable_tqdm": True}
    raw: dict[str, Any] = {
        "name": "tiny",
        "output_dir": str(root / "outputs"),
        "data": {
            "sft": {"source": "synthetic", "num_examples": 16},
            "preference": {"source": "synthetic", "num_examples": 16},
            "ppo": {"source": "synthetic", "num_examples": 8},
            "eval": {"source": "synthetic", "num_examples": 4, "split": "heldout"},
        },
        "stages": {
            "sft": {"args": {"max_steps": 2, "per_device_train_batch_size": 8, "max_length": 48, **common}},
            "reward": {
                "args": {"max_steps": 2, "per_device_train_batch_size": 8, "max_length": 48, **common}
            },
            "dpo": {"args": {"max_steps": 2, "per_device_train_batch_size": 8, "max_length": 48, **common}},
            "ppo": {"args": {"max_steps": 1, "batch_size": 4, "response_length": 6, **common}},
        },
        "evaluation": {"max_new_tokens": 6, "num_samples": 2, "batch_size": 4},
        "tracking": {"experiment_name": "tiny", "registered_model_name": "tiny-policy"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw
