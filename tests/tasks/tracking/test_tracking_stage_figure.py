"""The stage-comparison figure on the parent run, and experiments that open in MLflow's classic runs view."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from tasks.tracking import runs as tracking
from tasks.tracking.stage_figure import ARTIFACT, log_stage_comparison, stage_comparison_figure

ROWS = [
    {"stage": "base", "judge_score": 0.0, "reward_score": -0.4, "kl_to_ref": None},
    {"stage": "sft", "judge_score": 0.6, "reward_score": 0.1, "kl_to_ref": 0.0},
    {"stage": "ppo", "judge_score": 0.85, "reward_score": 0.9, "kl_to_ref": 0.12},
    {"stage": "reward", "judge_score": None, "reward_score": None, "kl_to_ref": None},
]


def test_one_bar_per_stage_that_has_the_metric():
    fig = stage_comparison_figure(ROWS)
    judge, reward, kl = fig.axes
    assert [t.get_text() for t in judge.get_xticklabels()] == ["base", "sft", "ppo"]
    assert [round(p.get_height(), 3) for p in judge.patches] == [0.0, 0.6, 0.85]
    assert [round(p.get_height(), 3) for p in kl.patches] == [0.0, 0.12]  # base has no KL to itself
    assert [t.get_text() for t in reward.get_xticklabels()] == ["base", "sft", "ppo"]


def test_figure_is_a_png_on_the_parent_run_and_the_experiment_opens_on_runs(mlflow_store, tmp_path):
    with tracking.parent_run("figure", "pipeline", {}) as parent:
        assert log_stage_comparison(parent, ROWS) == ARTIFACT
    client = MlflowClient()
    png = client.download_artifacts(parent, ARTIFACT, str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    experiment = client.get_experiment_by_name("figure")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_kind_the_user_chose_is_kept(mlflow_store):
    client = MlflowClient()
    exp = client.create_experiment("chosen-kind", tags={tracking.EXPERIMENT_KIND_TAG: "finetuning"})
    with tracking.parent_run("chosen-kind", "pipeline", {}):
        pass
    assert client.get_experiment(exp).tags[tracking.EXPERIMENT_KIND_TAG] == "finetuning"
