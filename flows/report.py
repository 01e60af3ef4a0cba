"""The pipeline's stage table (markdown for Prefect, plain text for the terminal) and its time accounting."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tasks.results import EvaluationResult, PreparedData, RegistrationResult, StageResult

__all__ = ["PipelineSummary", "StageRow", "markdown_table", "stage_rows", "text_table"]

COLUMNS = (
    "stage",
    "judge score",
    "reward-model score",
    "win rate vs SFT",
    "KL to reference",
    "wall time (s)",
)


class StageRow(BaseModel):
    stage: str
    judge_score: float | None = None
    reward_score: float | None = None
    win_rate: float | None = None
    kl_to_ref: float | None = None
    wall_seconds: float | None = None
    cached: bool = False


class PipelineSummary(BaseModel):
    """What `rlhf_pipeline` returns: where everything is, the table, and where the time went."""

    parent_run_id: str
    tracking_uri: str
    ui_command: str
    stages: dict[str, StageResult]
    evaluation: EvaluationResult | None = None
    registration: RegistrationResult | None = None
    rows: list[StageRow] = Field(default_factory=list)
    wall_seconds: float = 0.0
    work_seconds: float = 0.0
    train_seconds: float = 0.0

    @property
    def overhead_seconds(self) -> float:
        """Flow time not spent in training, sampling, evaluation or data preparation: Prefect and MLflow."""
        return max(self.wall_seconds - self.work_seconds, 0.0)


def stage_rows(
    data: PreparedData,
    results: dict[str, StageResult],
    evaluation: EvaluationResult | None,
    parent_run_id: str,
) -> list[StageRow]:
    """One row per policy (base, sft, dpo, ppo) and for the reward stage; cached stages show no wall time."""
    policies = evaluation.policies if evaluation else {}
    rows = [StageRow(stage="prepare_data", wall_seconds=data.seconds)]
    for name in ["base", *results]:
        metrics = policies.get(name)
        result = results.get(name)
        cached = result is not None and result.parent_run_id != parent_run_id
        row = StageRow(
            stage=name, cached=cached, wall_seconds=None if result is None or cached else result.wall_seconds
        )
        if metrics is not None:
            row = row.model_copy(update=metrics.model_dump())
        rows.append(row)
    if evaluation is not None:
        rows.append(StageRow(stage="evaluate", wall_seconds=evaluation.wall_seconds))
    return rows


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cells(row: StageRow) -> list[str]:
    wall = "cached" if row.cached else _cell(row.wall_seconds, 1)
    return [
        row.stage,
        _cell(row.judge_score),
        _cell(row.reward_score),
        _cell(row.win_rate),
        _cell(row.kl_to_ref),
        wall,
    ]


def markdown_table(rows: list[StageRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def text_table(rows: list[StageRow]) -> str:
    cells = [list(COLUMNS), *(_cells(row) for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
