"""Train one stage from a `StageSpec`: build the trainer config and the trainer, resume, train, save.

The same function runs in the pipeline's process or, under `accelerate launch`, in every worker process
(`tasks.training.entry`); the spec is plain JSON so it crosses that process boundary. MLflow: the trainer's
callback logs into whichever run is active (the stage run, on rank 0 only); the one call here tags the stage run
when it resumes from a checkpoint (rank 0).

Folder of a stage (named by its digest): ``checkpoints/`` (the Trainer's ``output_dir``; a crashed run resumes
from its last ``checkpoint-N``), ``final/`` (the saved model, renamed into place only when complete),
``outcome.json`` (what `run_stage_training` returns).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.config.stages import build_trainer_config
from tasks.results import TrainOutcome
from tasks.stage_registry import get_stage, import_object
from tasks.stage_specs import StageSpec

__all__ = ["PIPELINE_SAVE_TOTAL_LIMIT", "build_trainer", "resolve_trainer_config", "run_stage_training"]

logger = logging.getLogger(__name__)

# Checkpoints a pipeline stage keeps (the newest ones; the final model is saved apart, in ``final/``): enough to
# resume from, without PPO's six full copies on disk. A stage's own ``save_total_limit`` (null: keep all) wins.
PIPELINE_SAVE_TOTAL_LIMIT = 2


def resolve_trainer_config(spec: StageSpec) -> Any:
    """The stage's trainer config: user args + what the pipeline owns (output dir, seed, MLflow reporting) and
    its defaults (at most `PIPELINE_SAVE_TOTAL_LIMIT` checkpoints kept)."""
    report_to = spec.args.get("report_to", "none")
    report_to = (
        [] if report_to in (None, "none") else [report_to] if isinstance(report_to, str) else list(report_to)
    )
    overrides = {"report_to": sorted({*report_to, "mlflow"}), "seed": spec.args.get("seed", spec.seed)}
    if "save_total_limit" not in spec.args:
        overrides["save_total_limit"] = PIPELINE_SAVE_TOTAL_LIMIT
    if "run_name" not in spec.args:
        overrides["run_name"] = spec.stage
    return build_trainer_config(spec.stage, spec.args, output_dir=str(spec.checkpoints_dir), **overrides)


def _peft_config(spec: StageSpec) -> Any:
    if spec.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(**spec.lora)


def _load(path: str) -> Any:
    from datasets import load_from_disk

    return load_from_disk(path)


def _online_scoring(spec: StageSpec) -> dict[str, Any]:
    """What scores an online stage's rollouts: the synthetic judge, a "module:function", or the reward model.

    PPO takes ``reward_fn=`` / ``reward_model=`` (loaded here); GRPO (``reward_funcs`` in the registry) takes
    TRL's ``reward_funcs=``: the judge in its reward-function form, the function, or the reward model's path.
    """
    online = get_stage(spec.stage).reward_funcs
    if spec.reward == "judge":
        if online:
            from rlhf_core.rewards import synthetic_judge_reward

            return {"reward_funcs": synthetic_judge_reward}
        from rlhf_core.data.synthetic import judge_responses

        return {"reward_fn": judge_responses}
    if spec.reward != "reward_model":
        return {"reward_funcs" if online else "reward_fn": import_object(spec.reward)}
    if online:
        return {"reward_funcs": spec.reward_model}
    from rlhf_core.models.loading import load_sequence_classifier

    return {"reward_model": load_sequence_classifier(spec.reward_model, num_labels=1)}


def build_trainer(spec: StageSpec, args: Any) -> Any:
    """The stage's trainer (its class from `tasks.stage_registry`), with train() and save_model(path)."""
    stage = get_stage(spec.stage)
    inputs: dict[str, Any] = {
        "model": spec.model,
        "args": args,
        "train_dataset": _load(spec.train_data),
        "peft_config": _peft_config(spec),
    }
    if stage.reference_model:
        inputs["ref_model"] = None  # a frozen copy of the starting policy (the SFT model) is the reference
    if stage.scored_online:
        inputs.update(_online_scoring(spec))
    return stage.load_trainer_class()(**inputs)


def _last_checkpoint(spec: StageSpec) -> str | None:
    if not spec.resume or not spec.checkpoints_dir.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(spec.checkpoints_dir))


