"""Registry: each pipeline registers a version; the `champion` alias moves only when the rule says it wins."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tasks.config import ChampionRule
from tasks.evaluation import win_rate
from tasks.results import PolicyMetrics
from tasks.tracking import runs as tracking
from tasks.tracking.model_registry import choose_policy, register_policy


@pytest.fixture(scope="module")
def model_uri(mlflow_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    (folder / "config.json").write_text("{}")  # the registry does not look inside
    with tracking.parent_run("registry", "pipeline", {}) as parent, tracking.stage_run(parent, "dpo"):
        return tracking.log_checkpoint_model(str(folder), kind="policy")


def _register(
    uri: str, name: str, judge: float | None, kl: float | None = 1.0, rule: ChampionRule | None = None
):
    metrics = PolicyMetrics(judge_score=judge, kl_to_ref=kl)
    return register_policy(uri, name=name, policy="dpo", metrics=metrics, rule=rule or ChampionRule())


def test_champion_moves_only_on_improvement(model_uri):
    first = _register(model_uri, "policy-a", 0.60)
    assert first.version == "1" and first.champion_moved and first.previous_champion is None
    worse = _register(model_uri, "policy-a", 0.55)
    assert worse.version == "2" and not worse.champion_moved and worse.champion_version == "1"
    tie = _register(model_uri, "policy-a", 0.60)
    assert not tie.champion_moved
    better = _register(model_uri, "policy-a", 0.70)
    assert better.champion_moved and better.previous_champion == "1"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("policy-a", "champion").version) == better.version
    assert client.get_model_version("policy-a", better.version).tags["metric.judge_score"] == "0.7"


def test_minimize_rule_with_margin(model_uri):
    rule = ChampionRule(metric="kl_to_ref", direction="minimize", min_delta=0.2)
    _register(model_uri, "policy-b", 0.5, kl=1.0, rule=rule)
    assert not _register(model_uri, "policy-b", 0.5, kl=0.9, rule=rule).champion_moved  # not by the margin
    assert _register(model_uri, "policy-b", 0.5, kl=0.7, rule=rule).champion_moved


def test_champion_without_the_rules_metric_keeps_the_alias(model_uri):
    assert not _register(
        model_uri, "policy-c", None
    ).champion_moved  # no value for the rule's metric: no champion
    assert _register(
        model_uri, "policy-c", 0.6, kl=None
    ).champion_moved  # version 2: champion, no KL recorded
    # The rule changed to KL: the champion has no KL value to compare with, so it keeps the alias.
    later = _register(
        model_uri, "policy-c", 0.9, kl=0.1, rule=ChampionRule(metric="kl_to_ref", direction="minimize")
    )
    assert not later.champion_moved and later.champion_version == "2"


def test_choose_policy_and_win_rate():
    metrics = {
        "dpo": PolicyMetrics(judge_score=0.7, kl_to_ref=2.0),
        "ppo": PolicyMetrics(judge_score=0.8, kl_to_ref=3.0),
    }
    assert choose_policy(metrics, ["dpo", "ppo"], ChampionRule()) == "ppo"
    assert (
        choose_policy(metrics, ["dpo", "ppo"], ChampionRule(metric="kl_to_ref", direction="minimize"))
        == "dpo"
    )
    with pytest.raises(ValueError, match="no preference-tuned policy"):
        choose_policy(metrics, [], ChampionRule())
    # wins 1, 0, 0.5 (tie), 1 -> 2.5 / 4
    assert win_rate([0.9, 0.1, 0.5, 0.7], [0.5, 0.2, 0.5, 0.6]) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        win_rate([1.0], [])
