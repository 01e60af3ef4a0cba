"""rlhf_core.rewards: reward functions people use with GRPO/RLOO, in TRL's ``fn(prompts, completions, ...)`` form.

Each factory returns a pure function ``fn(completions, **columns) -> list[float | None]`` (extra keyword arguments
such as ``prompts``, ``completion_ids`` or ``trainer_state`` are accepted and ignored unless used). A completion
is a string, or a list of messages for conversational prompts (the last message's content is scored).
"""

from __future__ import annotations

from rlhf_core.rewards.completions import completion_text
from rlhf_core.rewards.format import format_reward
from rlhf_core.rewards.judge import synthetic_judge_reward
from rlhf_core.rewards.length import length_reward
from rlhf_core.rewards.matching import exact_match_reward
from rlhf_core.rewards.repetition import repetition_penalty_reward

__all__ = [
    "completion_text",
    "exact_match_reward",
    "format_reward",
    "length_reward",
    "repetition_penalty_reward",
    "synthetic_judge_reward",
]
