"""The training stages of the pipeline, declared once: config, plan, training dispatch and CLI all read this.

Adding a stage (e.g. ``grpo``) is one `StageDefinition` in `STAGES` plus, when the stage has settings beyond the
common ones (``enabled``, ``args``, ``lora``, ``resume``, ``retries``, ``timeout_s``), its settings class named by
``settings``. The ``stages.<name>`` block of the YAML file, the ``data.<name>`` override, the plan's folder and
digest, the Prefect task ``train-<name>``, ``rlhf train <name>`` and ``scale_out.stages`` follow from the entry.

Classes are named as ``"module:attribute"`` strings and imported on first use, so reading the registry (the CLI's
argument parser, config validation) never imports torch or the trainers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "STAGES",
    "StageDefinition",
    "get_stage",
    "import_object",
    "policy_stages",
    "preference_stages",
    "reward_model_stage",
    "stage_names",
]

DataForm = Literal["sft", "preference", "prompts"]


@dataclass(frozen=True)
class StageDefinition:
    """One training stage.

    ``starts_from``: the stage whose final model this one starts from; the base model when it is None or that
    stage is disabled. A stage that ``produces`` a ``reward_model`` starts from ``model.reward_backbone`` instead
    when one is configured. ``data``: the form of its training rows; ``sft`` rows come from ``data.sft``, the other
    forms from ``data.<name>`` or, by default, ``data.preference`` (prompts: the pairs' prompts).
    ``reference_model``: the trainer is given ``ref_model=None`` (a frozen copy of its starting model).
    ``scored_online``: the trainer samples and is given ``reward_model=`` (the trained or configured reward model)
    or ``reward_fn=`` (the synthetic judge), per the stage block's ``reward`` setting.
    ``enabled_by_default``: False for an opt-in stage (its block's ``enabled`` defaults to false).
    ``reward_funcs``: an online trainer with TRL's ``reward_funcs=`` (GRPO, RLOO) rather than PPO's
    ``reward_model=`` / ``reward_fn=``.
    """

    name: str
    config_class: str
    trainer_class: str
    data: DataForm
    produces: Literal["policy", "reward_model"]
    starts_from: str | None = "sft"
    reference_model: bool = False
    scored_online: bool = False
    settings: str = "tasks.config.stages:StageSettings"
    summary: str = ""
    enabled_by_default: bool = True  # False: the stage runs only when its block says ``enabled: true``
    reward_funcs: bool = False

    def load_config_class(self) -> type:
        """The `transformers.TrainingArguments` subclass that configures this stage's trainer."""
        return import_object(self.config_class)

    def load_trainer_class(self) -> type:
        return import_object(self.trainer_class)


# In pipeline order: a stage comes after every stage it builds on.
STAGES: dict[str, StageDefinition] = {
    stage.name: stage
    for stage in (
        StageDefinition(
            name="sft",
            config_class="rlhf_core.trainers.sft.config:SFTConfig",
            trainer_class="rlhf_core.trainers.sft.trainer:SFTTrainer",
            data="sft",
            produces="policy",
            starts_from=None,
            summary="supervised fine-tuning of the base model",
        ),
        StageDefinition(
            name="reward",
            config_class="rlhf_core.trainers.preference.reward_config:RewardConfig",
            trainer_class="rlhf_core.trainers.preference.reward:RewardTrainer",
            data="preference",
            produces="reward_model",
            summary="reward model on preference pairs",
        ),
        StageDefinition(
            name="dpo",
            config_class="rlhf_core.trainers.preference.dpo_config:DPOConfig",
            trainer_class="rlhf_core.trainers.preference.dpo:DPOTrainer",
            data="preference",
            produces="policy",
            reference_model=True,
            summary="direct preference optimisation from the SFT policy",
        ),
        StageDefinition(
            name="kto",
            config_class="rlhf_core.trainers.preference.kto_config:KTOConfig",
            trainer_class="rlhf_core.trainers.preference.kto:KTOTrainer",
            data="preference",  # preference pairs, which KTOTrainer unpairs
            produces="policy",
            reference_model=True,
            enabled_by_default=False,
            summary="KTO (unpaired desirable / undesirable answers) from the SFT policy",
        ),
        StageDefinition(
            name="ppo",
            config_class="rlhf_core.trainers.ppo.config:PPOConfig",
            trainer_class="rlhf_core.trainers.ppo.trainer:PPOTrainer",
            data="prompts",
            produces="policy",
            reference_model=True,
            scored_online=True,
            settings="tasks.config.stages:OnlineStageSettings",
            summary="PPO from the SFT policy, rollouts scored by the reward model or the judge",
        ),
        StageDefinition(
            name="grpo",
            config_class="rlhf_core.trainers.online.config:GRPOConfig",
            trainer_class="rlhf_core.trainers.online.grpo:GRPOTrainer",
            data="prompts",
            produces="policy",
            scored_online=True,
            reward_funcs=True,
            settings="tasks.config.stages:OnlineStageSettings",
            enabled_by_default=False,
            summary="GRPO from the SFT policy, groups scored by the judge, the reward model or a function",
        ),
    )
}


def stage_names() -> tuple[str, ...]:
    """Every stage, in pipeline order."""
    return tuple(STAGES)


def get_stage(name: str) -> StageDefinition:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r} (expected one of {', '.join(STAGES)})") from None


def policy_stages() -> tuple[str, ...]:
    """Stages whose result is a policy (evaluated, sampled, compared)."""
    return tuple(s.name for s in STAGES.values() if s.produces == "policy")


def preference_stages() -> tuple[str, ...]:
    """Policy stages that tune a starting policy on preferences or rewards: the candidates for registration."""
    return tuple(s.name for s in STAGES.values() if s.produces == "policy" and s.starts_from is not None)


def reward_model_stage() -> str | None:
    """The stage that trains the reward model, if the registry has one."""
    return next((s.name for s in STAGES.values() if s.produces == "reward_model"), None)


def import_object(path: str) -> Any:
    """``"package.module:attribute"`` -> the attribute."""
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)
