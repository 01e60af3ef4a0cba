"""Carry each training row's index through the data loader so a failing batch can be named.

The training set gets an integer column ``ROW_ID_COLUMN`` (its position in the dataset the trainer trains on) and the
collator is wrapped so that each batch carries the ``row_ids`` of its rows; the trainer pops them before the forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

ROW_ID_COLUMN = "__row_id__"
ROW_IDS_KEY = "__row_ids__"


def with_row_ids(dataset: Any) -> Any:
    """Return a `datasets.Dataset` with a row-index column added, or ``dataset`` unchanged for other kinds."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a runtime dependency
        return dataset
    if not isinstance(dataset, datasets.Dataset) or ROW_ID_COLUMN in dataset.column_names:
        return dataset
    return dataset.add_column(ROW_ID_COLUMN, list(range(len(dataset))))


class RowIdCollator:
    """Wraps a collator: strips the row-index field from the features and adds it to the batch as a tensor."""

    def __init__(self, collator: Callable[[list[Any]], Any]) -> None:
        self.collator = collator

    def __call__(self, features: list[Any]) -> Any:
        if not features or not isinstance(features[0], Mapping) or ROW_ID_COLUMN not in features[0]:
            return self.collator(features)
        row_ids = [int(f[ROW_ID_COLUMN]) for f in features]
        stripped = [{k: v for k, v in f.items() if k != ROW_ID_COLUMN} for f in features]
        batch = self.collator(stripped)
        if isinstance(batch, dict):
            batch[ROW_IDS_KEY] = torch.tensor(row_ids, dtype=torch.long)
        return batch


def describe_rows(row_ids: list[int] | None, limit: int = 8) -> str:
    """'rows [3, 17, ...]' for a message (or 'rows unknown' when the dataset carried no index)."""
    if not row_ids:
        return "rows unknown"
    shown = ", ".join(str(i) for i in row_ids[:limit])
    more = f", ... ({len(row_ids)} rows)" if len(row_ids) > limit else ""
    return f"rows [{shown}{more}]"
