"""The bundled synthetic task's ground-truth judge as a GRPO/RLOO reward function."""

from __future__ import annotations

from typing import Any

from rlhf_core.data.synthetic import judge_responses
from rlhf_core.rewards.completions import completion_text

__all__ = ["synthetic_judge_reward"]


def synthetic_judge_reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """``SyntheticTask().judge`` of each completion (a string or assistant messages) to its prompt, in [0, 1]."""
    return judge_responses(prompts, [completion_text(c) for c in completions])
