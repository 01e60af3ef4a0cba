"""The pipeline's Prefect tasks, one per stage: prepare data, train SFT / reward / DPO / PPO, evaluate, register.

Each returns paths, digests and run ids (pydantic models), never models or tensors. Training stages are cached on
their digest (config + data digest + upstream digests; see `tasks.digests`) and retried once on infrastructure
errors (never on a configuration, data or non-finite-loss error: retrying would fail the same way). Each opens
its own MLflow run under the pipeline's parent run, whose id it receives explicitly.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import task

from tasks.config import EvaluationSettings, PipelineConfig
from tasks.digests import digest_of
from tasks.prepare import load_prompts, materialise_data
from tasks.results import (
    EvaluationResult,
    PreparedData,
    RegistrationResult,
    StageResult,
    TrainOutcome,
)
from tasks.stage_logging import log_stage_end, log_stage_reused, log_stage_start, stage_logger
from tasks.stage_registry import STAGES, preference_stages
from tasks.stage_specs import PipelinePlan, StageJob, StagePlan
from tasks.tracking import runs as tracking
from tasks.tracking.model_registry import choose_policy, register_policy
from tasks.training.launch import train_stage
from tasks.training.run import resolve_trainer_config

__all__ = ["TRAINING_TASKS", "evaluate", "prepare_data", "register", "run_training_job"]


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    job: StageJob = parameters["job"]
    # The folder is part of the key: the same digest under another output_dir is another checkpoint.
    return f"rlhf-{job.plan.stage}-{job.plan.digest}-{digest_of(job.output_dir)[:12]}"


def _retry_condition(task_obj: Any, task_run: Any, state: Any) -> bool:
    from rlhf_core.trainers.base import NonFiniteLossError
    from tasks.tracking.check import TrackingServerUnreachable

    try:
        state.result()
    except (ValueError, TypeError, KeyError, NonFiniteLossError, TrackingServerUnreachable):
        return False
    except Exception:
        return True
    return False


@contextlib.contextmanager
def _stage_lock(stage_dir: Path) -> Iterator[None]:
    """One writer per stage folder: a second pipeline run with the same digest waits, then reuses the result."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    with open(stage_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _finished_outcome(plan: StagePlan) -> TrainOutcome | None:
    spec = plan.spec
    if spec.outcome_file.is_file() and (spec.final_dir / "config.json").is_file():
        return TrainOutcome.model_validate_json(spec.outcome_file.read_text())
    return None


def _log_stage_inputs(job: StageJob, trainer_config: Any) -> None:
    spec = job.plan.spec
    tracking.log_dict(
        {
            "stage": spec.stage,
            "digest": job.plan.digest,
            "model": spec.model,
            "lora": spec.lora,
            "reward": spec.reward,
            "reward_model": spec.reward_model,
            "data": {
                d.role: {"digest": d.digest, "rows": d.num_rows, "source": d.description}
                for d in job.datasets
            },
            "trainer_config": trainer_config.to_dict(),
        },
        "stage_config.json",
    )
    for prepared in job.datasets:
        tracking.log_dataset(prepared.path, name=prepared.role, digest=prepared.digest, context="training")


def _samples(job: StageJob, policy: str, reward_model: str | None, name: str) -> float:
    start = time.perf_counter()
    # Imported here, in the stage's work time: it imports torch and transformers (seconds), which the flow's
    # start-up and its first stage (data) do not need.
    from tasks.evaluation import sample_rows

    rows = sample_rows(
        policy,
        load_prompts(job.eval_prompts, job.evaluation.num_samples),
        job.evaluation,
        reward_model=reward_model,
    )
    tracking.log_samples(rows, name)
    return time.perf_counter() - start


def _log_training_samples(spec: Any) -> None:
    """The completions an online stage (GRPO/RLOO) sampled and scored at each of its logs, as samples/training."""
    # rlhf_core.trainers.online.metrics.COMPLETIONS_FILE (not imported: it would import torch into the flow)
    path = Path(spec.checkpoints_dir) / "completions.jsonl"
    if path.is_file():
        tracking.log_samples([json.loads(line) for line in path.read_text().splitlines() if line], "training")


def _train_or_reuse(
    job: StageJob, run_id: str, trainer_config: Any, logger: Any
) -> tuple[TrainOutcome, float]:
    """The stage's finished outcome when its folder holds one (and no refresh), else train it now."""
    plan = job.plan
    outcome = None if job.refresh else _finished_outcome(plan)
    if outcome is not None:
        tracking.set_tags(run_id, {"rlhf.reused_checkpoint": outcome.final_dir})
        log_stage_reused(logger, plan.stage, outcome.final_dir)
        return outcome, 0.0
    start = time.perf_counter()
    spec = plan.spec.model_copy(
        update={"mlflow_run_id": run_id, "tracking_uri": tracking.configure_tracking()}
    )
    outcome = train_stage(spec, job.scale_out, trainer_config)
    return outcome, time.perf_counter() - start


