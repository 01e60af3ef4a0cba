"""Test-wide environment: offline hub, quiet Prefect with a private home, one working folder per test."""

from __future__ import annotations

import os
import tempfile

# Set before transformers/prefect are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="rlhf-prefect-home-"))
os.environ.setdefault("WANDB_DISABLED", "true")
# The ephemeral Prefect API needs more than its default 20 s to start on a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Each test runs in its own folder so MLflow's default sqlite store and outputs never collide."""
    monkeypatch.chdir(tmp_path)
    yield
