"""Test-wide environment: offline hub, quiet Prefect with a private home, one working folder per test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

# Set before transformers/prefect are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="rlhf-prefect-home-"))
os.environ.setdefault("WANDB_DISABLED", "true")
# Passed config checks are remembered per session, not in the user's cache (tasks.check_cache).
os.environ.setdefault("RLHF_CHECK_CACHE", str(Path(tempfile.mkdtemp(prefix="rlhf-checks-")) / "checks.json"))
# The ephemeral Prefect API needs more than its default 20 s to start on a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Each test runs in its own folder so MLflow's default sqlite store and outputs never collide."""
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tiny model's ops are far too small to gain from threads; on a shared 2-core machine extra threads
    only contend (a tiny-model test measured ~10x slower with 2 threads under load)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _fresh_compiled_flex_attention(request):
    """torch 2.13's inductor emits C++ that does not compile for a flex_attention kernel recompiled after another
    test compiled one with other shapes (seen in the full suite only). Tests that use flex_attention start from a
    clean torch.compile state."""
    if "flex" in request.node.name or "flex" in request.node.nodeid.split("::")[0]:
        import torch

        torch._dynamo.reset()
    yield


@pytest.fixture(autouse=True)
def _isolated_tracking_state():
    """MLflow keeps the experiment chosen by `set_experiment` in a module global and in MLFLOW_EXPERIMENT_ID; with a
    new sqlite store per test folder, a leftover id names an experiment that does not exist there. Each test starts
    and ends with a clean environment and no active run."""
    saved_env = dict(os.environ)
    yield
    import sys

    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        while fluent.active_run() is not None:
            fluent.end_run()
        fluent._active_experiment_id = None
    os.environ.clear()
    os.environ.update(saved_env)


# ---- the pipeline: one Prefect test harness per session (it starts a server process, which is slow), one MLflow
# store per module, and a tiny pipeline config (a few steps per stage); used by tests/flows and tests/deployments.
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


def pytest_sessionstart(session):
    """Under CI the real-data tests must run: a missing HH-RLHF file would turn them into skips, so CI stops here
    instead (CI lays a copy of shared/ beside the checkout)."""
    if os.environ.get("CI", "").lower() in ("", "0", "false"):
        return
    from rlhf_core.data.hh_rlhf import default_hh_rlhf_path

    path = default_hh_rlhf_path()
    if not path.is_file():
        raise pytest.UsageError(
            f"CI: the HH-RLHF file is missing at {path}; the real-data tests would only skip"
        )
