"""RewardConfig: `TrainingArguments` plus what pairwise reward modelling needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from rlhf_core.trainers.config_defaults import ConfigDefaultsMixin, Unimplemented, unimplemented_fields
from rlhf_core.trainers.preference.config_fields import PreferenceDataFields
from rlhf_core.trainers.tokenizer_options import TokenizerOptionsMixin

__all__ = ["RewardConfig"]

# TRL 1.16 RewardConfig fields accepted at their default only (a non-default value raises NotImplementedError).
REWARD_UNIMPLEMENTED = {
    "trust_remote_code": Unimplemented(
        False,
        "load the model and tokenizer yourself with trust_remote_code=True (or pass model_init_kwargs="
        "{'trust_remote_code': True} and a processing_class) and give them to the trainer",
    ),
    "activation_offloading": Unimplemented(
        False, "activations are not offloaded to the CPU; use gradient_checkpointing=True to save memory"
    ),
}


@dataclass
@unimplemented_fields(REWARD_UNIMPLEMENTED)
class RewardConfig(ConfigDefaultsMixin, PreferenceDataFields, TokenizerOptionsMixin, TrainingArguments):
    """Configuration of `RewardTrainer` (every `TrainingArguments` field, with CPU-safe defaults, plus these).

    Length policy (`max_length`, `max_prompt_length`, `overlong`), applied by the foundation's
    `tokenize_preference`: with ``overlong="truncate"`` (default) a pair whose prompt + longer completion exceeds
    `max_length` tokens keeps the end of its prompt (the turns nearest the answer, and its leading bos), the prompt
    giving up tokens first down to half of `max_length` (or to `max_prompt_length` when set), then both
    completions keep their start. With ``overlong="drop"`` the pair is removed. The counts are logged. A reward
    model scores the whole sequence, so when chosen and rejected differ near their ends, prefer ``"drop"`` or a
    larger `max_length`.

    TRL's tokenizer fields (`pad_token`, `eos_token`, `chat_template_path`, `pad_to_multiple_of`): see
    `rlhf_core.trainers.tokenizer_options`. TRL fields accepted at their default only: ``REWARD_UNIMPLEMENTED``.
    """

    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={
            "help": "Coefficient of the (r_chosen + r_rejected)^2 penalty that keeps rewards centred on zero "
            "(arXiv:2312.09244). None or 0 turns it off."
        },
    )
