"""Collators: lists of tokenised rows -> padded torch tensors.

Padding is placed by length, never inferred from token ids, so a tokenizer whose pad token is its eos is safe.
Labels are aligned with ``input_ids`` (not shifted; the model or trainer shifts) and hold -100 wherever no loss
applies. ``pad_to_multiple_of`` rounds the padded length up (tensor-core friendly shapes on GPUs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


def _padded_length(lengths: Sequence[int], multiple: int | None) -> int:
    longest = max(lengths, default=0)
    if multiple:
        longest = -(-longest // multiple) * multiple
    return longest


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    value: int,
    *,
    side: str = "right",
    pad_to_multiple_of: int | None = None,
    dtype: torch.dtype = torch.long,
) -> torch.Tensor:
    """``[len(sequences), T]`` tensor with the sequences placed on the left (``side="right"``) or the right."""
    width = _padded_length([len(s) for s in sequences], pad_to_multiple_of)
    out = torch.full((len(sequences), width), value, dtype=dtype)
    for row, seq in enumerate(sequences):
        if len(seq) == 0:
            continue
        values = torch.as_tensor(seq, dtype=dtype)
        if side == "right":
            out[row, : len(seq)] = values
        else:
            out[row, width - len(seq) :] = values
    return out


def _mask_of(length: int, example: Mapping[str, Any], key: str = "completion_mask") -> list[int]:
    mask = example.get(key)
    return [1] * length if mask is None else list(mask)


class SFTCollator:
    """SFT batches: ``input_ids``, ``labels``, ``position_ids`` ``[B, T]`` and, for unpacked rows, ``attention_mask``.

    Rows carry ``input_ids`` and optionally ``completion_mask`` (1 = loss; absent = loss on every token).
    Packed rows (with ``seq_lengths``, from :func:`rlhf_core.data.packing.pack_dataset`): position ids restart at 0
    for every document, each document's first label is -100 (it must not be predicted from the previous document)
    and NO ``attention_mask`` is returned, so transformers builds the block-diagonal causal mask from the position
    ids (``masking_utils.find_packed_sequence_indices``; eager, sdpa and flex_attention alike). Forward packed
    batches with ``use_cache=False``: transformers skips that detection whenever a cache is in play, and Llama
    creates one by default (``config.use_cache``), in training mode too. Padding at the end of a packed row is
    its own position-0 segment, so it attends to nothing real and real tokens never attend to it.
    Set ``return_attention_mask_4d=True`` to get an explicit ``[B, 1, T, T]`` additive block-diagonal mask instead
    (for attention implementations that do not read position ids; transformers passes 4D masks through as-is).
    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        pad_to_multiple_of: int | None = None,
        completion_only_loss: bool = True,
        return_attention_mask_4d: bool = False,
    ):
        if pad_token_id is None:
            raise ValueError(
                "SFTCollator needs a pad_token_id (use rlhf_core.data.resolve_pad_token_id(tokenizer))"
            )
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.completion_only_loss = completion_only_loss
        self.return_attention_mask_4d = return_attention_mask_4d

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("SFTCollator got an empty batch")
        ids = [list(e["input_ids"]) for e in examples]
        labels = []
        for e, seq in zip(examples, ids):
            mask = _mask_of(len(seq), e) if self.completion_only_loss else [1] * len(seq)
            labels.append([t if m else IGNORE_INDEX for t, m in zip(seq, mask)])
        packed = any(e.get("seq_lengths") is not None for e in examples)
        lengths = [
            list(e["seq_lengths"]) if e.get("seq_lengths") is not None else [len(s)]
            for e, s in zip(examples, ids)
        ]
        for seq, lens in zip(ids, lengths):
            if sum(lens) != len(seq):
                raise ValueError(f"seq_lengths {lens} sum to {sum(lens)}, not to the row's {len(seq)} tokens")
        batch = {
            "input_ids": pad_sequences(ids, self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of),
            "labels": pad_sequences(labels, IGNORE_INDEX, pad_to_multiple_of=self.pad_to_multiple_of),
        }
        width = batch["input_ids"].shape[1]
        if not packed:
            batch["attention_mask"] = pad_sequences(
                [[1] * len(s) for s in ids], 0, pad_to_multiple_of=self.pad_to_multiple_of
            )
            batch["position_ids"] = pad_sequences(
                [list(range(len(s))) for s in ids], 0, pad_to_multiple_of=self.pad_to_multiple_of
            )
            return batch
        segments = [lens + ([width - sum(lens)] if width > sum(lens) else []) for lens in lengths]
        batch["position_ids"] = torch.tensor([[p for n in segs for p in range(n)] for segs in segments])
        for row, lens in enumerate(lengths):
            starts = torch.tensor([0, *lens[:-1]]).cumsum(0)
            batch["labels"][row, starts] = IGNORE_INDEX
        if self.return_attention_mask_4d:
            batch["attention_mask"] = block_diagonal_causal_mask(segments)
        return batch


