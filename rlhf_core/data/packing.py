"""Packing tokenised SFT rows into rows of at most ``max_length`` tokens (best-fit decreasing).

Each packed row keeps ``seq_lengths``, the lengths of its documents in order; :class:`~rlhf_core.data.collators.
SFTCollator` turns them into position ids that restart at 0 per document, which is what makes transformers block
attention across documents. Documents longer than ``max_length`` follow ``overlong``: ``"truncate"`` (default,
keep the first ``max_length`` tokens, as tokenisation does), ``"split"`` (cut into ``max_length`` pieces, each
packed as its own document, so later pieces lose the earlier context; pieces without a loss token are dropped) or
``"drop"``. Counts are logged as an :class:`~rlhf_core.data.tokenization.OverlongReport`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from datasets import Dataset

from rlhf_core.data.tokenization import OverlongReport

logger = logging.getLogger(__name__)

PackOverlong = Literal["truncate", "split", "drop"]


class _SpaceIndex:
    """Bins by remaining space; finds the bin with the smallest space >= n in O(log max_length).

    A segment tree over space values 0..capacity whose nodes say whether any bin has a space in their range.
    """

    def __init__(self, capacity: int):
        self.size = 1 << max(1, capacity).bit_length()
        self.tree = [False] * (2 * self.size)
        self.bins: dict[int, list[int]] = {}

    def _set(self, space: int, flag: bool) -> None:
        node = space + self.size
        self.tree[node] = flag
        node //= 2
        while node:
            self.tree[node] = self.tree[2 * node] or self.tree[2 * node + 1]
            node //= 2

    def add(self, space: int, bin_id: int) -> None:
        if space <= 0:
            return
        self.bins.setdefault(space, []).append(bin_id)
        self._set(space, True)

    def pop_best_fit(self, need: int) -> tuple[int, int] | None:
        """Remove and return ``(space, bin_id)`` of the tightest bin with ``space >= need``, or None."""
        node = need + self.size
        if not self.tree[node]:
            while node > 1 and not (node % 2 == 0 and self.tree[node + 1]):
                node //= 2
            if node <= 1:
                return None
            node += 1
            while node < self.size:
                node = 2 * node if self.tree[2 * node] else 2 * node + 1
        space = node - self.size
        stack = self.bins[space]
        bin_id = stack.pop()
        if not stack:
            del self.bins[space]
            self._set(space, False)
        return space, bin_id


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of total length <= ``capacity``: longest first, each into the bin it fills
    most tightly (a new bin when none fits). Items must be 1..capacity long."""
    index = _SpaceIndex(capacity)
    bins: list[list[int]] = []
    for item in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[item]
        if not 0 < n <= capacity:
            raise ValueError(f"item {item} has length {n}, outside 1..{capacity}")
        found = index.pop_best_fit(n)
        if found is None:
            bins.append([item])
            index.add(capacity - n, len(bins) - 1)
        else:
            space, bin_id = found
            bins[bin_id].append(item)
            index.add(space - n, bin_id)
    return bins


def _documents(ids: list[list[int]], masks: list[list[int]], max_length: int, overlong: str):
    docs, report = [], OverlongReport(total=len(ids), max_length=max_length, policy=overlong)
    for seq, mask in zip(ids, masks):
        if len(seq) <= max_length:
            docs.append((seq, mask))
        elif overlong == "drop":
            report.dropped += 1
        elif overlong == "truncate":
            report.truncated += 1
            docs.append((seq[:max_length], mask[:max_length]))
        else:
            report.truncated += 1
            pieces = [
                (seq[k : k + max_length], mask[k : k + max_length]) for k in range(0, len(seq), max_length)
            ]
            docs.extend(piece for piece in pieces if any(piece[1]))
    return [d for d in docs if d[0]], report


def pack_dataset(
    dataset: Dataset, max_length: int, strategy: str = "bfd", *, overlong: PackOverlong = "truncate"
) -> Dataset:
    """Pack tokenised rows (``input_ids`` and optional ``completion_mask``) into rows of <= ``max_length`` tokens.

    Returns ``Dataset[input_ids, completion_mask, seq_lengths]``; ``seq_lengths`` sums to the row's length.
    Only ``strategy="bfd"`` (best-fit decreasing) exists; it wastes little space and keeps documents whole.
    """
    if strategy != "bfd":
        raise ValueError(f"unknown packing strategy {strategy!r}; available: 'bfd' (best-fit decreasing)")
    if overlong not in ("truncate", "split", "drop"):
        raise ValueError(f"overlong must be 'truncate', 'split' or 'drop', got {overlong!r}")
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if "input_ids" not in dataset.column_names:
        raise ValueError(f"pack_dataset needs an 'input_ids' column; got {dataset.column_names}")
    columns = dataset.select_columns(
        [c for c in ("input_ids", "completion_mask") if c in dataset.column_names]
    )[:]
    ids = [list(seq) for seq in columns["input_ids"]]
    given = columns.get("completion_mask", [None] * len(ids))
    masks = [[1] * len(seq) if mask is None else list(mask) for seq, mask in zip(ids, given)]
    docs, report = _documents(ids, masks, max_length, overlong)
    report.log(logger, "packed documents")
    packed: dict[str, list] = {"input_ids": [], "completion_mask": [], "seq_lengths": []}
    for members in best_fit_decreasing([len(d[0]) for d in docs], max_length):
        packed["input_ids"].append([t for m in members for t in docs[m][0]])
        packed["completion_mask"].append([x for m in members for x in docs[m][1]])
        packed["seq_lengths"].append([len(docs[m][0]) for m in members])
    total = sum(len(r) for r in packed["input_ids"])
    logger.info(
        "packed %d documents into %d rows of <= %d tokens (fill %.1f%%)",
        len(docs), len(packed["input_ids"]), max_length, 100.0 * total / max(1, len(packed["input_ids"]) * max_length),
    )  # fmt: skip
    return Dataset.from_dict(packed)
