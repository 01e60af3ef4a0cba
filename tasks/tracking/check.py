"""Fail fast when the MLflow tracking store is unreachable, and keep credentials out of logs and params.

`ensure_tracking_reachable()` belongs at the very start of a pipeline flow: a training stage that runs for an
hour and then cannot log its model is the failure this prevents. It names the URI (password masked) so the
user knows which setting to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@/\s]+)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|secret[_-]?key))=(?P<value>[^&\s]+)",
    re.IGNORECASE,
)
_SECRET_KEY_NAMES = re.compile(r"password|passwd|secret|token|api[_-]?key|access[_-]?key|credential", re.I)
MASK = "***"


class TrackingServerUnreachable(RuntimeError):
    """The MLflow tracking URI cannot be used; raised before any training starts."""


def mask_credentials(text: str) -> str:
    """`postgresql://user:pw@host/db` -> `postgresql://user:***@host/db`; also `?password=...` / `token=...`."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}={MASK}", text)


def redact_secrets(value: Any) -> Any:
    """A copy of a (nested) config mapping safe to log: secret-named keys masked, URIs' passwords masked.

    Use it on anything passed to `mlflow.log_params` / `log_dict` or to a logger.
    """
    if isinstance(value, Mapping):
        return {
            k: (MASK if isinstance(k, str) and _SECRET_KEY_NAMES.search(k) and v else redact_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_secrets(v) for v in value)
    if isinstance(value, str):
        return mask_credentials(value)
    return value


def _http_auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check_http(uri: str, timeout: float) -> None:
    import httpx

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    auth = (user, password) if user and password else None
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    shown = mask_credentials(uri)
    try:
        response = httpx.get(
            url, params={"max_results": 1}, headers=_http_auth_headers(), auth=auth, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise TrackingServerUnreachable(
            f"MLflow tracking server {shown} is unreachable ({type(exc).__name__}: {exc}). Start it, or point "
            "MLFLOW_TRACKING_URI at a running server (unset it to use the local sqlite store)."
        ) from exc
    if response.status_code in (401, 403):
        raise TrackingServerUnreachable(
            f"MLflow tracking server {shown} refused the credentials (HTTP {response.status_code}); "
            "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN."
        )
    if response.status_code >= 400:
        raise TrackingServerUnreachable(
            f"MLflow tracking server {shown} answered HTTP {response.status_code} to {url.replace(uri, '')}: "
            "is this URI an MLflow tracking server?"
        )


def _local_store_folder(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":  # sqlite:///relative.db or sqlite:////absolute.db
        return Path(uri[len("sqlite:///") :]).parent
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(uri)


def _check_local_store(uri: str) -> None:
    folder = _local_store_folder(uri)
    existing = next((p for p in [folder, *folder.absolute().parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise TrackingServerUnreachable(
            f"MLflow tracking store {mask_credentials(uri)} is not writable (folder {folder})."
        )


def ensure_tracking_reachable(tracking_uri: str | None = None, *, timeout: float = 5.0) -> str:
    """Check the tracking URI (default: MLflow's current one) answers; return it, or raise naming it.

    http(s): one cheap API call (`experiments/search`, max 1) with `timeout` seconds and no retries, so an
    unreachable server fails in seconds instead of after MLflow's minutes of back-off. sqlite/file: the
    store's folder must be writable. Other schemes (databricks, ...) are left to MLflow.
    """
    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        _check_http(tracking_uri, timeout)
    elif scheme in ("sqlite", "file", ""):
        _check_local_store(tracking_uri)
    return tracking_uri
