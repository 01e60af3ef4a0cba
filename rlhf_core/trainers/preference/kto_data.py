"""KTO data: unpaired examples (prompt, completion, boolean label), unpairing of preference pairs, batching.

Accepted datasets (strings or message lists, as TRL takes them):

- unpaired: ``prompt``, ``completion``, ``label`` (True = desirable), tokenised by the SFT prompt-completion path
  (`tokenize_sft`), so a completion ends with eos exactly as it does for SFT and DPO;
- paired: ``prompt``/``chosen``/``rejected`` or implicit-prompt ``chosen``/``rejected`` (Anthropic HH), tokenised by
  the preference path (`tokenize_preference`) and unpaired into one desirable and one undesirable example per pair;
- already tokenised: ``prompt_ids``, ``completion_ids``, ``label`` (TRL's column names), used as they are.

Unpairing order: TRL unpairs in blocks of 1,000 pairs (all chosen, then all rejected), so with the sequential
sampling that KTO needs nearly every batch holds a single label. Here each block of half a training batch of pairs
gives its chosen examples, then its rejected ones: every batch holds both labels, and (with at least 2 pairs per
block) no example's mismatched completion comes from its own pair.

Mismatched completions (the KL reference point, as TRL computes it): within each consecutive block of
``kl_block`` examples (the per-device training batch), example i gets ``KL_completion_ids`` = the completion of
example i-1, cyclically: (x1, y_n), (x2, y1), ..., (x_n, y_{n-1}).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset

from rlhf_core.data.collators import IGNORE_INDEX, pad_sequences
from rlhf_core.data.formats import DataFormat, DataFormatError, detect_format
from rlhf_core.data.tokenization import (
    OverlongReport,
    SpecialTokens,
    keep_end,
    special_tokens,
    tokenize_preference,
    tokenize_sft,
)
from rlhf_core.trainers.preference.data import each_split

__all__ = [
    "KTO_COLUMNS",
    "UnpairedCollator",
    "prepare_kto_dataset",
    "unpair_tokenized_pairs",
    "warn_on_class_imbalance",
]

logger = logging.getLogger(__name__)

TOKEN_COLUMNS = ("prompt_ids", "completion_ids", "label")
REFERENCE_COLUMNS = ("ref_logps", "ref_KL_logps")
# Columns the trainer reads; the Trainer removes every other column before batching.
KTO_COLUMNS = (*TOKEN_COLUMNS, "KL_completion_ids", *REFERENCE_COLUMNS)


@each_split
def prepare_kto_dataset(
    dataset: Any,
    tokenizer: Any,
    *,
    max_length: int | None,
    max_prompt_length: int | None = None,
    overlong: str = "truncate",
    kl_block: int | None = None,
    num_proc: int | None = None,
    what: str = "train",
) -> Any:
    """Tokenise / unpair a KTO dataset (or a dict of them), apply the length policy, add mismatched completions.

    ``kl_block``: examples per block of the mismatched pairing (None: no ``KL_completion_ids``); it is also twice
    the pairs per unpairing block. A dataset that already has ``KL_completion_ids`` keeps them.
    """
    names = list(getattr(dataset, "column_names", None) or [])
    if not all(column in names for column in TOKEN_COLUMNS):
        if tokenizer is None:
            raise ValueError(
                f"The {what} dataset is not tokenised and no tokenizer was given: pass processing_class=."
            )
        dataset = _tokenize(
            dataset, tokenizer, pairs_per_block=max((kl_block or 2) // 2, 1), num_proc=num_proc
        )
        limits = (max_length, max_prompt_length)
        dataset = _apply_length_policy(dataset, special_tokens(tokenizer), limits, overlong, what)
    if kl_block is not None and "KL_completion_ids" not in dataset.column_names:
        dataset = dataset.map(_rotate_completions, batched=True, batch_size=kl_block, num_proc=num_proc,
                              desc=f"Mismatched completions ({what})")  # fmt: skip
    return dataset


def _tokenize(dataset: Any, tokenizer: Any, *, pairs_per_block: int, num_proc: int | None) -> Dataset:
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    fmt = detect_format(dict.fromkeys(dataset.column_names))
    if fmt in (DataFormat.PREFERENCE, DataFormat.PREFERENCE_IMPLICIT):
        pairs, _report = tokenize_preference(dataset, tokenizer, max_length=None, num_proc=num_proc)
        return unpair_tokenized_pairs(pairs, pairs_per_block=pairs_per_block)
    if fmt is not DataFormat.PROMPT_COMPLETION or "label" not in dataset.column_names:
        raise DataFormatError(
            f"KTO takes unpaired data ('prompt', 'completion', boolean 'label') or preference pairs "
            f"('prompt'/'chosen'/'rejected' or 'chosen'/'rejected'); got columns {sorted(dataset.column_names)}",
            field="label",
        )
    labels = [_check_label(value, index) for index, value in enumerate(dataset["label"])]
    # No length limit here (so no row is dropped and the labels stay aligned): KTO's own policy follows.
    rows, _report = tokenize_sft(dataset.select_columns(["prompt", "completion"]), tokenizer, max_length=None,
                                 completion_only_loss=True, num_proc=num_proc)  # fmt: skip
    if len(rows) != len(labels):
        raise ValueError(f"{len(labels) - len(rows)} rows have no completion token left after tokenisation")
    split = rows.map(_split_at_completion, remove_columns=rows.column_names, num_proc=num_proc)
    return split.add_column("label", labels)


def _check_label(value: Any, index: int) -> bool:
    if isinstance(value, bool):
        return value
    raise DataFormatError(f"expected a boolean (True = desirable), got {value!r}", index=index, field="label")


def _split_at_completion(row: dict) -> dict:
    """SFT ids + completion mask -> prompt ids and completion ids (up to the completion's last masked token)."""
    mask = row["completion_mask"]
    start = mask.index(1)
    stop = len(mask) - mask[::-1].index(1)
    return {"prompt_ids": row["input_ids"][:start], "completion_ids": row["input_ids"][start:stop]}


def unpair_tokenized_pairs(pairs: Dataset, *, pairs_per_block: int) -> Dataset:
    """Tokenised pairs (``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids``) -> unpaired examples:
    per block of ``pairs_per_block`` pairs, the chosen examples (label True), then the rejected ones (False)."""

    def unpair(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch["prompt_input_ids"])
        return {
            "prompt_ids": batch["prompt_input_ids"] * 2,
            "completion_ids": batch["chosen_input_ids"] + batch["rejected_input_ids"],
            "label": [True] * n + [False] * n,
        }

    return pairs.map(unpair, batched=True, batch_size=pairs_per_block, remove_columns=pairs.column_names,
                     desc="Unpairing preference pairs")  # fmt: skip


def _apply_length_policy(
    dataset: Dataset, sp: SpecialTokens, limits: tuple[int | None, int | None], overlong: str, what: str
) -> Dataset:
    """Truncate (prompt end kept, down to half of max_length, then completion start) or drop long examples."""
    max_length, max_prompt_length = limits
    report = OverlongReport(total=len(dataset), max_length=max_length, policy=overlong)
    prompts, completions = dataset["prompt_ids"], dataset["completion_ids"]
    long_rows = [
        i for i, (p, c) in enumerate(zip(prompts, completions))
        if (max_length is not None and len(p) + len(c) > max_length)
        or (max_prompt_length is not None and len(p) > max_prompt_length)
    ]  # fmt: skip
    if overlong == "drop":
        report.dropped = len(long_rows)
        drop = set(long_rows)
        dataset = dataset.select([i for i in range(len(dataset)) if i not in drop])
    elif long_rows:
        report.truncated = len(long_rows)
        cut = set(long_rows)

        def fit(row: dict, index: int) -> dict:
            return _fit(row, max_length, max_prompt_length, sp) if index in cut else row

        dataset = dataset.map(fit, with_indices=True, desc="Truncating long examples")
    report.log(logger, f"KTO {what} examples")
    if len(dataset) == 0:
        raise ValueError(
            f"No {what} example is left after the length policy (max_length={max_length}, overlong={overlong!r}): "
            "raise max_length or use overlong='truncate'."
        )
    return dataset


def _fit(row: dict, max_length: int | None, max_prompt_length: int | None, sp: SpecialTokens) -> dict:
    prompt, completion = row["prompt_ids"], row["completion_ids"]
    if max_prompt_length is not None:
        prompt = keep_end(prompt, max_prompt_length, sp)
    if max_length is not None and len(prompt) + len(completion) > max_length:
        prompt = keep_end(prompt, max(max_length - len(completion), min(len(prompt), max_length // 2)), sp)
        completion = completion[: max_length - len(prompt)]
    return {"prompt_ids": prompt, "completion_ids": completion}


def _rotate_completions(batch: dict[str, list]) -> dict[str, list]:
    completions = batch["completion_ids"]
    return {"KL_completion_ids": completions[-1:] + completions[:-1]}


def warn_on_class_imbalance(
    labels: Sequence[bool], desirable_weight: float, undesirable_weight: float
) -> None:
    """Log the paper's advice (arXiv:2402.01306, Eq. 8: lambda_D n_D / (lambda_U n_U) in [1, 4/3]) when the
    weights fall outside it for imbalanced data."""
    n_desirable = max(sum(bool(v) for v in labels), 1)
    n_undesirable = max(len(labels) - n_desirable, 1)
    if n_desirable == n_undesirable:
        return
    ratio = desirable_weight * n_desirable / max(undesirable_weight * n_undesirable, 1e-12)
    if not 1.0 <= ratio <= 4 / 3:
        low = n_undesirable * undesirable_weight / n_desirable
        logger.warning(
            "%d desirable and %d undesirable examples with desirable_weight=%s, undesirable_weight=%s: "
            "desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = %.2f, outside the [1, 4/3] "
            "the KTO paper recommends (e.g. desirable_weight in [%.2f, %.2f])",
            n_desirable, n_undesirable, desirable_weight, undesirable_weight, ratio, low, 4 / 3 * low,
        )  # fmt: skip


class UnpairedCollator:
    """KTO batches `[B, T]` (right padded): ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt and pad),
    ``label`` `[B]` bool; with mismatched completions also ``KL_input_ids``, ``KL_attention_mask``, ``KL_labels``
    (cut to ``max_length``, keeping the start); ``ref_logps`` / ``ref_KL_logps`` `[B]` when the rows carry them."""

    def __init__(
        self, pad_token_id: int, *, max_length: int | None = None, pad_to_multiple_of: int | None = None
    ):
        self.pad_token_id = int(pad_token_id)
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("UnpairedCollator got an empty batch")
        batch = self._sequences(features, "completion_ids", "")
        if "KL_completion_ids" in features[0]:
            batch.update(self._sequences(features, "KL_completion_ids", "KL_"))
        batch["label"] = torch.tensor([bool(f["label"]) for f in features], dtype=torch.bool)
        for name in REFERENCE_COLUMNS:
            if name in features[0]:
                batch[name] = torch.tensor([float(f[name]) for f in features], dtype=torch.float32)
        return batch

    def _sequences(self, features: list[Mapping[str, Any]], key: str, prefix: str) -> dict[str, torch.Tensor]:
        seqs, labels = [], []
        for f in features:
            prompt, completion = list(f["prompt_ids"]), list(f[key])
            ids, lab = prompt + completion, [IGNORE_INDEX] * len(prompt) + completion
            if self.max_length is not None:
                ids, lab = ids[: self.max_length], lab[: self.max_length]
            seqs.append(ids)
            labels.append(lab)
        multiple = self.pad_to_multiple_of
        return {
            f"{prefix}input_ids": pad_sequences(seqs, self.pad_token_id, pad_to_multiple_of=multiple),
            f"{prefix}attention_mask": pad_sequences(
                [[1] * len(s) for s in seqs], 0, pad_to_multiple_of=multiple
            ),
            f"{prefix}labels": pad_sequences(labels, IGNORE_INDEX, pad_to_multiple_of=multiple),
        }
