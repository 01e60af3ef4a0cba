"""The pipeline's plan: for each enabled stage, what it starts from, what it reads, its digest and its folder.

Everything is decided up front from the config and the data digests. A stage's folder is named by its digest, so
the path a downstream stage starts from (e.g. DPO from ``<output>/stages/sft-<digest>/final``) is known before the
upstream stage runs, and equal inputs always map to the same folder (cache hits and resumes find it there).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from tasks.config import PipelineConfig
from tasks.config.stages import StageSettings
from tasks.digests import short, stage_digest
from tasks.results import PreparedData
from tasks.stage_registry import STAGES, StageDefinition, preference_stages, reward_model_stage
from tasks.stage_specs import PipelinePlan, StagePlan, StageSpec

__all__ = ["build_plan"]


def _function_source(reward: str) -> str:
    """Digest of the source file of the module that holds a ``"module:function"`` reward: editing the function
    changes what the stage trains towards, so the stage is trained again instead of reused."""
    module = reward.partition(":")[0]
    spec = importlib.util.find_spec(module)
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    return (
        hashlib.sha256(origin.read_bytes()).hexdigest() if origin is not None and origin.is_file() else module
    )


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
        self.base = _resolve(config.model.name_or_path)
        given = config.model.reward_model
        self.reward_model = _resolve(given) if given else None  # replaced by the reward stage's once planned

    def start_of(self, stage: StageDefinition) -> tuple[str, str, list[str]]:
        """(start folder, its name in the digest, upstream stages) of ``stage``."""
        backbone = self.config.model.reward_backbone
        if stage.produces == "reward_model" and backbone:
            return _resolve(backbone), backbone, []
        upstream = self.stages.get(stage.starts_from) if stage.starts_from else None
        if upstream is None:
            return self.base, self.config.model.name_or_path, []
        return str(upstream.spec.final_dir), f"{upstream.stage}:{upstream.digest}", [upstream.stage]

    def add(self, stage: StageDefinition) -> None:
        config, settings = self.config, self.config.stages.get(stage.name)
        start, start_name, upstream = self.start_of(stage)
        policy = start if stage.produces == "policy" else self._policy()  # the reward stage scores the policy
        scoring = self._scoring(stage, settings)
        inputs = {u: self.digests[u] for u in upstream}
        if scoring.get("reward_model"):
            trained = reward_model_stage()
            if trained in self.digests:
                inputs[trained] = self.digests[trained]
            else:  # a given, not trained, reward model
                inputs["reward_model"] = str(config.model.reward_model)
        if scoring.get("reward") not in (None, "judge", "reward_model"):
            inputs["reward_function"] = _function_source(scoring["reward"])
        digest = stage_digest(
            config,
            stage.name,
            start_model=start_name,
            data_digests={stage.name: self.data.digest(stage.name)},
            upstream=inputs,
        )
        spec = StageSpec(
            stage=stage.name,
            model=start,
            train_data=self.data.datasets[stage.name].path,
            stage_dir=str(self.root / f"{stage.name}-{short(digest)}"),
            args=settings.args,
            lora=settings.lora,
            seed=config.seed,
            resume=settings.resume,
            **scoring,
        )
        self.digests[stage.name] = digest
        self.stages[stage.name] = StagePlan(
            stage=stage.name,
            digest=digest,
            spec=spec,
            input_policy=policy,
            # Samples are scored by a reward model once one exists: the trained one after the reward stage.
            sample_reward_model=self.reward_model,
            data_roles=[stage.name],
            retries=settings.retries,
            timeout_s=settings.timeout_s,
        )
        if stage.produces == "reward_model":
            self.reward_model = str(spec.final_dir)

    def _policy(self) -> str:
        """The latest policy planned so far (the SFT model once SFT is planned), else the base model."""
        policies = [p for s, p in self.stages.items() if STAGES[s].produces == "policy"]
        return str(policies[-1].spec.final_dir) if policies else self.base

    def _scoring(self, stage: StageDefinition, settings: StageSettings) -> dict[str, str | None]:
        if not stage.scored_online:
            return {}
        if settings.reward != "reward_model":  # the judge, or a function named "module:function"
            return {"reward": settings.reward, "reward_model": None}
        return {"reward": "reward_model", "reward_model": self.reward_model}


def build_plan(config: PipelineConfig, data: PreparedData) -> PipelinePlan:
    """Digests, folders and specs of every enabled stage, in registry order."""
    plan = _PlanBuilder(config, data)
    for name in config.stages.enabled():
        plan.add(STAGES[name])
    # KL and win rate are measured against the policy the preference stages start from (SFT), else the base.
    starts = [STAGES[s].starts_from for s in preference_stages()]
    reference = next((s for s in starts if s in plan.stages), "base")
    return PipelinePlan(
        base_model=plan.base, stages=plan.stages, reward_model=plan.reward_model, reference=reference
    )
