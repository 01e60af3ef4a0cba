"""The pipeline's plan: for each enabled stage, what it starts from, what it reads, its digest and its folder.

Everything is decided up front from the config and the data digests. A stage's folder is named by its digest, so
the path a downstream stage starts from (e.g. DPO from ``<output>/stages/sft-<digest>/final``) is known before the
upstream stage runs, and equal inputs always map to the same folder (cache hits and resumes find it there).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tasks.config import PipelineConfig
from tasks.digests import short, stage_digest
from tasks.results import PreparedData
from tasks.training.run import StageSpec

__all__ = ["PipelinePlan", "StagePlan", "build_plan"]


class StagePlan(BaseModel):
    stage: str
    digest: str
    spec: StageSpec
    input_policy: str  # the policy sampled in the "before" table (the reward stage: the policy it scores)
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
        out.update({s: str(p.spec.final_dir) for s, p in self.stages.items() if s != "reward"})
        return out


def _resolve(name_or_path: str) -> str:
    from rlhf_core.models.loading import resolve_model_path

    return resolve_model_path(name_or_path)


class _PlanBuilder:
    """Adds stages in pipeline order; each stage's digest covers the digests of the stages it builds on."""

    def __init__(self, config: PipelineConfig, data: PreparedData) -> None:
        self.config, self.data = config, data
        self.root = Path(config.output_dir).resolve() / "stages"
        self.stages: dict[str, StagePlan] = {}
        self.digests: dict[str, str] = {}

    def add(
        self, stage: str, start: str, start_name: str, upstream: list[str], input_policy: str, **extra
    ) -> str:
        """Plan ``stage`` starting from ``start`` (``start_name`` enters the digest); returns its final folder."""
        config, settings = self.config, getattr(self.config.stages, stage)
        inputs = {u: self.digests[u] for u in upstream if u in self.digests}
        if extra.get("reward_model") and "reward" not in self.digests:
            inputs["reward_model"] = str(config.model.reward_model)  # a given, not trained, reward model
        digest = stage_digest(
            config,
            stage,
            start_model=start_name,
            data_digests={stage: self.data.digest(stage)},
            upstream=inputs,
        )
        spec = StageSpec(
            stage=stage,
            model=start,
            train_data=self.data.datasets[stage].path,
            stage_dir=str(self.root / f"{stage}-{short(digest)}"),
            args=settings.args,
            lora=settings.lora,
            seed=config.seed,
            resume=settings.resume,
            **extra,
        )
        self.digests[stage] = digest
        self.stages[stage] = StagePlan(
            stage=stage,
            digest=digest,
            spec=spec,
            input_policy=input_policy,
            data_roles=[stage],
            retries=settings.retries,
            timeout_s=settings.timeout_s,
        )
        return str(spec.final_dir)


def build_plan(config: PipelineConfig, data: PreparedData) -> PipelinePlan:
    """Digests, folders and specs of every enabled stage, in order (sft, reward, dpo, ppo)."""
    plan = _PlanBuilder(config, data)
    base = _resolve(config.model.name_or_path)
    policy, policy_name = base, config.model.name_or_path
    if config.stages.sft.enabled:
        policy = plan.add("sft", base, policy_name, [], base)
        policy_name = f"sft:{plan.digests['sft']}"
    reward_model = _resolve(config.model.reward_model) if config.model.reward_model else None
    if config.stages.reward.enabled:
        backbone = config.model.reward_backbone
        start, start_name = (_resolve(backbone), backbone) if backbone else (policy, policy_name)
        reward_model = plan.add("reward", start, start_name, [] if backbone else ["sft"], policy)
    if config.stages.dpo.enabled:
        plan.add("dpo", policy, policy_name, ["sft"], policy)
    ppo = config.stages.ppo
    if ppo.enabled:
        uses_rm = ppo.reward == "reward_model"
        plan.add("ppo", policy, policy_name, ["sft", "reward"] if uses_rm else ["sft"], policy,
                 reward=ppo.reward, reward_model=reward_model if uses_rm else None)  # fmt: skip
    reference = "sft" if config.stages.sft.enabled else "base"
    return PipelinePlan(base_model=base, stages=plan.stages, reward_model=reward_model, reference=reference)
