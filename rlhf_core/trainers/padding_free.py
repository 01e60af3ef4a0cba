"""Padding-free preference batches: the `2B` chosen + rejected rows packed into fewer rows when that computes less.

A right-padded `[2B, T]` batch runs the transformer on `2B * T` positions; HH-RLHF pairs vary a lot in length, so
many of them are padding. Packing the rows' real tokens one after another into k model rows whose position ids
restart at 0 for each sequence lets transformers build a block-diagonal causal mask (no sequence sees another),
so the body computes (almost) only real tokens; `RowLayout` maps each (row, position) of the padded batch to its
place in the packed rows. Whether to pack, and into how many rows, is decided per batch from `BatchCostModel`
(attention over a packed row is quadratic in its length, so a few packed rows often beat one); the SFT trainer's
padding-free collator decides with it too.
Whether a model supports it at all is checked, not assumed: `supports_padding_free` runs a two-row probe both
ways and compares (an encoder such as BERT attends both ways and fails it, so it keeps padded batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf_core.models.module_state import eval_mode
from rlhf_core.trainers.model_setup import unwrap_model

__all__ = [
    "NO_ATTENTION_COST",
    "BatchCostModel",
    "RowLayout",
    "padding_free_cost_model",
    "plan_layout",
    "supports_padding_free",
]


@dataclass(frozen=True)
class BatchCostModel:
    """Forward FLOPs of the transformer body for a batch layout (the LM head only sees loss tokens either way).

    ``dense_per_token``: linear layers, all layers. ``attention_per_pair``: ``QK^T`` and ``AV`` per query-key pair,
    all layers.
    """

    dense_per_token: float
    attention_per_pair: float

    @classmethod
    def from_config(cls, config: Any) -> BatchCostModel | None:
        """From a transformers config with Llama-style field names; None when a field is missing."""
        try:
            hidden = int(config.hidden_size)
            layers = int(config.num_hidden_layers)
            heads = int(config.num_attention_heads)
            kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
            intermediate = int(config.intermediate_size)
        except (AttributeError, TypeError):
            return None
        attention_proj = 2 * hidden * hidden + 2 * hidden * (hidden * kv_heads // heads)
        dense = 2 * layers * (attention_proj + 3 * hidden * intermediate)
        return cls(dense_per_token=float(dense), attention_per_pair=float(4 * hidden * layers))

    def rows_cost(self, n_rows: int, width: int) -> float:
        """``n_rows`` model rows of ``width`` positions: dense work per position, attention per query-key pair."""
        return n_rows * (width * self.dense_per_token + width * width * self.attention_per_pair)

    def padded_cost(self, lengths: Sequence[int]) -> float:
        return self.rows_cost(len(lengths), max(lengths))

    def merged_cost(self, lengths: Sequence[int]) -> float:
        return self.rows_cost(1, sum(lengths))

    def should_merge(self, lengths: Sequence[int]) -> bool:
        return len(lengths) > 1 and self.merged_cost(lengths) < self.padded_cost(lengths)


# Rows of different lengths always merge under it (the probe's layout; tests use it to force padding-free batches).
NO_ATTENTION_COST = BatchCostModel(dense_per_token=1.0, attention_per_pair=0.0)


@dataclass(frozen=True)
class RowLayout:
    """How a right-padded `[R, T]` batch is fed to the model.

    merged: False -> the padded batch as it is. True -> the rows' real tokens packed, row after row, into fewer
    model rows: row r goes to model row `bins[r]` from position `offsets[r]`; every model row is `width` long.
    """

    merged: bool
    bins: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()
    width: int = 0

    def model_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keyword arguments for the model: padded ids + mask, or packed ids + restarting position ids.

        A packed row ends with filler tokens whose positions continue its last sequence: under causal attention
        no real token sees them, and their outputs are never read.
        """
        if not self.merged:
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        n_bins, device = max(self.bins) + 1, input_ids.device
        lengths = attention_mask.sum(dim=1).tolist()
        ids = torch.zeros(n_bins, self.width, dtype=input_ids.dtype, device=device)
        positions = torch.zeros(n_bins, self.width, dtype=torch.long, device=device)
        ends, last = [0] * n_bins, [0] * n_bins
        for r, (b, start) in enumerate(zip(self.bins, self.offsets)):  # 2B rows: a short loop
            n = lengths[r]
            ids[b, start : start + n] = input_ids[r, :n]
            positions[b, start : start + n] = torch.arange(n, device=device)
            if start + n > ends[b]:
                ends[b], last[b] = start + n, n
        for b in range(n_bins):
            positions[b, ends[b] :] = torch.arange(last[b], last[b] + self.width - ends[b], device=device)
        return {"input_ids": ids, "position_ids": positions}

    def gather(self, states: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """`[N, ...]` entries of the model's output (padded `[R, T, ...]` or packed `[k, W, ...]`) at (rows, cols)."""
        if not self.merged:
            return states[rows, cols]
        bins = torch.tensor(self.bins, device=rows.device)
        offsets = torch.tensor(self.offsets, device=rows.device)
        return states[bins[rows], offsets[rows] + cols]


def plan_layout(attention_mask: torch.Tensor, cost_model: BatchCostModel | None) -> RowLayout:
    """The cheapest of: the padded batch, or its rows packed into k model rows (k = 1 .. R-1, longest row first
    into the least-filled model row). Cost: ``k * (W * dense + W^2 * attention)`` for k model rows of width W:
    one long row saves all padding but pays quadratic attention, so a few rows often cost least."""
    n_rows = attention_mask.shape[0]
    if cost_model is None or n_rows < 2:
        return RowLayout(merged=False)
    lengths = attention_mask.sum(dim=1).tolist()
    best_cost, best = cost_model.rows_cost(n_rows, max(lengths)), RowLayout(merged=False)
    order = sorted(range(n_rows), key=lambda r: -lengths[r])
    for n_bins in range(1, n_rows):
        fill, bins, offsets = [0] * n_bins, [0] * n_rows, [0] * n_rows
        for r in order:
            b = min(range(n_bins), key=fill.__getitem__)
            bins[r], offsets[r] = b, fill[b]
            fill[b] += lengths[r]
        cost = cost_model.rows_cost(n_bins, max(fill))
        if cost < best_cost:
            best_cost, best = cost, RowLayout(True, tuple(bins), tuple(offsets), max(fill))
    return best


def padding_free_cost_model(model: nn.Module, setting: bool | None) -> BatchCostModel | None:
    """The cost model when padding-free batches are allowed (``setting`` None: where supported), else None."""
    if setting is False:
        return None
    supported = supports_padding_free(model)
    if setting and not supported:
        raise ValueError(
            f"padding_free=True but {type(unwrap_model(model)).__name__} does not keep rows apart when they are "
            "merged into one row with restarting position ids (e.g. a bidirectional encoder): use "
            "padding_free=None or False."
        )
    return BatchCostModel.from_config(unwrap_model(model).config) if supported else None


@torch.no_grad()
def supports_padding_free(model: nn.Module) -> bool:
    """Whether two rows merged into one row (restarting position ids) give the same outputs as padded rows."""
    inner = unwrap_model(model)
    vocab = int(getattr(inner.config, "vocab_size", 0) or 0)
    if vocab < 8:
        return False
    ids = torch.tensor([[3, 4, 5], [6, 7, 0]], device=_device_of(inner))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], device=ids.device)
    padded_layout = RowLayout(merged=False)
    merged_layout = plan_layout(mask, NO_ATTENTION_COST)
    try:
        with eval_mode(inner):
            padded = _first_output(inner(**padded_layout.model_inputs(ids, mask), use_cache=False))
            merged = _first_output(inner(**merged_layout.model_inputs(ids, mask), use_cache=False))
    except (TypeError, ValueError, RuntimeError):
        return False
    if padded.dim() != 3 or merged.dim() != 3:  # already pooled (e.g. a classifier's [R, 1]): cannot compare
        return _probe_hidden_states(inner, ids, mask, padded_layout, merged_layout)
    return _same_outputs(padded, merged, mask, padded_layout, merged_layout)


def _probe_hidden_states(inner: nn.Module, ids, mask, padded_layout, merged_layout) -> bool:
    base = getattr(inner, "base_model", None)
    if base is None or base is inner:
        return False
    padded = _first_output(base(**padded_layout.model_inputs(ids, mask)))
    merged = _first_output(base(**merged_layout.model_inputs(ids, mask)))
    return _same_outputs(padded, merged, mask, padded_layout, merged_layout)


def _same_outputs(padded, merged, mask, padded_layout: RowLayout, merged_layout: RowLayout) -> bool:
    rows, cols = mask.bool().nonzero(as_tuple=True)
    a, b = padded_layout.gather(padded, rows, cols), merged_layout.gather(merged, rows, cols)
    return bool(torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-3))


def _first_output(output: Any) -> torch.Tensor:
    for name in ("last_hidden_state", "logits"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return output[0]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
