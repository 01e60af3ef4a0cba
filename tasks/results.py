"""What the pipeline's tasks return: paths, digests, run ids and numbers (never models or tensors).

Each is a small pydantic model, so Prefect persists it (for caching) and the flow can read it back anywhere.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

__all__ = [
    "EvaluationResult",
    "PolicyMetrics",
    "PreparedData",
    "PreparedDataset",
    "RegistrationResult",
    "StageResult",
    "TrainOutcome",
]


class PreparedDataset(BaseModel):
    """One data role materialised on disk (``datasets.save_to_disk``), named by its content digest."""

    role: str
    path: str
    digest: str
    num_rows: int
    description: str


class PreparedData(BaseModel):
    datasets: dict[str, PreparedDataset] = Field(default_factory=dict)
    seconds: float = 0.0

    def digest(self, role: str) -> str:
        return self.datasets[role].digest


class TrainOutcome(BaseModel):
    """What one training run produced (written by the stage entry point, also across `accelerate launch`)."""

    final_dir: str
    train_seconds: float
    global_step: int
    num_processes: int = 1
    resumed_from: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class StageResult(BaseModel):
    """A finished training stage. ``parent_run_id`` tells which pipeline run trained it (a cached result keeps
    the run that made it)."""

    stage: str
    digest: str
    model_dir: str
    run_id: str
    parent_run_id: str
    model_uri: str | None = None
    train_seconds: float = 0.0
    work_seconds: float = 0.0
    wall_seconds: float = 0.0
    global_step: int = 0
    resumed_from: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)

    def exists(self) -> bool:
        """The checkpoint is still on disk (a cached result whose folder was deleted must be recomputed)."""
        return (Path(self.model_dir) / "config.json").is_file()


class PolicyMetrics(BaseModel):
    judge_score: float | None = None
    reward_score: float | None = None
    win_rate: float | None = None
    kl_to_ref: float | None = None

    def get(self, metric: str) -> float | None:
        return getattr(self, metric)


class EvaluationResult(BaseModel):
    policies: dict[str, PolicyMetrics]
    run_id: str
    reference: str
    work_seconds: float = 0.0
    wall_seconds: float = 0.0


class RegistrationResult(BaseModel):
    name: str
    version: str
    policy: str
    metric: str
    value: float | None
    champion_version: str | None
    champion_moved: bool
    previous_champion: str | None = None