def block_diagonal_causal_mask(
    segments: Sequence[Sequence[int]], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``[B, 1, T, T]`` additive mask: 0 where token i may see token j (same segment, j <= i), the dtype's
    minimum elsewhere. Additive because eager attention adds the mask to the scores (sdpa accepts both)."""
    rows = []
    for segs in segments:
        doc = torch.repeat_interleave(torch.arange(len(segs)), torch.as_tensor(list(segs)))
        same = doc[:, None] == doc[None, :]
        rows.append(same & torch.ones_like(same).tril())
    allowed = torch.stack(rows)[:, None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


class PreferenceCollator:
    """Preference batches: chosen rows then rejected rows on the batch axis.

    Rows carry ``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids`` (completions only) and optionally
    ``margin``. Returns ``input_ids``, ``attention_mask``, ``labels`` ``[2B, T]`` (right padded; labels -100 on
    prompt and pad) and ``margin [B]`` (float) when a row has one (rows with ``None`` get 0, no margin).
    """

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("PreferenceCollator needs a pad_token_id")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("PreferenceCollator got an empty batch")
        seqs, labels = [], []
        for side in ("chosen", "rejected"):
            for e in examples:
                prompt, completion = list(e["prompt_input_ids"]), list(e[f"{side}_input_ids"])
                seqs.append(prompt + completion)
                labels.append([IGNORE_INDEX] * len(prompt) + completion)
        multiple = self.pad_to_multiple_of
        batch = {
            "input_ids": pad_sequences(seqs, self.pad_token_id, pad_to_multiple_of=multiple),
            "attention_mask": pad_sequences([[1] * len(s) for s in seqs], 0, pad_to_multiple_of=multiple),
            "labels": pad_sequences(labels, IGNORE_INDEX, pad_to_multiple_of=multiple),
        }
        margins = [e.get("margin") for e in examples]
        if any(m is not None for m in margins):  # a row without one (None) has margin 0: no margin
            batch["margin"] = torch.tensor(
                [0.0 if m is None else float(m) for m in margins], dtype=torch.float32
            )
        return batch


class PromptCollator:
    """Prompt batches for generation: ``input_ids`` and ``attention_mask`` ``[B, T]``, LEFT padded, so every
    row's last token sits at the same position and generated tokens follow directly. Other keys of the rows
    (e.g. the raw ``prompt`` for a judge) are passed through as lists.
    """

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("PromptCollator needs a pad_token_id")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("PromptCollator got an empty batch")
        ids = [list(e["input_ids"]) for e in examples]
        multiple = self.pad_to_multiple_of
        batch: dict[str, Any] = {
            "input_ids": pad_sequences(ids, self.pad_token_id, side="left", pad_to_multiple_of=multiple),
            "attention_mask": pad_sequences(
                [[1] * len(s) for s in ids], 0, side="left", pad_to_multiple_of=multiple
            ),
        }
        for key in examples[0]:
            if key not in batch and key not in ("input_ids", "attention_mask"):
                batch[key] = [e.get(key) for e in examples]
        return batch
