"""The `stages:` section: one block per training stage of `tasks.stage_registry`, whose ``args`` are the trainer
config's keyword arguments.

The trainer arguments are not re-declared here. A stage's ``args`` mapping is checked against the fields of the
trainer's config class (`SFTConfig`, `RewardConfig`, `DPOConfig`, `PPOConfig`, all `TrainingArguments`
subclasses): unknown keys are rejected with the closest known name, values are checked against the field's type
annotation, and the config is then really built so its own checks (``__post_init__``) run before any training.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, field_validator

from tasks import check_cache
from tasks.stage_registry import STAGES, get_stage, import_object

__all__ = [
    "PIPELINE_OWNED_ARGS",
    "OnlineStageSettings",
    "StageSettings",
    "StagesSettings",
    "TrainerArgError",
    "build_trainer_config",
    "check_reward_function",
    "check_trainer_args",
    "stage_settings_class",
    "trainer_config_class",
]

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
    return get_stage(stage).load_config_class()


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
    or of the wrong type. A pass is remembered (`tasks.check_cache`): the same args on the same code are not
    checked again, which spares importing transformers (seconds) in `rlhf validate` and before a run's first stage.
    """
    inputs = {"stage": stage, "config_class": get_stage(stage).config_class, "args": args}
    return check_cache.checked(f"{stage} args", inputs, lambda: (_check_trainer_args(stage, args), ()))


def _check_trainer_args(stage: str, args: dict[str, Any]) -> dict[str, Any]:
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


class OnlineStageSettings(StageSettings):
    """A stage that samples from its policy and scores the samples (``scored_online`` in the registry)."""

    reward: str = Field(
        "reward_model",
        description="What scores the rollouts: 'reward_model' (trained by the reward stage or given as "
        "model.reward_model), 'judge' (the synthetic task's ground truth), or a Python function named "
        "'module:function' (PPO: fn(prompts, responses); GRPO: TRL's fn(prompts, completions, **columns)).",
    )

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, value: str) -> str:
        module, _, function = value.partition(":")
        if value in ("reward_model", "judge"):
            return value
        if module and function and " " not in value:
            check_reward_function(value)
            return value
        raise ValueError(f"reward={value!r}: use 'reward_model', 'judge' or a function as 'module:function'")


def check_reward_function(value: str) -> None:
    """The reward function named ``"module:function"`` imports and is callable: a typo fails when the config is
    read, not when the online stage starts after the stages before it have trained. A pass is remembered
    (`tasks.check_cache`) with the module's file, so an unchanged module is not imported again to re-check it."""
    module, _, function = value.partition(":")

    def check() -> tuple[bool, list[str] | None]:
        try:
            fn = import_object(value)
        except ImportError as err:
            raise ValueError(f"reward={value!r}: cannot import module {module!r} ({err})") from None
        except AttributeError:
            raise ValueError(f"reward={value!r}: module {module!r} has no attribute {function!r}") from None
        if not callable(fn):
            raise ValueError(f"reward={value!r}: {function!r} is a {type(fn).__name__}, not a function")
        file = getattr(sys.modules.get(module), "__file__", None)
        return True, [file] if file else None

    # Where the module is found depends on the import path and the working folder: part of the inputs.
    check_cache.checked("reward function", {"reward": value, "path": sys.path, "cwd": os.getcwd()}, check)


def _settings_class(name: str) -> type[StageSettings]:
    """The block of stage ``name``: its registry settings class, bound to the stage (whose args it checks)."""
    base = import_object(STAGES[name].settings)
    title = name.upper() if len(name) <= 4 else name.capitalize()  # SFTStage, RewardStage, GRPOStage
    namespace = {"__annotations__": {"stage": ClassVar[str]}, "stage": name, "__module__": __name__}
    if not STAGES[name].enabled_by_default:
        namespace["__annotations__"]["enabled"] = bool
        namespace["enabled"] = False
    cls = type(f"{title}Stage", (base,), namespace)
    globals()[cls.__name__] = cls  # picklable by name (Prefect persists configs in results)
    return cls


_SETTINGS: dict[str, type[StageSettings]] = {name: _settings_class(name) for name in STAGES}


def stage_settings_class(name: str) -> type[StageSettings]:
    return _SETTINGS[get_stage(name).name]


class _StagesBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def enabled(self) -> list[str]:
        """Names of the stages that run, in pipeline order."""
        return [name for name in STAGES if getattr(self, name).enabled]

    def get(self, name: str) -> StageSettings:
        return getattr(self, get_stage(name).name)


StagesSettings = create_model(
    "StagesSettings",
    __base__=_StagesBase,
    __module__=__name__,
    __doc__="One block per stage of the registry, in pipeline order. Disable a stage with ``enabled: false``.",
    **{
        name: (cls, Field(default_factory=cls, description=STAGES[name].summary))
        for name, cls in _SETTINGS.items()
    },
)
