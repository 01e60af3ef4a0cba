"""Format reward: does the completion follow a required layout (a regular expression)?"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rlhf_core.rewards.completions import completion_text

__all__ = ["format_reward"]


def format_reward(
    pattern: str | re.Pattern[str], *, reward: float = 1.0, penalty: float = 0.0, full_match: bool = True
) -> Callable[..., list[float]]:
    """``reward`` for completions matching ``pattern`` (the whole text when ``full_match``, else anywhere), else
    ``penalty``. A string pattern is compiled with re.DOTALL, so ``.`` spans lines (as in DeepSeek-R1's
    ``<think>...</think><answer>...</answer>`` check)."""
    regex = re.compile(pattern, re.DOTALL) if isinstance(pattern, str) else pattern
    match = regex.fullmatch if full_match else regex.search

    def format_reward(completions: list[Any], **_: Any) -> list[float]:
        return [reward if match(completion_text(c)) else penalty for c in completions]

    return format_reward
