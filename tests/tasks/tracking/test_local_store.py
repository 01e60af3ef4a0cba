"""A new local MLflow store is a copy of an empty migrated one (`tasks.tracking.local_store`), with MLflow's
Default experiment created in its own folder."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tasks.tracking.local_store import seed_sqlite_store


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("rlhf-cache")
        patch.setenv("RLHF_CACHE", str(folder))
        yield folder


def _store(folder, monkeypatch):
    folder.mkdir()
    monkeypatch.chdir(folder)  # MLflow puts a SQLite store's default artifact root under the working folder
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    seed_sqlite_store(uri)
    assert (folder / "mlflow.db").is_file()  # the copy, before MLflow opens the store
    return uri, MlflowClient(tracking_uri=uri)


def test_new_stores_are_copies_with_their_own_default_experiment(tmp_path, cache, monkeypatch):
    _, a = _store(tmp_path / "a", monkeypatch)
    assert a.get_experiment("0").artifact_location == str(tmp_path / "a" / "mlruns" / "0")
    _, b = _store(tmp_path / "b", monkeypatch)
    assert list(cache.glob("mlflow-empty-store-*.db"))  # built once, copied twice
    assert b.get_experiment("0").artifact_location == str(tmp_path / "b" / "mlruns" / "0")
    run = a.create_run(a.create_experiment("exp"))
    a.log_metric(run.info.run_id, "loss", 0.5)
    assert a.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    assert b.search_experiments() and b.get_experiment_by_name("exp") is None  # nothing shared


def test_an_existing_store_and_other_uris_are_left_alone(tmp_path, cache):
    existing = tmp_path / "mlflow.db"
    existing.write_bytes(b"not a copy")
    seed_sqlite_store(f"sqlite:///{existing}")
    assert existing.read_bytes() == b"not a copy"
    seed_sqlite_store("http://127.0.0.1:5000")
    seed_sqlite_store(f"sqlite:///{tmp_path / 'missing-folder' / 'mlflow.db'}")
    assert not (tmp_path / "missing-folder").exists()