def run_stage_training(
    spec: StageSpec,
    trainer_config: Any = None,
    *,
    callbacks: Sequence[Any] = (),
    resume_from: str | None = None,
) -> TrainOutcome:
    """Train ``spec.stage`` (resuming from ``resume_from``, else from its last checkpoint when one exists) and save
    the final model.

    ``trainer_config``: the stage's `resolve_trainer_config` when the caller built it already (once per stage).
    ``callbacks``: extra TrainerCallbacks (Ray Train's checkpoint reporting).
    """
    args = resolve_trainer_config(spec) if trainer_config is None else trainer_config
    staging = (
        Path(spec.stage_dir) / ".final.partial"
    )  # one name for every rank: save_model runs on all of them
    if args.process_index == 0:
        shutil.rmtree(staging, ignore_errors=True)  # a crashed run's half-saved model
    from transformers import set_seed

    # Weights the trainer creates while building (a reward model's score head, PPO's value head) come from the
    # seed, not from whatever the process's generator last did: 1 process, N processes and Ray workers agree.
    set_seed(args.seed)
    trainer = build_trainer(spec, args)
    _log_synchronously(trainer)
    for callback in callbacks:
        trainer.add_callback(callback)
    resume = resume_from or _last_checkpoint(spec)
    if resume:
        _announce_resume(spec, resume, is_main=args.process_index == 0)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - start
    trainer.save_model(str(staging))
    outcome = TrainOutcome(
        final_dir=str(spec.final_dir.resolve()),
        train_seconds=train_seconds,
        global_step=int(trainer.state.global_step),
        num_processes=int(args.world_size),
        resumed_from=resume,
        metrics=_final_metrics(trainer, result),
    )
    if trainer.is_world_process_zero():
        _save_tokenizer(trainer, staging)
        shutil.rmtree(spec.final_dir, ignore_errors=True)
        os.replace(staging, spec.final_dir)
        spec.outcome_file.write_text(outcome.model_dump_json(indent=2))
    return outcome


def _checkpoint_progress(checkpoint: str) -> tuple[int, int | None]:
    """(steps done, steps in all) from the checkpoint's ``trainer_state.json`` (Trainer and PPO write both)."""
    import json

    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("global_step", 0)), state.get("max_steps") or None


def _announce_resume(spec: StageSpec, checkpoint: str, *, is_main: bool) -> None:
    """Say that (and where) the stage resumes: the console and Prefect's logs (the task's run logger when there is
    one, else stderr: an ``accelerate launch`` worker) and tags on the stage's MLflow run (rank 0)."""
    if not is_main:
        return
    step, total = _checkpoint_progress(checkpoint)
    line = f"resuming {spec.stage} from {Path(checkpoint).name} (step {step} of {total or '?'})"
    try:
        from prefect.logging import get_run_logger

        get_run_logger().info(line)  # Prefect's console handler prints it too
    except Exception:  # no Prefect run here (a launched worker, a direct call)
        import sys

        logger.info(line)
        print(line, file=sys.stderr, flush=True)
    if spec.mlflow_run_id:
        from tasks.tracking.runs import set_tags

        set_tags(spec.mlflow_run_id, {"rlhf.resumed_from": checkpoint, "rlhf.resumed_step": step,
                                      "rlhf.resumed_of_steps": total or "?"})  # fmt: skip


def _log_synchronously(trainer: Any) -> None:
    """Swap the MLflow callback that ``report_to=["mlflow"]`` installed for its synchronous variant."""
    from transformers.integrations import MLflowCallback

    if any(isinstance(cb, MLflowCallback) for cb in trainer.callback_handler.callbacks):
        from tasks.tracking.runs import synchronous_mlflow_callback

        trainer.callback_handler.pop_callback(MLflowCallback)
        trainer.add_callback(synchronous_mlflow_callback())


def _save_tokenizer(trainer: Any, folder: Path) -> None:
    tokenizer = getattr(trainer, "processing_class", None)
    if tokenizer is not None and not (folder / "tokenizer_config.json").is_file():
        tokenizer.save_pretrained(str(folder))


def _final_metrics(trainer: Any, result: Any) -> dict[str, float]:
    """The last logged value of every numeric metric, plus train_runtime/train_loss from train()."""
    metrics: dict[str, float] = {}
    for entry in getattr(trainer.state, "log_history", []):
        metrics.update({k: float(v) for k, v in entry.items() if isinstance(v, int | float) and k != "step"})
    for key, value in (getattr(result, "metrics", None) or {}).items():
        if isinstance(value, int | float):
            metrics[key] = float(value)
    return metrics
