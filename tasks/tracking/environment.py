"""``os.environ`` changed for one block: MLflow and transformers' MLflow callback read their settings from it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

__all__ = ["environment"]


@contextlib.contextmanager
def environment(updates: Mapping[str, str | None]) -> Iterator[None]:
    """Set each key of ``updates`` (None: remove it) for the block, then restore what was there."""
    saved = {key: os.environ.get(key) for key in updates}
    for key, value in updates.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
