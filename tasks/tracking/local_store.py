"""A new local MLflow store (``sqlite:///.../mlflow.db``) starts as a copy of an empty, already-migrated one.

MLflow creates a SQLite store by running its whole chain of schema migrations, each in its own transaction: about
2 CPU seconds, and on a shared disk 10 s of fsync waits (measured: 10.5 s wall for 2.1 CPU s, 3,600 waits), paid
by the first run in every folder and by every test that tracks. The empty schema is the same for one MLflow
version, so it is built once per version in the user cache and copied. The one row that depends on where a store
lives, MLflow's Default experiment (its artifact folder), is left out of the copy: MLflow adds it on first use,
with this folder's location, as it does for a store it created itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

from tasks.check_cache import user_cache_dir

__all__ = ["seed_sqlite_store"]


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    return None if not path or path == ":memory:" else Path(path)


def _publish(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` unless another process got there first (its copy is as good)."""
    try:
        os.link(tmp, target)  # fails if target exists: an atomic create-if-absent
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _template() -> Path:
    """The empty store of this MLflow version (built on first use)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    template = user_cache_dir() / f"mlflow-empty-store-{mlflow.__version__}.db"
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)  # migrates it
    with contextlib.closing(sqlite3.connect(tmp)) as db, db:
        db.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")
    _publish(tmp, template)
    return template


def seed_sqlite_store(uri: str) -> None:
    """Put an empty, migrated store at ``uri`` when it is a SQLite file that does not exist yet; else nothing.
    Anything unexpected leaves the file absent, and MLflow creates it the usual way."""
    target = _sqlite_file(uri)
    if target is None or target.exists() or not target.parent.is_dir():
        return
    with contextlib.suppress(Exception):  # MLflow's own creation path remains
        template = _template()
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, tmp)
        _publish(tmp, target)
