"""Model registry: register the pipeline's final policy; move the `champion` alias only when it wins."""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks.config import ChampionRule
from tasks.results import PolicyMetrics, RegistrationResult

__all__ = ["CHAMPION_ALIAS", "choose_policy", "register_policy"]

CHAMPION_ALIAS = "champion"
_METRIC_TAG = "metric.{}"


def choose_policy(metrics: dict[str, PolicyMetrics], candidates: list[str], rule: ChampionRule) -> str:
    """The candidate (e.g. ``["dpo", "ppo"]``) that scores best under ``rule``; ties keep the first."""
    if not candidates:
        raise ValueError("no preference-tuned policy to register (enable stages.dpo or stages.ppo)")
    sign = 1.0 if rule.direction == "maximize" else -1.0

    def key(name: str) -> float:
        value = metrics[name].get(rule.metric)
        return float("-inf") if value is None else sign * value

    return max(candidates, key=key)


def _champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None


def register_policy(
    model_uri: str,
    *,
    name: str,
    policy: str,
    metrics: PolicyMetrics,
    rule: ChampionRule,
    tags: dict[str, str] | None = None,
) -> RegistrationResult:
    """Register ``model_uri`` as a new version of ``name`` (its metrics as tags) and apply the champion rule.

    The alias moves when there is no champion yet, or when the new version beats the champion's recorded value
    of ``rule.metric`` in ``rule.direction`` by more than ``rule.min_delta``. A champion without that metric
    recorded (registered under another rule) cannot be compared, and keeps the alias.
    """
    client = MlflowClient()
    metric_tags = {_METRIC_TAG.format(k): str(v) for k, v in metrics.model_dump().items() if v is not None}
    version = mlflow.register_model(model_uri, name, tags={"policy": policy, **metric_tags, **(tags or {})})
    value = metrics.get(rule.metric)
    champion = _champion(client, name)
    champion_value = None
    if champion is not None and str(champion.version) != str(version.version):
        recorded = champion.tags.get(_METRIC_TAG.format(rule.metric))
        champion_value = float(recorded) if recorded is not None else None
    comparable = champion is None or champion_value is not None
    moved = value is not None and comparable and rule.beats(value, champion_value)
    if moved:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    return RegistrationResult(
        name=name,
        version=str(version.version),
        policy=policy,
        metric=rule.metric,
        value=value,
        champion_version=str(version.version) if moved else (str(champion.version) if champion else None),
        champion_moved=moved,
        previous_champion=str(champion.version) if champion else None,
    )
