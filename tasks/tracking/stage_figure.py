"""The stage-comparison figure of a pipeline run: judge score, reward-model score and KL to the reference per
stage, side by side, logged as ``stage_comparison.png`` to the MLflow parent run (matplotlib comes with mlflow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PANELS", "log_stage_comparison", "stage_comparison_figure"]

# (row field, panel title): the columns of the Prefect stage table that compare stages
PANELS = (
    ("judge_score", "judge score"),
    ("reward_score", "reward-model score"),
    ("kl_to_ref", "KL to reference"),
)
ARTIFACT = "stage_comparison.png"


def stage_comparison_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A matplotlib figure, one bar panel per metric of `PANELS`, one bar per stage that has the metric."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a server, a CI runner, a flow worker
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2), constrained_layout=True)
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        shown = [(row["stage"], row[key]) for row in rows if row.get(key) is not None]
        ax.bar([s for s, _ in shown], [v for _, v in shown], color="#4c72b0")
        for i, (_, value) in enumerate(shown):
            ax.annotate(f"{value:.3g}", (i, value), ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        if not shown:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    return fig


def log_stage_comparison(parent_run_id: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Log the figure to ``parent_run_id``; returns the artifact path."""
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    fig = stage_comparison_figure(rows)
    try:
        MlflowClient().log_figure(parent_run_id, fig, ARTIFACT)
    finally:
        plt.close(fig)
    return ARTIFACT
