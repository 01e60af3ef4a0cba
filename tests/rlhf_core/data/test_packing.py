"""Packing: best-fit decreasing, over-long documents, and what the packed rows do to the dataset."""

from __future__ import annotations

import logging
import random

import pytest
from datasets import Dataset

from rlhf_core.data.packing import best_fit_decreasing, pack_dataset


def test_best_fit_decreasing_hand_worked():
    # 6 opens bin 0 (4 left); 5 opens bin 1 (5 left); 4 fits bin 0 exactly (tightest); 3 -> bin 1 (2 left); 2 -> bin 1
    assert best_fit_decreasing([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    # ties keep the original order; an exact fit beats an earlier roomier bin
    assert best_fit_decreasing([3, 3, 7, 1], 10) == [[2, 0], [1, 3]]
    with pytest.raises(ValueError, match="outside"):
        best_fit_decreasing([11], 10)


def test_best_fit_decreasing_is_tight_and_complete():
    rng = random.Random(0)
    for capacity in (16, 64, 100):
        lengths = [rng.randint(1, capacity) for _ in range(300)]
        bins = best_fit_decreasing(lengths, capacity)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # every item exactly once
        assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
        _replay_checks_best_fit(bins, lengths, capacity)
        lower_bound = -(-sum(lengths) // capacity)
        assert len(bins) <= lower_bound * 1.25 + 1  # BFD is within 11/9 OPT + 6/9; plenty of slack here


def _replay_checks_best_fit(bins, lengths, capacity):
    """Re-run the placements longest first: a new bin only when no bin had room, else the tightest one."""
    where = {i: k for k, b in enumerate(bins) for i in b}
    space: dict[int, int] = {}
    for item in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n, k = lengths[item], where[item]
        candidates = [s for s in space.values() if s >= n]
        if k not in space:
            assert not candidates, f"item {item} opened a new bin although one had room"
            space[k] = capacity - n
        else:
            assert space[k] == min(candidates), f"item {item} did not go into the tightest bin"
            space[k] -= n


def _tokenised(rows):
    return Dataset.from_list(rows)


def test_pack_dataset_keeps_every_document_intact():
    rng = random.Random(1)
    rows = []
    for d in range(40):
        n = rng.randint(1, 30)
        rows.append({"input_ids": [1000 + d] * n, "completion_mask": [rng.randint(0, 1) for _ in range(n)]})
    packed = pack_dataset(_tokenised(rows), max_length=32)
    assert set(packed.column_names) == {"input_ids", "completion_mask", "seq_lengths"}
    seen = []
    for row in packed:
        assert len(row["input_ids"]) <= 32 and sum(row["seq_lengths"]) == len(row["input_ids"])
        assert len(row["completion_mask"]) == len(row["input_ids"])
        start = 0
        for n in row["seq_lengths"]:
            seen.append((row["input_ids"][start : start + n], row["completion_mask"][start : start + n]))
            start += n
    assert sorted(map(str, seen)) == sorted(str((r["input_ids"], r["completion_mask"])) for r in rows)
    assert len(packed) < len(rows) / 2  # documents really share rows


def test_pack_dataset_without_completion_mask_trains_on_everything():
    packed = pack_dataset(_tokenised([{"input_ids": [1, 2]}, {"input_ids": [3]}]), max_length=4)
    assert packed[0] == {"input_ids": [1, 2, 3], "completion_mask": [1, 1, 1], "seq_lengths": [2, 1]}


def test_pack_dataset_overlong_policies(caplog):
    rows = _tokenised(
        [
            {"input_ids": list(range(1, 11)), "completion_mask": [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]},
            {"input_ids": [7, 8]},
        ]
    )
    with caplog.at_level(logging.WARNING, logger="rlhf_core.data.packing"):
        truncated = pack_dataset(rows, max_length=4)
    assert "1 truncated, 0 dropped" in caplog.text
    assert [r["input_ids"] for r in truncated] == [[1, 2, 3, 4], [7, 8]]
    split = pack_dataset(rows, max_length=4, overlong="split")
    # pieces [1..4] (no loss token: dropped), [5..8], [9, 10]; then [7, 8] joins the [9, 10] piece
    assert sorted(r["input_ids"] for r in split) == [[5, 6, 7, 8], [9, 10, 7, 8]]
    dropped = pack_dataset(rows, max_length=4, overlong="drop")
    assert [r["input_ids"] for r in dropped] == [[7, 8]]


def test_pack_dataset_arguments():
    rows = _tokenised([{"input_ids": [1]}])
    with pytest.raises(ValueError, match="unknown packing strategy"):
        pack_dataset(rows, 8, strategy="wrapped")
    with pytest.raises(ValueError, match="input_ids"):
        pack_dataset(_tokenised([{"text": "x"}]), 8)
    with pytest.raises(ValueError, match="overlong"):
        pack_dataset(rows, 8, overlong="wrap")
