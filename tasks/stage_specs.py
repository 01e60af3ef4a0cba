"""What one training stage is given, as plain data: its spec (what to train), its plan (where it sits in the
pipeline) and its job (the input of its Prefect task).

`StageSpec` crosses process boundaries as JSON (``accelerate launch`` workers read it from ``spec.json``);
`StagePlan` and `PipelinePlan` are decided up front by `tasks.plan.build_plan`; `StageJob` adds what the stage's
task needs from the flow run (the MLflow parent run, evaluation settings, scale-out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from tasks.config import EvaluationSettings, ScaleOutSettings
from tasks.results import PreparedDataset
from tasks.stage_registry import STAGES, get_stage

__all__ = ["PipelinePlan", "StageJob", "StagePlan", "StageSpec"]


class StageSpec(BaseModel):
    """Everything one training stage needs, as plain data."""

    stage: str = Field(description="A stage of `tasks.stage_registry`.")
    model: str = Field(description="Starting weights: the policy (sft/dpo/ppo) or the reward backbone.")
    train_data: str = Field(
        description="Dataset folder (datasets.save_to_disk) of the stage's training rows."
    )
    stage_dir: str
    args: dict[str, Any] = Field(default_factory=dict)
    lora: dict[str, Any] | None = None
    seed: int = 0
    resume: bool = True
    reward_model: str | None = Field(
        None, description="Online stages (PPO): the reward model folder (None with reward='judge')."
    )
    reward: str = "reward_model"  # or "judge", or a reward function as "module:function"
    mlflow_run_id: str | None = Field(
        None, description="Run that rank 0 re-attaches to under accelerate launch."
    )
    tracking_uri: str | None = None

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        return get_stage(value).name

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.stage_dir) / "checkpoints"

    @property
    def final_dir(self) -> Path:
        return Path(self.stage_dir) / "final"

    @property
    def outcome_file(self) -> Path:
        return Path(self.stage_dir) / "outcome.json"


class StagePlan(BaseModel):
    stage: str
    digest: str
    spec: StageSpec
    input_policy: str  # the policy sampled in the "before" table (the reward stage: the policy it scores)
    sample_reward_model: str | None = None  # what scores its sample tables (the trained one once it exists)
    data_roles: list[str]
    retries: int
    timeout_s: float | None


class PipelinePlan(BaseModel):
    base_model: str
    stages: dict[str, StagePlan]
    reward_model: str | None
    reference: str  # policy name that KL and win rate are measured against

    def policies(self) -> dict[str, str]:
        """Policy name -> checkpoint, in pipeline order: base, then every enabled policy stage."""
        out = {"base": self.base_model}
        out.update(
            {s: str(p.spec.final_dir) for s, p in self.stages.items() if STAGES[s].produces == "policy"}
        )
        return out


class StageJob(BaseModel):
    """The input of one training-stage task."""

    plan: StagePlan
    parent_run_id: str
    output_dir: str
    eval_prompts: str
    evaluation: EvaluationSettings
    scale_out: ScaleOutSettings
    datasets: list[PreparedDataset]
    log_models: bool = True
    refresh: bool = False
