"""Turning a user's SFT dataset into what `SFTTrainer` trains on, and counting the tokens it sees."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Batch key holding the number of real (non-padding) tokens of a micro-batch; popped before the forward.
NUM_TOKENS_KEY = "__num_tokens__"


def _is_tokenized(dataset: Any) -> bool:
    return "input_ids" in (getattr(dataset, "column_names", None) or [])


def _apply_formatting_func(dataset: Any, formatting_func: Callable, text_field: str) -> Any:
    def render(example: Mapping[str, Any]) -> dict[str, str]:
        text = formatting_func(example)
        if isinstance(text, list):  # TRL's old batched contract returned a one-element list
            if len(text) != 1:
                raise ValueError("formatting_func must return one string per example")
            text = text[0]
        if not isinstance(text, str):
            raise TypeError(f"formatting_func must return a str, got {type(text).__name__}")
        return {text_field: text}

    return dataset.map(render, remove_columns=dataset.column_names, desc="Applying formatting_func")


def prepare_sft_dataset(
    dataset: Any,
    tokenizer: Any,
    args: Any,
    *,
    packing: bool,
    formatting_func: Callable[[Mapping[str, Any]], str] | None = None,
    what: str = "train",
) -> tuple[Any, Any]:
    """Tokenise (any SFT format) and optionally pack ``dataset`` as ``args`` (an `SFTConfig`) says.

    Returns ``(dataset, overlong_report or None)``. Rows that are already tokenised (an ``input_ids`` column) are
    only packed; ``args.dataset_kwargs={"skip_prepare_dataset": True}`` leaves the dataset untouched.
    """
    if (args.dataset_kwargs or {}).get("skip_prepare_dataset"):
        return dataset, None
    from rlhf_core.data.packing import pack_dataset
    from rlhf_core.data.tokenization import tokenize_sft

    report = None
    if getattr(args, "shuffle_dataset", False):
        dataset = dataset.shuffle(seed=args.seed)
    if not _is_tokenized(dataset):
        if formatting_func is not None:
            dataset = _apply_formatting_func(dataset, formatting_func, args.dataset_text_field)
        dataset, report = tokenize_sft(
            dataset,
            tokenizer,
            text_field=args.dataset_text_field,
            max_length=args.max_length,
            overlong=args.overlong,
            truncation_mode=getattr(args, "truncation_mode", "keep_start"),
            completion_only_loss=bool(args.completion_only_loss),
            assistant_only_loss=args.assistant_only_loss,
            num_proc=args.dataset_num_proc,
        )
    if packing:
        dataset = pack_dataset(
            dataset, args.max_length, strategy=args.packing_strategy, overlong=args.overlong
        )
    logger.info("SFT %s set: %d rows%s", what, len(dataset), " (packed)" if packing else "")
    return dataset, report


class TokenCountingCollator:
    """Wraps a collator and adds the micro-batch's real-token count (sum of the rows' lengths) to the batch."""

    def __init__(self, collator: Callable[[list[Any]], Any]) -> None:
        self.collator = collator

    def __call__(self, features: list[Any]) -> Any:
        batch = self.collator(features)
        if (
            isinstance(batch, dict)
            and features
            and isinstance(features[0], Mapping)
            and "input_ids" in features[0]
        ):
            batch[NUM_TOKENS_KEY] = torch.tensor(sum(len(f["input_ids"]) for f in features))
        return batch
