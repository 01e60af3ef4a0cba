"""`PipelineConfig`: the one pydantic model that is the YAML file, the Prefect flow parameter and the CLI."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.config.scale_out import ScaleOutSettings
from tasks.config.sources import DataSettings, ModelSource, SyntheticSource
from tasks.config.stages import StagesSettings
from tasks.stage_registry import STAGES, preference_stages, reward_model_stage

__all__ = [
    "ChampionRule",
    "EvaluationSettings",
    "PipelineConfig",
    "ScaleOutSettings",
    "TrackingSettings",
]

EvalMetric = Literal["judge_score", "reward_score", "win_rate", "kl_to_ref"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvaluationSettings(_Strict):
    """Held-out evaluation of every policy (base, SFT, DPO, PPO) and the sample tables logged per stage."""

    judge: Literal["synthetic"] | None = Field(
        "synthetic",
        description="Ground-truth judge: 'synthetic' (the bundled task) or null when there is none.",
    )
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(
        0.0,
        ge=0.0,
        description="Sampling temperature of the scored answers (0 = greedy). The KL to the reference is always "
        "estimated on samples at temperature 1, where the estimator is unbiased.",
    )
    top_k: int = Field(0, ge=0, description="Top-k sampling (0 = off).")
    batch_size: int = Field(32, ge=1)
    num_samples: int = Field(8, ge=1, description="Rows of each stage's before/after sample table.")
    seed: int = 0


class ChampionRule(_Strict):
    """When the `champion` alias moves to a newly registered policy."""

    metric: EvalMetric = "judge_score"
    direction: Literal["maximize", "minimize"] = "maximize"
    min_delta: float = Field(0.0, ge=0.0, description="Required improvement over the current champion.")

    def beats(self, candidate: float, champion: float | None) -> bool:
        """True when ``candidate`` should replace ``champion`` (always, when there is no champion yet)."""
        if champion is None:
            return True
        if self.direction == "maximize":
            return candidate > champion + self.min_delta
        return candidate < champion - self.min_delta


class TrackingSettings(_Strict):
    """MLflow names. The tracking server itself comes from MLFLOW_TRACKING_URI (default: ./mlflow.db)."""

    experiment_name: str = Field("rlhf", min_length=1)
    registered_model_name: str = Field("rlhf-policy", min_length=1)
    champion: ChampionRule = Field(default_factory=ChampionRule)
    register_policy: str = Field(
        "best",
        description="Which preference-tuned policy to register: 'best' (the best one by the champion metric) "
        f"or a stage name ({', '.join(preference_stages())}).",
    )
    log_models: bool = Field(True, description="Log each stage's final checkpoint as an MLflow model.")

    @field_validator("register_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value != "best" and value not in preference_stages():
            raise ValueError(f"expected 'best' or one of {', '.join(preference_stages())}, got {value!r}")
        return value


class PipelineConfig(_Strict):
    """SFT -> reward model -> DPO and/or PPO -> evaluation -> registry, configured in one place."""

    name: str = Field("default", min_length=1, description="Run name shown in Prefect and MLflow.")
    seed: int = Field(0, description="Training seed of every stage (unless a stage's args set `seed`).")
    output_dir: str = Field("outputs", description="Where datasets and checkpoints go (per content digest).")
    model: ModelSource = Field(default_factory=ModelSource)
    data: DataSettings = Field(default_factory=DataSettings)
    stages: StagesSettings = Field(default_factory=StagesSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    scale_out: ScaleOutSettings = Field(default_factory=ScaleOutSettings)

    @model_validator(mode="after")
    def _stages_fit_together(self) -> PipelineConfig:
        for problem in stage_order_problems(self):
            raise ValueError(problem)
        return self

    # ---- derived facts ---------------------------------------------------------------------------------------
    def has_reward_model(self) -> bool:
        trained = reward_model_stage()
        return (
            trained is not None and self.stages.get(trained).enabled
        ) or self.model.reward_model is not None

    def preference_stages(self) -> list[str]:
        """The enabled stages whose policy can be registered (DPO, PPO, ...)."""
        return [s for s in preference_stages() if self.stages.get(s).enabled]

    def online_stages(self) -> list[str]:
        """The enabled stages that score their own samples (PPO, ...)."""
        return [s for s in self.stages.enabled() if STAGES[s].scored_online]


def stage_order_problems(config: PipelineConfig) -> list[str]:
    """Combinations that cannot run, each as one message naming the keys involved."""
    problems: list[str] = []
    if not config.stages.enabled():
        problems.append(f"stages: every stage is disabled; enable at least one of {', '.join(STAGES)}")
    problems += _scoring_problems(config)
    metric = config.tracking.champion.metric
    registers = bool(config.preference_stages())  # the champion rule applies to a registered DPO/PPO policy
    if registers and metric == "judge_score" and config.evaluation.judge is None:
        problems.append("tracking.champion.metric: judge_score needs evaluation.judge (it is null)")
    if registers and metric == "reward_score" and not config.has_reward_model():
        problems.append(
            "tracking.champion.metric: reward_score needs a reward model (reward stage or model.reward_model)"
        )
    chosen = config.tracking.register_policy
    if chosen != "best" and not config.stages.get(chosen).enabled:
        problems.append(f"tracking.register_policy: {chosen} but stages.{chosen}.enabled is false")
    return problems


def _scoring_problems(config: PipelineConfig) -> list[str]:
    """What scores the online stages' rollouts and the evaluation must exist for the configured data."""
    problems: list[str] = []
    judged = [s for s in config.online_stages() if config.stages.get(s).reward == "judge"]
    for stage in config.online_stages():  # a "module:function" reward needs no reward model either
        if config.stages.get(stage).reward == "reward_model" and not config.has_reward_model():
            problems.append(
                f"stages.{stage}: {stage.upper()} scores rollouts with a reward model, but no reward model is "
                f"trained (stages.{reward_model_stage()}.enabled is false) and model.reward_model is not set "
                f"(enable the reward stage, give model.reward_model, or set stages.{stage}.reward: judge)"
            )
    if (judged or config.evaluation.judge == "synthetic") and not isinstance(
        config.data.eval, SyntheticSource
    ):
        what = f"stages.{judged[0]}.reward: judge" if judged else "evaluation.judge: synthetic"
        problems.append(
            f"{what} scores prompts of the bundled synthetic task, but data.eval.source is "
            f"{config.data.eval.source!r} (use synthetic evaluation prompts, or evaluation.judge: null)"
        )
    for stage in judged:
        if not isinstance(config.data.for_role(stage), SyntheticSource):
            problems.append(
                f"stages.{stage}.reward: judge needs synthetic {stage.upper()} prompts "
                f"(data.{stage} / data.preference)"
            )
    return problems
