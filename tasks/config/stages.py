"""The `stages:` section: one block per training stage, whose ``args`` are the trainer config's keyword arguments.

The trainer arguments are not re-declared here. A stage's ``args`` mapping is checked against the fields of the
trainer's config class (`SFTConfig`, `RewardConfig`, `DPOConfig`, `PPOConfig`, all `TrainingArguments`
subclasses): unknown keys are rejected with the closest known name, values are checked against the field's type
annotation, and the config is then really built so its own checks (``__post_init__``) run before any training.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import typing
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

__all__ = [
    "PIPELINE_OWNED_ARGS",
    "STAGE_NAMES",
    "TRAINER_CONFIGS",
    "DPOStage",
    "PPOStage",
    "RewardStage",
    "SFTStage",
    "StageSettings",
    "StagesSettings",
    "TrainerArgError",
    "build_trainer_config",
    "check_trainer_args",
    "trainer_config_class",
]

StageName = Literal["sft", "reward", "dpo", "ppo"]
STAGE_NAMES: tuple[str, ...] = ("sft", "reward", "dpo", "ppo")

# Where each stage's config class lives ("module:attribute"), imported on first use.
TRAINER_CONFIGS: dict[str, str] = {
    "sft": "rlhf_core.trainers.sft.config:SFTConfig",
    "reward": "rlhf_core.trainers.preference.reward_config:RewardConfig",
    "dpo": "rlhf_core.trainers.preference.dpo_config:DPOConfig",
    "ppo": "rlhf_core.trainers.ppo.config:PPOConfig",
}

# Set by the pipeline itself; a user value would be silently overridden, so it is refused instead.
PIPELINE_OWNED_ARGS: dict[str, str] = {
    "output_dir": "the pipeline writes each stage under the top-level `output_dir`",
    "resume_from_checkpoint": "the pipeline resumes from the stage's last checkpoint by itself (see `resume`)",
}


class TrainerArgError(ValueError):
    """A bad key in a stage's ``args``; ``key`` names it so error messages can point at ``stages.<stage>.args.<key>``."""

    def __init__(self, key: str | None, problem: str) -> None:
        self.key = key
        super().__init__(problem)


def trainer_config_class(stage: str) -> type:
    """The `TrainingArguments` subclass that configures ``stage``'s trainer."""
    module_name, _, attr = TRAINER_CONFIGS[stage].partition(":")
    return getattr(importlib.import_module(module_name), attr)


@functools.cache
def _field_adapters(config_cls: type) -> dict[str, TypeAdapter | None]:
    hints = typing.get_type_hints(config_cls)
    adapters: dict[str, TypeAdapter | None] = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        try:
            adapters[f.name] = TypeAdapter(hints.get(f.name, Any))
        except Exception:  # an annotation pydantic cannot express: the config's own checks still run
            adapters[f.name] = None
    return adapters


def check_trainer_args(stage: str, args: dict[str, Any]) -> dict[str, Any]:
    """Validate ``args`` for ``stage``'s trainer config; returns them with values coerced to the field types.

    Raises ``ValueError`` naming the offending key: unknown (with the closest known name), owned by the pipeline,
    or of the wrong type.
    """
    config_cls = trainer_config_class(stage)
    adapters = _field_adapters(config_cls)
    checked: dict[str, Any] = {}
    for key, value in args.items():
        if key in PIPELINE_OWNED_ARGS:
            raise TrainerArgError(key, f"cannot be set here: {PIPELINE_OWNED_ARGS[key]}")
        if key not in adapters:
            close = difflib.get_close_matches(key, list(adapters), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TrainerArgError(key, f"unknown {config_cls.__name__} argument{hint}")
        adapter = adapters[key]
        if adapter is None:
            checked[key] = value
            continue
        try:
            checked[key] = adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError as err:
            problem = err.errors()[0]["msg"]
            raise TrainerArgError(key, f"{problem}, got {value!r}") from None
    build_trainer_config(stage, checked, output_dir="pipeline-validation")
    return checked


def build_trainer_config(stage: str, args: dict[str, Any], *, output_dir: str, **overrides: Any) -> Any:
    """Build ``stage``'s trainer config from ``args`` (+ pipeline-owned ``overrides``); errors name the config."""
    config_cls = trainer_config_class(stage)
    try:
        return config_cls(output_dir=output_dir, **{**args, **overrides})
    except (TypeError, ValueError) as err:
        raise TrainerArgError(None, f"{config_cls.__name__} rejected these arguments: {err}") from None


class StageSettings(BaseModel):
    """Common to every training stage."""

    model_config = ConfigDict(extra="forbid")
    stage: ClassVar[str]

    enabled: bool = True
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the stage's trainer config (a transformers TrainingArguments subclass).",
    )
    lora: dict[str, Any] | None = Field(
        None,
        description="LoRA: keyword arguments of peft.LoraConfig (needs the `peft` extra); None = full tuning.",
    )
    resume: bool = Field(
        True, description="Resume from the stage's last checkpoint when a crashed run left one."
    )
    retries: int = Field(
        1, ge=0, description="Prefect retries of the stage task (user errors are not retried)."
    )
    timeout_s: float | None = Field(
        3600.0, gt=0, description="Prefect timeout of the stage task, in seconds."
    )

    @field_validator("args")
    @classmethod
    def _check_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        return check_trainer_args(cls.stage, args)

    @field_validator("lora")
    @classmethod
    def _check_lora(cls, lora: dict[str, Any] | None) -> dict[str, Any] | None:
        if lora is None:
            return None
        try:
            from peft import LoraConfig
        except ImportError:
            raise ValueError("LoRA needs the peft package: pip install 'rlhf-toolkit[peft]'") from None
        try:
            LoraConfig(**lora)
        except (TypeError, ValueError) as err:
            raise ValueError(f"peft.LoraConfig rejected these arguments: {err}") from None
        return lora


class SFTStage(StageSettings):
    stage: ClassVar[str] = "sft"


class RewardStage(StageSettings):
    stage: ClassVar[str] = "reward"


class DPOStage(StageSettings):
    stage: ClassVar[str] = "dpo"


class PPOStage(StageSettings):
    stage: ClassVar[str] = "ppo"
    reward: Literal["reward_model", "judge"] = Field(
        "reward_model",
        description="What scores PPO rollouts: the reward model (trained by the reward stage or given as "
        "model.reward_model), or the synthetic task's ground-truth judge.",
    )


class StagesSettings(BaseModel):
    """SFT -> reward model -> DPO and/or PPO. Disable a stage with ``enabled: false``."""

    model_config = ConfigDict(extra="forbid")

    sft: SFTStage = Field(default_factory=SFTStage)
    reward: RewardStage = Field(default_factory=RewardStage)
    dpo: DPOStage = Field(default_factory=DPOStage)
    ppo: PPOStage = Field(default_factory=PPOStage)

    def enabled(self) -> list[str]:
        """Names of the stages that run, in pipeline order."""
        return [name for name in STAGE_NAMES if getattr(self, name).enabled]
