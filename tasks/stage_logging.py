"""What a training stage tells the Prefect logs (the flow run's Logs tab): what it starts from, on how many rows and
for how many steps; whether it reuses a finished checkpoint; its final metrics; and where its MLflow run is."""

from __future__ import annotations

import logging
from typing import Any

from tasks.results import StageResult
from tasks.stage_registry import STAGES
from tasks.stage_specs import StageJob

__all__ = ["log_stage_end", "log_stage_reused", "log_stage_start", "stage_logger"]


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger (its lines go to the run's Logs tab); a plain logger outside a Prefect run."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _length(trainer_config: Any) -> str:
    steps = getattr(trainer_config, "max_steps", -1)
    if steps > 0:
        return f"{steps} step{'s' if steps != 1 else ''}"
    episodes = getattr(trainer_config, "total_episodes", None)  # PPO counts episodes
    if episodes:
        return f"{episodes} episodes"
    return f"{trainer_config.num_train_epochs:g} epochs"


def _scorer(reward: str, reward_model: str | None) -> str:
    if reward == "judge":
        return "the synthetic judge"
    if reward == "reward_model":
        return f"the reward model {reward_model}"
    return f"the reward function {reward}"


def log_stage_start(logger: Any, job: StageJob, trainer_config: Any, run_link: str) -> None:
    spec = job.plan.spec
    data = ", ".join(f"{d.num_rows} {d.role} rows from {d.description}" for d in job.datasets)
    scoring = ""
    if STAGES[spec.stage].scored_online:
        scoring = "; rollouts scored by " + _scorer(spec.reward, spec.reward_model)
    logger.info(
        "%s: starts from %s on %s, %s (batch %d per device, learning rate %g)%s; MLflow run %s",
        spec.stage,
        spec.model,
        data,
        _length(trainer_config),
        trainer_config.per_device_train_batch_size,
        trainer_config.learning_rate,
        scoring,
        run_link,
    )


def log_stage_reused(logger: Any, stage: str, final_dir: str) -> None:
    logger.info("%s: reusing the finished checkpoint %s (same digest: nothing to train)", stage, final_dir)


def log_stage_end(logger: Any, result: StageResult, run_link: str) -> None:
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items()))
    logger.info(
        "%s: done at step %d (%.1f s of training, %.1f s in all); final metrics: %s; MLflow run %s",
        result.stage,
        result.global_step,
        result.train_seconds,
        result.wall_seconds,
        metrics or "none logged",
        run_link,
    )
