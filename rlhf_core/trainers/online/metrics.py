"""What GRPO/RLOO report (TRL 1.16's metric names) and the table of sampled completions.

Rewards are the gathered ones of a whole generation, so every process logs the same reward statistics.
The completion table keeps the completions of the latest generation (``rows``: a list of dicts with the step,
prompt, completion, each reward function's score and the advantage), appends them at each log to
``<output_dir>/completions.jsonl`` (what the pipeline logs as an MLflow table) and prints them when
``log_completions`` is on (TRL's table of completions).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Any

import torch

from rlhf_core.losses.grpo import weighted_rewards

__all__ = ["COMPLETIONS_FILE", "CompletionLog", "append_jsonl", "completion_metrics", "reward_metrics"]

COMPLETIONS_FILE = "completions.jsonl"  # in output_dir: every logged table's rows, one JSON object a line


def _nan_stats(values: torch.Tensor) -> tuple[float, float]:
    kept = values[~torch.isnan(values)]
    if kept.numel() == 0:
        return math.nan, math.nan
    return float(kept.mean()), float(kept.std()) if kept.numel() > 1 else 0.0


def reward_metrics(rewards_per_func: torch.Tensor, rewards: Any) -> dict[str, float]:
    """``reward``, ``reward_std`` (weighted sum over functions) and ``rewards/<name>/mean|std`` from [N, F]."""
    total = weighted_rewards(rewards_per_func, rewards.weights.to(rewards_per_func.device))
    metrics: dict[str, float] = {}
    metrics["reward"], metrics["reward_std"] = _nan_stats(total)
    for i, name in enumerate(rewards.names):
        metrics[f"rewards/{name}/mean"], metrics[f"rewards/{name}/std"] = _nan_stats(rewards_per_func[:, i])
    return metrics


def completion_metrics(lengths: torch.Tensor, finished: torch.Tensor) -> dict[str, float]:
    """Completion lengths [N] (all, and those that ended with eos) and the fraction cut at the length limit."""
    lengths, ended = lengths.float(), finished.bool()
    out = {
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float((~ended).float().mean()),
    }
    terminated = lengths[ended]
    zero = terminated.numel() == 0
    out["completions/mean_terminated_length"] = 0.0 if zero else float(terminated.mean())
    out["completions/min_terminated_length"] = 0.0 if zero else float(terminated.min())
    out["completions/max_terminated_length"] = 0.0 if zero else float(terminated.max())
    return out


def _text(value: Any) -> str:
    if isinstance(value, list):  # conversational: the last message's content
        return str(value[-1].get("content", "")) if value else ""
    return str(value)


class CompletionLog:
    """Completions sampled since the last log, with their rewards and advantages; printable as a table."""

    def __init__(self, num_to_print: int | None = None, unique_prompts: bool = False) -> None:
        self.num_to_print, self.unique_prompts = num_to_print, unique_prompts
        self.rows: list[dict[str, Any]] = []
        self.last_rows: list[dict[str, Any]] = []
        self._extra: dict[str, list[Any]] = defaultdict(list)
        self.metrics: dict[str, list[float]] = defaultdict(list)

    def add_column(self, column: str, values: list[Any]) -> None:
        """TRL's ``log_extra``: a reward function adds a column to the table (one value per completion)."""
        self._extra[column].extend(values)

    def add_metric(self, name: str, value: float) -> None:
        """TRL's ``log_metric``: a reward function reports a scalar (averaged into the next log)."""
        self.metrics[name].append(float(value))

    def pop_metrics(self) -> dict[str, float]:
        out = {k: sum(v) / len(v) for k, v in self.metrics.items() if v}
        self.metrics.clear()
        return out

    def add(
        self, step: int, group: Any, rewards: torch.Tensor, advantages: torch.Tensor, names: list[str]
    ) -> None:
        # the latest generation only, as TRL's table (a deque of generation_batch_size): a long run's file stays small
        self.rows = []
        extra = {k: v for k, v in self._extra.items() if len(v) == len(group.prompts)}
        for i, (prompt, completion) in enumerate(zip(group.prompts, group.completions)):
            row = {"step": step, "prompt": _text(prompt), "completion": _text(completion)}
            row.update({name: float(rewards[i, j]) for j, name in enumerate(names)})
            row["advantage"] = float(advantages[i])
            row.update({k: v[i] for k, v in extra.items()})
            self.rows.append(row)
        self._extra.clear()

    def pop(self) -> list[dict[str, Any]]:
        """The rows since the last pop (kept as ``last_rows``)."""
        rows = self.rows
        if self.unique_prompts:
            seen: dict[str, dict[str, Any]] = {}
            rows = [seen.setdefault(r["prompt"], r) for r in rows if r["prompt"] not in seen]
        if self.num_to_print is not None:
            rows = rows[: self.num_to_print]
        self.last_rows, self.rows = rows, []
        return rows

    def print(self, step: int, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        widths = {c: min(max(len(c), *(len(_cell(r.get(c))) for r in rows)), 48) for c in columns}
        lines = [f"completions at step {step}:", " | ".join(c.ljust(widths[c]) for c in columns)]
        lines.append("-+-".join("-" * widths[c] for c in columns))
        lines += [" | ".join(_cell(r.get(c))[: widths[c]].ljust(widths[c]) for c in columns) for r in rows]
        print("\n".join(lines), flush=True)


def append_jsonl(path: str, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the JSON-lines file ``path`` (values JSON cannot hold are written as text)."""
    if not rows:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(row, default=str) + "\n" for row in rows)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("\n", " ")
