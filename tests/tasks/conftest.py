"""Fixtures for the pipeline's task tests: one MLflow store per test module (creating the SQLite schema takes
seconds), and tiny stage specs on the offline tiny model."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A fresh SQLite MLflow store for the module; MLFLOW_TRACKING_URI points at it."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(uri)
        yield uri
        mlflow.set_tracking_uri(None)
