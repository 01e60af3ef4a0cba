"""Repetition penalty: the share of repeated word n-grams (Yeo et al. 2025, arXiv:2502.03373, sec. 4.2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhf_core.rewards.completions import completion_text

__all__ = ["repetition_penalty_reward", "repeated_ngram_fraction"]


def repeated_ngram_fraction(text: str, n: int) -> float:
    """1 - distinct / total word n-grams of ``text`` (0 when it has fewer than ``n`` words)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def repetition_penalty_reward(ngram_size: int = 3, max_penalty: float = -1.0) -> Callable[..., list[float]]:
    """``max_penalty * repeated_ngram_fraction(completion, ngram_size)``: 0 for no repetition, ``max_penalty``
    (negative) when every n-gram repeats an earlier one."""
    if ngram_size < 1:
        raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
    if max_penalty > 0:
        raise ValueError(f"max_penalty must be <= 0 (it is a penalty), got {max_penalty}")

    def repetition_penalty_reward(completions: list[Any], **_: Any) -> list[float]:
        return [max_penalty * repeated_ngram_fraction(completion_text(c), ngram_size) for c in completions]

    return repetition_penalty_reward
