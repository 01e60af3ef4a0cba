"""Real servers for the end-to-end tests: `prefect server start` and `mlflow server` as plain processes.

Each runs on 127.0.0.1 on a free port with its own temporary store. Every process is started in its own
session and stopped by its pid (and the pids of its descendants, found before stopping) in the fixture's
teardown, which runs also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 180.0  # two servers starting at once on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None


def start_process(
    name: str, cmd: list[str], *, env: dict[str, str], log_dir: Path, cwd: Path
) -> ManagedProcess:
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed when the process is stopped)
    popen = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()  # the child holds its own descriptor
    return ManagedProcess(name, popen, log_path)


def stop_processes(procs: list[ManagedProcess], timeout: float = 15.0) -> None:
    """SIGTERM each process and every descendant (by pid, all at once), SIGKILL what is left after `timeout`."""
    family: list[psutil.Process] = []
    for proc in procs:
        try:
            root = psutil.Process(proc.popen.pid)
            family += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5)


def stop_process(proc: ManagedProcess, timeout: float = 15.0) -> None:
    stop_processes([proc], timeout)


def wait_until(
    check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5, procs: tuple = ()
) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` (with the logs of `procs`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                pytest.fail(
                    f"{proc.name} exited (code {proc.popen.returncode}) while waiting for {what}:\n"
                    f"{proc.log_tail()}"
                )
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(interval)
    logs = "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in procs)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2.0).status_code == 200


@dataclass
class Stack:
    root: Path
    prefect_api: str
    mlflow_uri: str
    env: dict[str, str]
    processes: list[ManagedProcess]


def base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """A Prefect server and an MLflow server, both on 127.0.0.1 with temporary SQLite stores."""
    root = tmp_path_factory.mktemp("e2e-stack")
    env = base_env(root)
    prefect_port, mlflow_port = free_port(), free_port()
    server_env = {
        **env,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root}/prefect.db",
        # Schedule the watcher's interval runs promptly, and only a few ahead (fewer SQLite writes).
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "6",
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT30S",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    processes: list[ManagedProcess] = []
    try:
        processes.append(
            start_process(
                "prefect-server",
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                env=server_env,
                log_dir=root,
                cwd=root,
            )
        )
        processes.append(
            start_process(
                "mlflow-server",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    f"sqlite:///{root}/mlflow.db",
                    "--artifacts-destination",
                    str(root / "mlartifacts"),
                ],
                env=env,
                log_dir=root,
                cwd=root,
            )
        )
        prefect_api = f"http://127.0.0.1:{prefect_port}/api"
        mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        wait_until(
            lambda: _http_ok(f"{prefect_api}/health"),
            timeout=STARTUP_TIMEOUT,
            what="prefect server",
            procs=tuple(processes),
        )
        wait_until(
            lambda: _http_ok(f"{mlflow_uri}/health"),
            timeout=STARTUP_TIMEOUT,
            what="mlflow server",
            procs=tuple(processes),
        )
        client_env = {**env, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": mlflow_uri}
        yield Stack(root, prefect_api, mlflow_uri, client_env, processes)
    finally:
        stop_processes(processes)
