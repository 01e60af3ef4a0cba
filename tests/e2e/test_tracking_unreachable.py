"""The tracking server is down: the pipeline flow fails in seconds, before any training, naming the URI
(without its password)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.pipeline import rlhf_pipeline
from tasks.config import PipelineConfig
from tasks.tracking.check import TrackingServerUnreachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_pipeline_fails_before_training_when_mlflow_is_unreachable(tmp_path, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://rlhf:hunter2@127.0.0.1:{port}")
    config = PipelineConfig.model_validate({"name": "down", "output_dir": str(tmp_path / "outputs")})
    with prefect_test_harness(server_startup_timeout=120):
        start = time.perf_counter()
        state = rlhf_pipeline(config, return_state=True)
        elapsed = time.perf_counter() - start
        assert state.is_failed()
        with pytest.raises(TrackingServerUnreachable) as err:
            state.result()
    message = str(err.value)
    assert f"http://rlhf:***@127.0.0.1:{port}" in message and "unreachable" in message
    assert "hunter2" not in message
    print(f"failed after {elapsed:.1f} s")
    assert elapsed < 60, f"took {elapsed:.0f} s to fail"
    assert not Path(tmp_path / "outputs").exists(), "something was prepared or trained before the check"
