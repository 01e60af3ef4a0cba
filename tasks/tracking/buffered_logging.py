"""Step metrics that outlive a tracking server going away while a stage trains.

transformers' `MLflowCallback` logs every ``logging_steps``. With the server gone, each call retries for about
four minutes (MLflow's default: 7 retries with back-off) and then raises inside `Trainer.train`, which ends
training at that step. Here every call is one fast attempt; a call that fails while the server does not answer is
kept (in order) and training goes on. Later calls first send what is kept, at most every `RETRY_SECONDS`. When
training ends, what is still kept is sent as soon as the server answers, waiting up to `RECOVERY_SECONDS`
(``RLHF_TRACKING_RECOVERY_SECONDS``); if it never does, the stage fails with `TrackingServerUnreachable` naming
the URI (password masked), after training finished and its checkpoints were written, so a re-run resumes from the
last one. A call the server answers with an error (a bad value) raises as before: only an absent server is waited
out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from tasks.tracking.check import TrackingServerUnreachable, ensure_tracking_reachable, mask_credentials
from tasks.tracking.environment import environment

__all__ = ["RETRY_SECONDS", "BufferedLogging", "give_up_on_server"]

RETRY_SECONDS = 20.0
_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def recovery_seconds() -> float:
    return float(os.environ.get("RLHF_TRACKING_RECOVERY_SECONDS", "60"))


def give_up_on_server() -> None:
    """The server is gone for this process: every later MLflow call fails at once (closing runs, MLflow's own
    exit handler) instead of retrying for minutes each."""
    os.environ.update(_FAST)


def _server_answers(uri: str) -> bool:
    try:
        ensure_tracking_reachable(uri, timeout=5.0)
    except TrackingServerUnreachable:
        return False
    return True


class BufferedLogging:
    """The mlflow module for `MLflowCallback`: log_params / log_metrics synchronous, kept while the server is away."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self._kept: list[tuple[str, Any, dict[str, Any]]] = []
        self._last_try = 0.0
        self._first_failure: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def log_params(self, params: Mapping[str, Any], synchronous: bool | None = None, **kwargs: Any) -> None:
        self._log("log_params", dict(params), kwargs)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, synchronous: bool | None = None,
                    **kwargs: Any) -> None:  # fmt: skip
        self._log("log_metrics", dict(metrics), {"step": step, **kwargs})

    @property
    def kept(self) -> int:
        return len(self._kept)

    def _log(self, name: str, payload: Any, kwargs: dict[str, Any]) -> None:
        self._kept.append((name, payload, kwargs))
        if len(self._kept) == 1 or time.monotonic() - self._last_try >= RETRY_SECONDS:
            self._send_kept()

    def _send_kept(self) -> bool:
        """Send what is kept, oldest first; False (and keep the rest) when the server does not answer."""
        self._last_try = time.monotonic()
        uri = self._module.get_tracking_uri()
        while self._kept:
            name, payload, kwargs = self._kept[0]
            try:
                with environment(_FAST):
                    getattr(self._module, name)(payload, synchronous=True, **kwargs)
            except Exception as err:
                if _server_answers(uri):
                    raise  # the server is there and refused the call: a real error
                if self._first_failure is None:
                    step = kwargs.get("step")
                    self._first_failure = (
                        f"{'at step ' + str(step) if step is not None else 'at start'}: {err}"
                    )
                return False
            self._kept.pop(0)
        return True

    def finish(self, output_dir: str, global_step: int) -> None:
        """End of training: send what is kept once the server answers, else raise `TrackingServerUnreachable`."""
        if not self._kept:
            return
        uri = self._module.get_tracking_uri()
        deadline = time.monotonic() + recovery_seconds()
        while not self._send_kept():
            if time.monotonic() >= deadline:
                give_up_on_server()
                raise TrackingServerUnreachable(
                    f"MLflow tracking server {mask_credentials(uri)} stopped answering while the stage trained "
                    f"(first failed call {mask_credentials(self._first_failure or '')}). Training went on to step "
                    f"{global_step}; its checkpoints are kept in {output_dir}; {len(self._kept)} metric/param "
                    "logs could not be sent. Start the server again and re-run: the stage resumes from its last "
                    "checkpoint."
                )
            time.sleep(2.0)
