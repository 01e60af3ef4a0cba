"""The RLHF pipeline flow: prepare data -> SFT -> reward model -> DPO and/or PPO -> evaluate -> register.

One MLflow parent run per flow run (tagged with the Prefect flow-run id and name); each task opens its child run.
Every stage is called and its result awaited before the next starts, so a failing stage fails the flow (and
marks the parent run FAILED) instead of leaving a Completed flow with a failed stage (prefect#16373).
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, runtime
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.report import PipelineSummary, markdown_table, stage_rows
from tasks.config import PipelineConfig
from tasks.digests import digest_of, short
from tasks.plan import build_plan
from tasks.results import PreparedData, StageResult
from tasks.stage_specs import PipelinePlan, StageJob
from tasks.stage_tasks import TRAINING_TASKS, evaluate, prepare_data, register
from tasks.tracking import runs as tracking
from tasks.tracking.check import ensure_tracking_reachable, redact_secrets
from tasks.tracking.stage_figure import log_stage_comparison

__all__ = ["config_digest", "flow_run_name", "rlhf_pipeline"]


def _job(
    config: PipelineConfig, plan: PipelinePlan, stage: str, data: PreparedData, parent: str, refresh: bool
):
    stage_plan = plan.stages[stage]
    return StageJob(
        plan=stage_plan,
        parent_run_id=parent,
        output_dir=str(Path(config.output_dir).resolve()),
        eval_prompts=data.datasets["eval"].path,
        evaluation=config.evaluation,
        scale_out=config.scale_out,
        datasets=[data.datasets[role] for role in stage_plan.data_roles],
        log_models=config.tracking.log_models,
        refresh=refresh,
    )


def _run_stage(job: StageJob, refresh: bool) -> StageResult:
    plan = job.plan
    options = {"retries": plan.retries, "timeout_seconds": plan.timeout_s}
    task_fn = TRAINING_TASKS[plan.stage]
    result = task_fn.with_options(**options, refresh_cache=True if refresh else None)(job=job)
    if not result.exists():
        # A cached result whose checkpoint folder has been deleted since: train again.
        result = task_fn.with_options(**options, refresh_cache=True)(job=job)
    if result.parent_run_id != job.parent_run_id:
        tracking.set_tags(job.parent_run_id, {f"rlhf.{plan.stage}.cached_from_run": result.run_id})
    return result


def config_digest(config: PipelineConfig) -> str:
    return short(digest_of(config.model_dump(mode="json")))


def flow_run_name() -> str:
    """``<config name>-<config digest, 8 hex>``: runs of one config share a name in the Prefect UI, and a changed
    config shows as another name (the MLflow parent run carries the same digest as ``rlhf.config_digest``)."""
    from prefect.context import FlowRunContext

    config = FlowRunContext.get().parameters["config"]
    if not isinstance(config, PipelineConfig):
        config = PipelineConfig.model_validate(config)
    return f"{config.name}-{config_digest(config)[:8]}"


def _publish(summary: PipelineSummary) -> None:
    """Prefect artifacts: a link to the MLflow parent run and the stage table; the same comparison as a figure
    on the MLflow parent run."""
    log_stage_comparison(summary.parent_run_id, [row.model_dump() for row in summary.rows])
    create_link_artifact(
        link=tracking.run_url(summary.parent_run_id),
        link_text="MLflow parent run",
        key="mlflow-parent-run",
        description=f"Open with: {summary.ui_command}",
    )
    create_markdown_artifact(
        markdown=markdown_table(summary.rows),
        key="rlhf-stage-table",
        description="Judge score, reward-model score, win rate vs SFT, KL and wall time",
    )


@flow(name="rlhf-pipeline", flow_run_name=flow_run_name, validate_parameters=True)
def rlhf_pipeline(config: PipelineConfig, refresh: bool = False) -> PipelineSummary:
    """SFT -> reward model -> DPO and/or PPO -> evaluation -> registry, tracked in MLflow.

    ``refresh=True`` ignores cached stages and trains every stage again.
    """
    start = time.perf_counter()
    uri = tracking.configure_tracking()
    ensure_tracking_reachable(uri)  # fail in seconds, naming the URI, not after an hour of training
    tags = {
        "prefect.flow_run_id": str(runtime.flow_run.id or ""),
        "prefect.flow_run_name": str(runtime.flow_run.name or ""),
        "rlhf.role": "pipeline",
        "rlhf.config_digest": config_digest(config),
    }
    with tracking.parent_run(config.tracking.experiment_name, config.name, tags) as parent:
        tracking.log_dict(
            redact_secrets(config.model_dump(mode="json")), "pipeline_config.json", run_id=parent
        )
        data = prepare_data(config, parent)
        plan = build_plan(config, data)
        results = {
            stage: _run_stage(_job(config, plan, stage, data, parent, refresh), refresh)
            for stage in plan.stages
        }
        evaluation = evaluate(plan, data.datasets["eval"].path, config.evaluation, parent)
        registration = register(config, results, evaluation, parent)
        fresh = [r for r in results.values() if r.parent_run_id == parent]
        summary = PipelineSummary(
            parent_run_id=parent,
            tracking_uri=uri,
            ui_command=tracking.ui_command(uri),
            stages=results,
            evaluation=evaluation,
            registration=registration,
            rows=stage_rows(data, results, evaluation, parent),
            work_seconds=data.seconds + sum(r.work_seconds for r in fresh) + evaluation.work_seconds,
            train_seconds=sum(r.train_seconds for r in fresh),
        )
        summary.wall_seconds = time.perf_counter() - start
        tracking.log_metrics(
            parent,
            {
                "pipeline_wall_seconds": summary.wall_seconds,
                "pipeline_work_seconds": summary.work_seconds,
                "pipeline_overhead_seconds": summary.overhead_seconds,
            },
        )
        _publish(summary)
    return summary
