"""TRL 1.12's ``num_sample_generations``: sample completions recorded (and logged) that many times over training.

At ``num_sample_generations`` updates spread evenly over ``num_updates`` (the first one included: updates 1, 11,
21, ... for 10 of 100, as TRL; unlike TRL's ``(update - 1) % max(1, num_updates // n)``, never more than ``n``
times when there are fewer than ``2 n`` updates), the first rows of that update's rollout - prompt, response and score, the episodes the update
trains on - are appended to ``PPOTrainer.sample_generations`` and logged as a table. rlhf_core hands the rows back;
the pipeline's tasks log them to MLflow.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["SAMPLES_PER_RECORD", "is_sample_update", "sample_rows"]

SAMPLES_PER_RECORD = 4


def is_sample_update(update: int, num_updates: int, num_sample_generations: int) -> bool:
    """Whether 1-based ``update`` of ``num_updates`` records samples."""
    if num_sample_generations <= 0 or update < 1:
        return False
    n, total = num_sample_generations, max(num_updates, 1)
    return update == 1 or (update - 1) * n // total != (update - 2) * n // total


def sample_rows(
    exp: Any, tokenizer: Any, update: int, limit: int = SAMPLES_PER_RECORD
) -> list[dict[str, Any]]:
    """``[{"update", "prompt", "response", "score"}]`` for the first ``limit`` episodes of an ``Experience``."""
    batch, rows = exp.batch, []
    for i in range(min(limit, len(exp))):
        prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        response = batch.response_ids[i][batch.response_mask[i].bool()].tolist()
        score = None if exp.scores is None else float(exp.scores[i])
        rows.append(
            {
                "update": update,
                "prompt": tokenizer.decode(prompt, skip_special_tokens=True),
                "response": tokenizer.decode(response, skip_special_tokens=True),
                "score": score,
            }
        )
    lines = [
        f"| {r['update']} | {r['prompt'][-60:]!r} | {r['response'][:80]!r} | {r['score']} |" for r in rows
    ]
    logger.info("PPO sample generations:\n| update | prompt (end) | response | score |\n%s", "\n".join(lines))
    return rows
