"""Length reward: how far a completion is from a target length (TRL's quickstart reward, generalised)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlhf_core.rewards.completions import completion_text

__all__ = ["length_reward"]


def length_reward(
    target: int, *, unit: str = "characters", scale: float | None = None
) -> Callable[..., list[float]]:
    """``-|length - target| / scale`` per completion (0 at the target, lower further away).

    ``unit``: "characters" of the completion text, or "tokens" (from ``completion_ids``). ``scale`` defaults to
    ``target`` (so a completion twice the target, or empty, scores -1); TRL's quickstart is
    ``length_reward(20, scale=1)``.
    """
    if unit not in ("characters", "tokens"):
        raise ValueError(f"unit={unit!r}: use 'characters' or 'tokens'")
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    divisor = float(scale if scale is not None else max(target, 1))

    def length_reward(completions: list[Any], completion_ids: list[list[int]] | None = None, **_: Any):
        if unit == "tokens":
            if completion_ids is None:
                raise ValueError("length_reward(unit='tokens') needs completion_ids")
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c)) for c in completions]
        return [-abs(n - target) / divisor for n in lengths]

    return length_reward