def run_training_job(job: StageJob) -> StageResult:
    """Open the stage's run, log inputs and 'before' samples, train (or reuse), log model and 'after' samples."""
    wall = time.perf_counter()
    plan, spec, logger = job.plan, job.plan.spec, stage_logger()
    is_reward = STAGES[spec.stage].produces == "reward_model"
    # Once per stage: logged here, trained with below. Stage work: the first stage to build one imports
    # transformers (seconds), which is not orchestration or tracking.
    trainer_config = resolve_trainer_config(spec)
    setup = time.perf_counter() - wall
    with (
        _stage_lock(Path(spec.stage_dir)),
        tracking.stage_run(job.parent_run_id, spec.stage, tags={"rlhf.digest": plan.digest}) as run_id,
    ):
        link = tracking.run_url(run_id)
        log_stage_start(logger, job, trainer_config, link)
        _log_stage_inputs(job, trainer_config)
        work = setup + _samples(job, plan.input_policy, plan.sample_reward_model, "before")
        outcome, train_wall = _train_or_reuse(job, run_id, trainer_config, logger)
        model_uri = None
        if job.log_models:
            model_uri = tracking.log_checkpoint_model(
                outcome.final_dir,
                kind="reward" if is_reward else "policy",
                max_new_tokens=job.evaluation.max_new_tokens,
            )
        after_policy = plan.input_policy if is_reward else outcome.final_dir
        after_rm = outcome.final_dir if is_reward else plan.sample_reward_model
        work += train_wall + _samples(job, after_policy, after_rm, "after")
        _log_training_samples(spec)
        tracking.log_metrics(
            run_id, {"stage_train_seconds": outcome.train_seconds, "stage_work_seconds": work}
        )
    result = StageResult(
        stage=spec.stage,
        digest=plan.digest,
        model_dir=outcome.final_dir,
        run_id=run_id,
        parent_run_id=job.parent_run_id,
        model_uri=model_uri,
        train_seconds=outcome.train_seconds,
        work_seconds=work,
        wall_seconds=time.perf_counter() - wall,
        global_step=outcome.global_step,
        resumed_from=outcome.resumed_from,
        metrics=outcome.metrics,
    )
    log_stage_end(logger, result, link)
    return result


def _training_task(stage: str):
    def body(job: StageJob) -> StageResult:
        if job.plan.stage != stage:
            raise ValueError(f"train-{stage} got a job for stage {job.plan.stage!r}")
        return run_training_job(job)

    body.__name__ = body.__qualname__ = f"train_{stage}"
    return task(
        name=f"train-{stage}",
        cache_key_fn=_cache_key,
        persist_result=True,
        retries=1,
        retry_delay_seconds=2,
        retry_condition_fn=_retry_condition,
        timeout_seconds=3600,
        task_run_name=f"train-{stage}",
    )(body)


# One Prefect task per registry stage (``train-sft``, ...), so each shows under its own name in the UI.
TRAINING_TASKS = {name: _training_task(name) for name in STAGES}


@task(name="prepare-data", retries=1, retry_condition_fn=_retry_condition, timeout_seconds=1800)
def prepare_data(config: PipelineConfig, parent_run_id: str) -> PreparedData:
    """Validate and save every data role the enabled stages read; log each as an MLflow dataset input."""
    with tracking.stage_run(parent_run_id, "prepare_data"):
        prepared = materialise_data(config)
        for item in prepared.datasets.values():
            tracking.log_dataset(item.path, name=item.role, digest=item.digest, context=item.role)
    return prepared


@task(name="evaluate", retries=1, retry_condition_fn=_retry_condition, timeout_seconds=3600)
def evaluate(
    plan: PipelinePlan, eval_prompts: str, settings: EvaluationSettings, parent_run_id: str
) -> EvaluationResult:
    """Judge, reward-model score, win rate vs SFT and KL to the reference for every policy, on held-out prompts;
    metrics go to the parent run (``<policy>_<metric>``) so pipeline runs compare side by side."""
    wall = time.perf_counter()
    from tasks.evaluation import evaluate_policies  # torch and transformers: see `_samples`

    imported = time.perf_counter() - wall
    with tracking.stage_run(parent_run_id, "evaluate") as run_id:
        metrics, rows, work = evaluate_policies(
            plan.policies(),
            load_prompts(eval_prompts),
            settings,
            reference=plan.reference,
            reward_model=plan.reward_model,
        )
        tracking.log_samples(rows, "evaluation")
        flat = {
            f"{name}_{k}": v
            for name, m in metrics.items()
            for k, v in m.model_dump().items()
            if v is not None
        }
        tracking.log_metrics(run_id, flat)
        tracking.log_metrics(parent_run_id, flat)
    return EvaluationResult(
        policies=metrics,
        run_id=run_id,
        reference=plan.reference,
        work_seconds=work + imported,
        wall_seconds=time.perf_counter() - wall,
    )


@task(name="register", retries=1, retry_condition_fn=_retry_condition, timeout_seconds=600)
def register(
    config: PipelineConfig, results: dict[str, StageResult], evaluation: EvaluationResult, parent_run_id: str
) -> RegistrationResult | None:
    """Register the final policy; the `champion` alias moves only when it beats the champion (config rule)."""
    rule = config.tracking.champion
    chosen = config.tracking.register_policy
    candidates = [s for s in preference_stages() if s in results] if chosen == "best" else [chosen]
    if not candidates or results[candidates[0]].model_uri is None:
        return None
    policy = choose_policy(evaluation.policies, candidates, rule)
    result = register_policy(
        results[policy].model_uri,
        name=config.tracking.registered_model_name,
        policy=policy,
        metrics=evaluation.policies[policy],
        rule=rule,
        tags={"pipeline_run_id": parent_run_id, "stage_digest": results[policy].digest},
    )
    tracking.set_tags(
        parent_run_id,
        {
            "rlhf.registered_version": result.version,
            "rlhf.registered_policy": policy,
            "rlhf.champion_moved": result.champion_moved,
        },
    )
    return result
