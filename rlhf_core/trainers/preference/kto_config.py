"""KTOConfig: `TrainingArguments` plus TRL 1.16's KTO fields (loss, class weights, reference model, lengths)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from rlhf_core.losses.kto import KTO_LOSSES
from rlhf_core.trainers.config_defaults import (
    ConfigDefaultsMixin,
    Unimplemented,
    unimplemented_fields,
)
from rlhf_core.trainers.fields import help_field
from rlhf_core.trainers.preference.config_fields import PreferenceDataFields, ReferenceModelFields
from rlhf_core.trainers.tokenizer_options import TokenizerOptionsMixin

__all__ = ["KTOConfig"]

# TRL 1.16 KTOConfig fields accepted at their default only (a non-default value raises NotImplementedError).
KTO_UNIMPLEMENTED = {
    "activation_offloading": Unimplemented(
        False, "activations are not offloaded to the CPU; use gradient_checkpointing=True to save memory"
    ),
}


@dataclass
@unimplemented_fields(KTO_UNIMPLEMENTED)
class KTOConfig(
    ConfigDefaultsMixin, ReferenceModelFields, PreferenceDataFields, TokenizerOptionsMixin, TrainingArguments
):
    """Configuration of `KTOTrainer` (every `TrainingArguments` field, with CPU-safe defaults, plus these).

    Loss (arXiv:2402.01306): `loss_type` "kto" or "apo_zero_unpaired" (`rlhf_core.losses.kto.KTO_LOSSES`), `beta`,
    `desirable_weight` / `undesirable_weight` (the paper's lambda_D / lambda_U).

    The KL reference point of "kto" is estimated, as TRL does, from mismatched pairs: within each consecutive block
    of `per_device_train_batch_size` examples, example i is scored with the completion of example i-1 (cyclically).
    That pairing needs the data in its order, so ``train_sampling_strategy`` defaults to "sequential" (TRL's
    default too) and another strategy is refused for "kto"; shuffle the dataset beforehand instead.

    Reference model: as in `DPOConfig` (``ref_model=None``: a frozen copy of the initial policy, or the policy with
    its adapter disabled for a PEFT model; ``precompute_ref_log_probs=True``: log-probs computed once before
    training, no reference model kept).

    Length policy: ``max_length`` tokens of prompt + completion (and at most ``max_prompt_length`` of prompt); longer
    examples are truncated (the prompt keeps its end and gives up tokens first, down to half of ``max_length``, then
    the completion keeps its start) or, with ``overlong="drop"``, removed; the counts are logged. The mismatched
    sequences are cut to ``max_length`` too. ``pad_to_multiple_of`` and TRL's other tokenizer options as in
    `DPOConfig`.

    TR-DPO reference synchronisation (``sync_ref_model``, ``ref_model_mixup_alpha``, ``ref_model_sync_steps``) as
    in `DPOConfig` (needs a separate reference model, not with ``precompute_ref_log_probs``).

    TRL fields accepted at their default only (a non-default value raises NotImplementedError):
    ``activation_offloading``, and ``router_aux_loss_coef`` other than None / 0.0 (no MoE auxiliary loss).
    ``trust_remote_code`` is passed on when the model is loaded by name.
    """

    # TRL's KTO defaults that differ from TrainingArguments
    learning_rate: float = help_field(1e-6, "The initial learning rate for AdamW.")
    train_sampling_strategy: str = field(
        default="sequential",
        metadata={
            "help": "Training sampler. loss_type 'kto' needs 'sequential': each example's mismatched completion "
            "comes from its neighbour in the batch.",
            "choices": ["random", "sequential", "group_by_length"],
        },
    )

    loss_type: str = help_field("kto", f"KTO loss variant, one of {sorted(KTO_LOSSES)}.")
    beta: float = help_field(0.1, "Strength of the implicit KL constraint (> 0).")
    desirable_weight: float = help_field(1.0, "Weight of desirable examples' losses.")
    undesirable_weight: float = help_field(1.0, "Weight of undesirable examples' losses.")
    model_init_kwargs: dict | str | None = help_field(
        None, "from_pretrained keyword arguments when the model is given by name."
    )
    trust_remote_code: bool = help_field(False, "Allow custom model code from the hub when loading by name.")
    router_aux_loss_coef: float | None = help_field(
        None, "MoE load-balancing loss weight: only None or 0.0 (not implemented)."
    )

    def __post_init__(self) -> None:
        if self.router_aux_loss_coef not in (None, 0.0):
            raise NotImplementedError(
                f"KTOConfig.router_aux_loss_coef={self.router_aux_loss_coef!r} is not implemented (only None or "
                "0.0 is): no mixture-of-experts load-balancing loss is added to the KTO loss"
            )
        if self.loss_type not in KTO_LOSSES:
            raise ValueError(f"loss_type {self.loss_type!r} is unknown; known: {sorted(KTO_LOSSES)}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        for name in ("desirable_weight", "undesirable_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.uses_kl and self.train_sampling_strategy != "sequential":
            raise ValueError(
                f"loss_type {self.loss_type!r} estimates its KL reference point from each example's neighbour in "
                f"the batch and needs train_sampling_strategy='sequential', got {self.train_sampling_strategy!r}; "
                "shuffle the dataset beforehand instead"
            )
        if self.uses_kl and self.per_device_train_batch_size < 2:
            raise ValueError(
                f"loss_type {self.loss_type!r} needs per_device_train_batch_size >= 2: with one example per batch its "
                "mismatched completion is its own, and the KL estimate equals the implied reward"
            )
        super().__post_init__()

    @property
    def uses_kl(self) -> bool:
        """Whether the loss needs the KL reference point (every loss type but 'apo_zero_unpaired')."""
        return self.loss_type != "apo_zero_unpaired"
