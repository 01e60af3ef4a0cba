"""Evaluation of a GRPO/RLOO policy on ``eval_dataset`` prompts, as TRL's trainers do it: sample, score, report.

Each eval prompt is answered ``num_generations_eval`` (default ``num_generations``) times with the training
sampling settings; the reward functions score the completions and the metrics are the training ones (``reward``,
``reward_std``, ``rewards/<name>/mean|std``, ``completions/...``) with the ``eval_`` prefix. No gradient, no
update; under several processes each answers its share of the prompts and the rewards are gathered.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rlhf_core.trainers.online.groups import local_examples, local_seeds, sample_completions
from rlhf_core.trainers.online.metrics import completion_metrics, reward_metrics

__all__ = ["evaluate_generations"]

# Evaluation samples from its own seeds (per global step and completion), apart from training's.
_EVAL_STREAM = 1


def _ignore(*_: Any) -> None:
    """An eval sample's ``log_extra`` / ``log_metric``: the training table and metrics are not the place."""


@torch.no_grad()
def evaluate_generations(trainer: Any, dataset: Any, prefix: str = "eval") -> dict[str, float]:
    """``{prefix}_reward``, ... over every prompt of the tokenised ``dataset`` (see the module docstring)."""
    args, acc = trainer.args, trainer.accelerator
    generations = args.num_generations_eval or args.num_generations
    per_batch = max(args.per_device_eval_batch_size * acc.num_processes // generations, 1)
    rewards, lengths, finished = [], [], []
    for start in range(0, len(dataset), per_batch):
        rows = list(range(start, min(start + per_batch, len(dataset))))
        examples = local_examples(dataset, rows, num_generations=generations, rank=acc.process_index,
                                  world=acc.num_processes)  # fmt: skip
        group = sample_completions(
            trainer._policy(), examples, tokenizer=trainer.processing_class, collator=trainer.data_collator,
            max_completion_length=args.max_completion_length, sampling=trainer._sampling(),
            stop_token_ids=trainer.stop_ids, return_logprobs=False, device=acc.device, num_generations=generations,
            row_seeds=local_seeds(args.seed, trainer.state.global_step, len(examples), rank=acc.process_index,
                                  offset=start * generations, stream=_EVAL_STREAM),
        )  # fmt: skip
        columns = {
            **group.columns,
            "trainer_state": trainer.state,
            "log_extra": _ignore,
            "log_metric": _ignore,
        }
        local = trainer.rewards(group.prompts, group.completions, group.completion_ids, columns, device=acc.device,
                                micro_batch_size=args.per_device_eval_batch_size)  # fmt: skip
        rewards.append(acc.gather(local))
        lengths.append(acc.gather(group.batch.response_mask.sum(-1)))
        finished.append(acc.gather(group.finished.long()))
    metrics = {
        **reward_metrics(torch.cat(rewards), trainer.rewards),
        **completion_metrics(torch.cat(lengths), torch.cat(finished)),
    }
    return {f"{prefix}_{k}": v for k, v in metrics.items() if not math.isnan(v)}
