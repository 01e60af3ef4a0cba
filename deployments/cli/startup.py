"""Start-up work of ``rlhf run`` / ``rlhf train`` done alongside the config check instead of after it.

Without PREFECT_API_URL, Prefect boots a local API server (a subprocess) at the first flow call, and MLflow creates
its local SQLite store's tables at the first tracking call: seconds each. `LocalPrefectApi` boots the server in a
thread as soon as the command starts, so its subprocess comes up on another core while this process checks the
config and imports the flow; `TrackingStore` imports MLflow meanwhile and creates the store once the config is
valid. A config error cancels both: no server is left running and no ``mlflow.db`` is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

__all__ = ["LocalPrefectApi", "TrackingStore", "prefect_api_configured"]


def prefect_api_configured() -> bool:
    """True when Prefect talks to a server (PREFECT_API_URL, from the environment or the active profile)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _daemon(target: Any, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class LocalPrefectApi:
    """The local Prefect API, booted in the background when no API is configured (else nothing happens)."""

    def __init__(self) -> None:
        # A busy laptop can take longer than Prefect's 20 s default for the local server to answer, and that
        # server would otherwise try to send usage analytics (an error line when offline).
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        self._lock = threading.Lock()
        self._cancelled = False
        self._server: Any = None
        self._thread = _daemon(self._boot, "prefect-api-start")

    def _boot(self) -> None:
        try:
            from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED

            if prefect_api_configured() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
                return
            from prefect.server.api.server import SubprocessASGIServer

            server = SubprocessASGIServer()  # the instance Prefect's client uses when no API URL is set
            with self._lock:
                if self._cancelled:
                    return
                self._server = server
            server.start()
        except Exception:  # a change in Prefect's internals, or a cancel mid-start: the flow call starts it
            return

    def ready(self) -> None:
        """Wait until the server answers (or the boot gave up: Prefect then starts it itself)."""
        self._thread.join()

    def cancel(self) -> None:
        """Stop what was started (the config was invalid: no flow runs)."""
        with self._lock:
            self._cancelled = True
            server = self._server
        if server is not None:
            quiet = logging.getLogger("prefect")  # its "Stopping temporary server" line: a server nobody used
            level, quiet.level = quiet.level, logging.WARNING
            try:
                with contextlib.suppress(Exception):
                    server.stop()
            finally:
                quiet.level = level


class TrackingStore:
    """MLflow imported in the background; the local store created once `create` is called (a valid config)."""

    def __init__(self) -> None:
        self._go = threading.Event()
        self._cancelled = False
        self._thread = _daemon(self._prepare, "mlflow-store")

    def _prepare(self) -> None:
        with contextlib.suppress(Exception):  # the flow checks the store itself and reports what is wrong
            from tasks.tracking.runs import prepare_local_store

            self._go.wait()
            if not self._cancelled:
                prepare_local_store()

    def create(self) -> None:
        self._go.set()

    def cancel(self) -> None:
        self._cancelled = True
        self._go.set()

    def ready(self) -> None:
        self._thread.join()
