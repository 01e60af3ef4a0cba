"""Held-out evaluation of the policies and the per-stage sample tables (no MLflow here: callers log the rows).

For each policy: the judge score (bundled task), the reward-model score, the win rate against the SFT policy
(per prompt, by the judge when there is one, else by the reward model; a tie counts half) and the KL to the
reference policy (the SFT model, the starting point of DPO and PPO).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from rlhf_core.evaluation.sampling import (
    ModelCache,
    Samples,
    judge_scores,
    kl_to_reference,
    reward_scores,
    sample_responses,
)
from tasks.config import EvaluationSettings
from tasks.results import PolicyMetrics

__all__ = ["evaluate_policies", "prompt_text", "sample_rows", "win_rate"]


def prompt_text(prompt: Any) -> str:
    """A prompt as table text: the string, or the last user message of a message list."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else json.dumps(prompt)


def _samples(path: str, prompts: Sequence[Any], settings: EvaluationSettings, models: ModelCache) -> Samples:
    return sample_responses(
        path,
        prompts,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        batch_size=settings.batch_size,
        seed=settings.seed,
        models=models,
    )


def _scores(samples: Samples, settings: EvaluationSettings, reward_model: str | None, models: ModelCache):
    judge = judge_scores(samples.prompts, samples.responses) if settings.judge else None
    reward = (
        reward_scores(reward_model, samples, batch_size=settings.batch_size, models=models)
        if reward_model
        else None
    )
    return judge, reward


def sample_rows(
    policy: str,
    prompts: Sequence[Any],
    settings: EvaluationSettings,
    *,
    reward_model: str | None = None,
    label: str | None = None,
) -> list[dict[str, Any]]:
    """One table row per prompt: prompt, response, judge score, reward-model score (None where unavailable)."""
    models = ModelCache()
    samples = _samples(policy, prompts, settings, models)
    judge, reward = _scores(samples, settings, reward_model, models)
    rows = []
    for i, (prompt, response) in enumerate(zip(samples.prompts, samples.responses)):
        row = {
            "prompt": prompt_text(prompt),
            "response": response,
            "judge_score": judge[i] if judge else None,
            "reward_score": reward[i] if reward else None,
        }
        rows.append({"policy": label, **row} if label else row)
    return rows


def win_rate(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """Share of prompts where ``candidate`` beats ``baseline`` (ties count half)."""
    if len(candidate) != len(baseline) or not candidate:
        raise ValueError(
            f"win_rate needs two equal, non-empty score lists, got {len(candidate)} and {len(baseline)}"
        )
    return fmean(1.0 if c > b else 0.5 if c == b else 0.0 for c, b in zip(candidate, baseline))


def _kl(
    name: str,
    path: str,
    reference: str,
    policies: Mapping[str, str],
    samples: Samples,
    prompts: Sequence[Any],
    settings: EvaluationSettings,
    models: ModelCache,
) -> list[float]:
    """KL(policy || reference) per prompt, on samples drawn at temperature 1 (where the estimator is unbiased):
    the scored samples when they were, fresh ones otherwise (e.g. greedy scoring)."""
    if name == reference:
        return [0.0] * len(prompts)
    if settings.temperature != 1.0 or settings.top_k:
        samples = _samples(
            path, prompts, settings.model_copy(update={"temperature": 1.0, "top_k": 0}), models
        )
    return kl_to_reference(
        path, policies[reference], samples, temperature=1.0, batch_size=settings.batch_size, models=models
    )


def evaluate_policies(
    policies: Mapping[str, str],
    prompts: Sequence[Any],
    settings: EvaluationSettings,
    *,
    reference: str,
    reward_model: str | None = None,
) -> tuple[dict[str, PolicyMetrics], list[dict[str, Any]], float]:
    """Metrics per policy (name -> checkpoint), the sample rows, and the seconds spent.

    ``reference`` names the policy that KL and win rate are measured against (``"sft"`` normally).
    """
    start = time.perf_counter()
    per_prompt: dict[str, list[float] | None] = {}
    metrics: dict[str, PolicyMetrics] = {}
    rows: list[dict[str, Any]] = []
    models = ModelCache()
    for name, path in policies.items():
        samples = _samples(path, prompts, settings, models)
        judge, reward = _scores(samples, settings, reward_model, models)
        kl = _kl(name, path, reference, policies, samples, prompts, settings, models)
        per_prompt[name] = judge if judge is not None else reward
        metrics[name] = PolicyMetrics(
            judge_score=fmean(judge) if judge else None,
            reward_score=fmean(reward) if reward else None,
            kl_to_ref=fmean(kl),
        )
        for i in range(min(settings.num_samples, len(prompts))):
            rows.append(
                {
                    "policy": name,
                    "prompt": prompt_text(samples.prompts[i]),
                    "response": samples.responses[i],
                    "judge_score": judge[i] if judge else None,
                    "reward_score": reward[i] if reward else None,
                }
            )
    baseline = per_prompt.get(reference)
    for name, scores in per_prompt.items():
        if scores is not None and baseline is not None:
            metrics[name].win_rate = win_rate(scores, baseline)
    return metrics, rows, time.perf_counter() - start
