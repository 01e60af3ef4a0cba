"""Padding-free SFT batches: the rows of a micro-batch concatenated into one row, when that computes less.

A padded batch of rows with lengths ``L_1..L_B`` runs the transformer on ``B * max(L)`` positions, most of them
padding when lengths vary (HH-RLHF transcripts: median 127 tokens, so a batch of 4 padded to its longest row is
about half padding). Concatenating the rows into one row of ``sum(L)`` tokens whose position ids restart at 0 for
each row - what packing does, but within one micro-batch - removes that work: transformers builds a block-diagonal
causal mask from the restarting position ids, so no row attends to another and every per-row loss is unchanged
(`tests/rlhf_core/trainers/test_sft_equivalence.py` checks it). The price is attention over a longer row
(``sum(L)^2`` instead of ``B * max(L)^2`` query-key pairs; the CPU attention kernels do not skip masked blocks),
so a batch of rows that are already full (packed rows) is better left as it is. `BatchCostModel`
(`rlhf_core.trainers.padding_free`, shared with the preference trainers) decides per micro-batch from the model's
shape.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlhf_core.trainers.padding_free import BatchCostModel


def reads_packed_position_ids(model: Any) -> bool:
    """Whether the model builds its attention mask with transformers' ``create_causal_mask`` (which turns restarting
    position ids into a block-diagonal mask on eager, sdpa, flex and flash attention alike)."""
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        model = get_base_model()
    decoder = getattr(model, "model", None) or getattr(model, "base_model", None) or model
    module = sys.modules.get(type(decoder).__module__)
    return module is not None and hasattr(module, "create_causal_mask")


def merge_rows(features: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """One packed feature (``input_ids``, ``completion_mask``, ``seq_lengths``) holding every row in order."""
    merged: dict[str, list] = {"input_ids": [], "completion_mask": [], "seq_lengths": []}
    for feature in features:
        ids = list(feature["input_ids"])
        mask = feature.get("completion_mask")
        merged["input_ids"] += ids
        merged["completion_mask"] += [1] * len(ids) if mask is None else list(mask)
        lengths = feature.get("seq_lengths")
        merged["seq_lengths"] += [len(ids)] if lengths is None else list(lengths)
    return merged


class PaddingFreeCollator:
    """Wraps an `SFTCollator`: merges a micro-batch into one row when ``cost_model`` says it computes less
    (always when ``cost_model`` is None)."""

    def __init__(
        self, collator: Callable[[list[Any]], Any], cost_model: BatchCostModel | None = None
    ) -> None:
        self.collator = collator
        self.cost_model = cost_model

    def __call__(self, features: list[Any]) -> Any:
        if len(features) > 1 and self._merge([len(f["input_ids"]) for f in features]):
            return self.collator([merge_rows(features)])
        return self.collator(features)

    def _merge(self, lengths: list[int]) -> bool:
        return self.cost_model is None or self.cost_model.should_merge(lengths)
