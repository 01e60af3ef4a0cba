"""Config fields the preference trainers share, declared once: the data and model-loading fields of every
`PairwiseTrainer` config (RewardConfig, DPOConfig, KTOConfig), and the reference-model fields of DPO and KTO.

Both are dataclass mixins placed between `ConfigDefaultsMixin` and `TokenizerOptionsMixin` in a config's bases::

    @dataclass
    class DPOConfig(ConfigDefaultsMixin, ReferenceModelFields, PreferenceDataFields, TokenizerOptionsMixin,
                    TrainingArguments):
        ...

A config re-declares a field in its own body where its type or default differs from TRL's (KTO's
``model_init_kwargs`` also takes a JSON string).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_core.trainers.fields import help_field
from rlhf_core.trainers.preference.data import check_length_policy

__all__ = ["PreferenceDataFields", "ReferenceModelFields"]


@dataclass
class PreferenceDataFields:
    """The length policy (checked at construction), padding-free batches, dropout, tokenisation processes and the
    model's loading arguments."""

    max_length: int | None = help_field(
        1024, "Maximum tokens of prompt + completion per sequence (None: no limit)."
    )
    max_prompt_length: int | None = help_field(
        None, "Maximum prompt tokens (kept from the end) when truncating; None: only max_length."
    )
    overlong: str = help_field(
        "truncate", "Rows longer than max_length: 'truncate' or 'drop' (counted in the logs)."
    )
    padding_free: bool | None = help_field(
        None,
        "Run a batch's rows (a pair's chosen + rejected) packed into fewer rows without padding when "
        "that computes less. None (default): where the model supports it (checked at start); False: never.",
    )
    disable_dropout: bool = help_field(
        True, "Set every dropout probability of the model (and of the reference) to 0."
    )
    dataset_num_proc: int | None = help_field(
        None, "Processes used to tokenize the datasets (None: the main process)."
    )
    model_init_kwargs: dict | None = help_field(
        None, "from_pretrained keyword arguments when the model is given by name."
    )

    def __post_init__(self) -> None:
        check_length_policy(self.max_length, self.max_prompt_length, self.overlong)
        super().__post_init__()  # type: ignore[misc]  # TokenizerOptionsMixin -> TrainingArguments


@dataclass
class ReferenceModelFields:
    """The reference model of DPO and KTO: precomputed log-probs, loading, TR-DPO synchronisation; and the chunk
    size of the fused log-prob kernel both score policy and reference with."""

    precompute_ref_log_probs: bool = help_field(
        False, "Compute reference log-probs in one pass before training and keep no reference model."
    )
    precompute_ref_batch_size: int | None = help_field(
        None, "Rows per batch of the precompute pass (default: per_device_eval_batch_size)."
    )
    ref_model_init_kwargs: dict | None = help_field(
        None, "from_pretrained keyword arguments when ref_model is given by name."
    )
    sync_ref_model: bool = help_field(
        False, "TR-DPO (arXiv:2404.09656): soft-update the reference from the policy during training."
    )
    ref_model_mixup_alpha: float = help_field(0.6, "TR-DPO alpha: ref <- alpha * policy + (1 - alpha) * ref.")
    ref_model_sync_steps: int = help_field(512, "TR-DPO tau: optimizer steps between reference updates.")
    logprobs_chunk_size: int | None = help_field(
        None, "Rows per chunk of the fused linear->log-prob kernel (None: the kernel's default)."
    )
