"""The text of a completion as reward functions see it: a string, or the content of the last message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["completion_text"]


def completion_text(completion: Any) -> str:
    """``completion`` itself when a string; the last message's ``content`` of a message list ("" when empty)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and all(isinstance(m, Mapping) for m in completion):
        return str(completion[-1].get("content", "")) if completion else ""
    raise TypeError(f"a completion is a string or a list of messages, got {type(completion).__name__}")
