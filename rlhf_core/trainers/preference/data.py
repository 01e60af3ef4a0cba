"""Preference data for the reward and DPO trainers: tokenising raw pairs, the length policy, batching.

Rows may be explicit-prompt (`prompt`, `chosen`, `rejected`), implicit-prompt (`chosen`, `rejected` sharing a
prefix, Anthropic HH style) or conversational (message lists), with an optional numeric `margin`; the foundation's
`tokenize_preference` recognises the format per row and raises `DataFormatError` naming the row and the field for
a bad one. A dataset that already has the token-id columns is used as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from rlhf_core.data.collators import PreferenceCollator
from rlhf_core.data.tokenization import tokenize_preference

__all__ = [
    "OVERLONG_POLICIES",
    "PAIR_COLUMNS",
    "REFERENCE_COLUMNS",
    "PreferencePairCollator",
    "check_length_policy",
    "each_split",
    "length_policy",
    "prepare_preference_dataset",
]


OVERLONG_POLICIES = ("truncate", "drop")
TOKEN_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
# Columns the trainers read; the Trainer removes every other column before batching.
PAIR_COLUMNS = (*TOKEN_COLUMNS, "margin", *REFERENCE_COLUMNS)


def check_length_policy(max_length: int | None, max_prompt_length: int | None, overlong: str) -> None:
    """Clear errors for impossible length settings (RewardConfig and DPOConfig)."""
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens (or None), got {max_length}")
    if max_prompt_length is not None and max_length is not None and max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length}) so that some "
            "completion tokens remain"
        )


def length_policy(args: Any) -> dict[str, Any]:
    """The tokenisation keywords of `prepare_preference_dataset` from a RewardConfig or DPOConfig."""
    return {
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
        "overlong": args.overlong,
        "num_proc": args.dataset_num_proc,
    }


def is_tokenized(dataset: Any) -> bool:
    names = getattr(dataset, "column_names", None) or []
    return all(column in names for column in TOKEN_COLUMNS)


def each_split(prepare: Callable[..., Any]) -> Callable[..., Any]:
    """``prepare(dataset, tokenizer, *, what, ...)`` extended to the other shapes a trainer is given: None passes
    through, and a dict of datasets is prepared split by split (named ``what[name]`` in messages)."""

    @functools.wraps(prepare)
    def each(dataset: Any, tokenizer: Any, *, what: str = "train", **kwargs: Any) -> Any:
        if dataset is None:
            return None
        if isinstance(dataset, Mapping):
            return {
                name: each(split, tokenizer, what=f"{what}[{name}]", **kwargs)
                for name, split in dataset.items()
            }
        return prepare(dataset, tokenizer, what=what, **kwargs)

    return each


@each_split
def prepare_preference_dataset(
    dataset: Any,
    tokenizer: Any,
    *,
    max_length: int | None,
    max_prompt_length: int | None = None,
    overlong: str = "truncate",
    num_proc: int | None = None,
    what: str = "train",
) -> Any:
    """Tokenise a raw preference dataset (or a dict of them); pass through one that is already tokenised."""
    if is_tokenized(dataset):
        return dataset
    if tokenizer is None:
        raise ValueError(
            f"The {what} dataset is not tokenised and no tokenizer was given: pass processing_class=."
        )
    # tokenize_preference logs its OverlongReport (pairs truncated / dropped) itself.
    tokenized, _report = tokenize_preference(
        dataset,
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        overlong=overlong,
        num_proc=num_proc,
    )
    if len(tokenized) == 0:
        raise ValueError(
            f"No {what} preference pair is left after the length policy (max_length={max_length}, "
            f"overlong={overlong!r}): raise max_length or use overlong='truncate'."
        )
    return tokenized


class PreferencePairCollator:
    """`PreferenceCollator` (chosen rows then rejected rows, `[2B, T]`) plus the precomputed reference log-probs.

    Batch keys: `input_ids`, `attention_mask`, `labels` (-100 on prompt and padding), `margin` `[B]` when the rows
    have one, and `ref_chosen_logps` / `ref_rejected_logps` `[B]` when the dataset carries them.
    """

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.collator = PreferenceCollator(pad_token_id, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        present = [name for name in REFERENCE_COLUMNS if name in features[0]]
        extras = {
            name: torch.tensor([float(f[name]) for f in features], dtype=torch.float32) for name in present
        }
        stripped = [{k: v for k, v in f.items() if k not in REFERENCE_COLUMNS} for f in features]
        batch = dict(self.collator(stripped))
        batch.update(extras)
        return batch
