"""Tracking reachability check (fails fast, names the URI) and credential masking."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tasks.tracking.check import (
    TrackingServerUnreachable,
    ensure_tracking_reachable,
    mask_credentials,
    redact_secrets,
)


def test_mask_credentials_hides_passwords_in_uris_and_query_strings():
    assert mask_credentials("postgresql+psycopg2://mlflow:s3cr3t@db:5432/mlflow") == (
        "postgresql+psycopg2://mlflow:***@db:5432/mlflow"
    )
    assert (
        mask_credentials("see http://u:p@h/x and s3://k:v@b/y") == "see http://u:***@h/x and s3://k:***@b/y"
    )
    assert (
        mask_credentials("https://h/api?token=abc&x=1&password=pw")
        == "https://h/api?token=***&x=1&password=***"
    )
    assert mask_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_redact_secrets_masks_secret_keys_and_nested_uris():
    config = {
        "tracking": {"uri": "postgresql://a:pw@h/db", "experiment": "rlhf"},
        "aws_secret_access_key": "AKIA-SECRET",
        "api_key": "k",
        "steps": [1, "http://x:y@z"],
        "empty_token": "",
    }
    safe = redact_secrets(config)
    assert safe == {
        "tracking": {"uri": "postgresql://a:***@h/db", "experiment": "rlhf"},
        "aws_secret_access_key": "***",
        "api_key": "***",
        "steps": [1, "http://x:***@z"],
        "empty_token": "",
    }
    assert config["api_key"] == "k"  # a copy, not in place


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_naming_the_uri_without_its_password():
    uri = f"http://admin:hunter2@127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    with pytest.raises(TrackingServerUnreachable) as err:
        ensure_tracking_reachable(uri, timeout=2.0)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert f"http://admin:***@127.0.0.1:{uri.rsplit(':', 1)[1]}" in message and "unreachable" in message
    assert "hunter2" not in message


@pytest.fixture
def fake_tracking_server():
    """An HTTP server whose status for the experiments-search call the test chooses."""
    state = {"status": 200, "paths": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            state["paths"].append(self.path)
            body = json.dumps({"experiments": []}).encode()
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_reachable_server_passes_and_http_errors_are_explained(fake_tracking_server):
    uri, state = fake_tracking_server
    assert ensure_tracking_reachable(uri) == uri
    assert state["paths"][0].startswith("/api/2.0/mlflow/experiments/search?max_results=1")
    state["status"] = 401
    with pytest.raises(TrackingServerUnreachable, match="refused the credentials"):
        ensure_tracking_reachable(uri)
    state["status"] = 404
    with pytest.raises(TrackingServerUnreachable, match="is this URI an MLflow tracking server"):
        ensure_tracking_reachable(uri)


def test_local_stores_need_a_writable_folder(tmp_path, monkeypatch):
    assert (
        ensure_tracking_reachable(f"sqlite:///{tmp_path}/sub/mlflow.db")
        == f"sqlite:///{tmp_path}/sub/mlflow.db"
    )
    assert ensure_tracking_reachable(tmp_path.as_uri())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(TrackingServerUnreachable, match="not writable"):
        ensure_tracking_reachable(f"sqlite:///{blocker}/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(TrackingServerUnreachable, match="127.0.0.1"):
        ensure_tracking_reachable(timeout=1.0)  # default: MLflow's current tracking URI
