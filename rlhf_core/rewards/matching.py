"""Exact-match reward: the completion (or the part a regex extracts) equals the reference answer of its row."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rlhf_core.rewards.completions import completion_text

__all__ = ["exact_match_reward", "normalise_answer"]


def normalise_answer(text: str) -> str:
    """Case-folded, whitespace-collapsed, without surrounding punctuation: "  The Answer. " -> "the answer"."""
    return " ".join(text.split()).strip(" .,;:!?\"'").casefold()


def exact_match_reward(
    column: str = "solution",
    *,
    extract: str | re.Pattern[str] | None = None,
    normalise: Callable[[str], str] | None = normalise_answer,
    reward: float = 1.0,
    penalty: float = 0.0,
) -> Callable[..., list[float | None]]:
    """``reward`` when a completion matches the dataset column ``column`` of its row, else ``penalty``.

    ``extract``: a regex whose first group (else whole match) is the answer, e.g. ``r"<answer>(.*?)</answer>"``;
    a completion where it finds nothing gets ``penalty``. Rows whose reference is None get None (the function
    does not apply to them). A dataset without the column is an error naming it.
    """
    regex = re.compile(extract, re.DOTALL) if isinstance(extract, str) else extract
    norm = normalise or (lambda s: s)

    def answer(text: str) -> str | None:
        if regex is None:
            return text
        found = regex.search(text)
        return None if found is None else (found.group(1) if regex.groups else found.group(0))

    def exact_match_reward(completions: list[Any], **columns: Any) -> list[float | None]:
        if column not in columns:
            known = sorted(k for k in columns if k not in ("trainer_state", "log_extra", "log_metric"))
            raise KeyError(f"exact_match_reward needs the dataset column {column!r}; the rows have {known}")
        scores: list[float | None] = []
        for completion, reference in zip(completions, columns[column]):
            if reference is None:
                scores.append(None)
                continue
            got = answer(completion_text(completion))
            scores.append(reward if got is not None and norm(got) == norm(str(reference)) else penalty)
        return scores

    return exact_match_reward
