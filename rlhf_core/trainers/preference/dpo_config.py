"""DPOConfig: `TrainingArguments` plus the DPO loss, reference-model and length settings."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from rlhf_core.losses.dpo import DPO_LOSSES, F_DIVERGENCES
from rlhf_core.trainers.config_defaults import (
    ConfigDefaultsMixin,
    Unimplemented,
    unimplemented_fields,
)
from rlhf_core.trainers.fields import help_field
from rlhf_core.trainers.preference.config_fields import PreferenceDataFields, ReferenceModelFields
from rlhf_core.trainers.tokenizer_options import TokenizerOptionsMixin

__all__ = ["DPOConfig"]

# TRL 1.16 loss_type values without an implementation here (NotImplementedError rather than "unknown").
_TRL_ONLY_LOSSES = ("aot", "aot_unpaired", "discopop", "sigmoid_norm")
# TRL 1.16 DPOConfig fields accepted at their default only (a non-default value raises NotImplementedError).
DPO_UNIMPLEMENTED = {
    "trust_remote_code": Unimplemented(
        False,
        "load the model and tokenizer yourself with trust_remote_code=True (or pass model_init_kwargs="
        "{'trust_remote_code': True} and a processing_class) and give them to the trainer",
    ),
    "router_aux_loss_coef": Unimplemented(
        None, "no mixture-of-experts load-balancing loss is added to the DPO loss", "float | None"
    ),
    "activation_offloading": Unimplemented(
        False, "activations are not offloaded to the CPU; use gradient_checkpointing=True to save memory"
    ),
    "truncation_mode": Unimplemented(
        "keep_start",
        "TRL deprecates 'keep_end'; the length policy here is overlong='truncate' (the prompt keeps its end, the "
        "completions their start) or 'drop', with max_length and max_prompt_length",
    ),
    "discopop_tau": Unimplemented(
        0.05, f"loss_type='discopop' is not implemented; the DPO losses here are {sorted(DPO_LOSSES)}"
    ),
}


@dataclass
@unimplemented_fields(DPO_UNIMPLEMENTED)
class DPOConfig(
    ConfigDefaultsMixin, ReferenceModelFields, PreferenceDataFields, TokenizerOptionsMixin, TrainingArguments
):
    """Configuration of `DPOTrainer` (every `TrainingArguments` field, with CPU-safe defaults, plus these).

    Loss: `loss_type` names one or several functions of `rlhf_core.losses.dpo.DPO_LOSSES` (a string or a list;
    e.g. ``["sigmoid", "sft"]`` with ``loss_weights=[1.0, 1.0]`` is RPO), `beta`, `label_smoothing` (cDPO / rDPO /
    EXO flip rate).

    Reference model: with ``ref_model=None`` the trainer uses a frozen copy of the initial policy (or, for a PEFT
    model, the policy with its adapter disabled). ``precompute_ref_log_probs=True`` computes every pair's reference
    log-probs in one pass before training, stores them as dataset columns and keeps no reference model.

    Length policy: as in `RewardConfig` (with ``overlong="truncate"`` the prompt keeps its end and gives up tokens
    first, then the completions keep their start; ``"drop"`` removes the pair; counts logged).

    f-DPO (arXiv:2309.16240): ``f_divergence_type`` ("reverse_kl" = DPO, "forward_kl", "js_divergence",
    "alpha_divergence" with ``f_alpha_divergence_coef``) replaces the log-ratios of the losses built on the
    chosen-rejected difference by the divergence's ``f'(pi / pi_ref)``.

    LD-DPO (arXiv:2409.06411): ``ld_alpha`` weights the completion tokens past each pair's shared length in the
    sequence log-probs of policy and reference (1.0 = DPO). WPO (arXiv:2406.11827): ``use_weighting=True`` weights
    each pair's loss by ``w(y_w) w(y_l)``, ``w = exp(mean log p - log sum p^2)`` (an extra no-grad vocabulary pass).

    TR-DPO (arXiv:2404.09656): ``sync_ref_model=True`` soft-updates the reference model every
    ``ref_model_sync_steps`` optimizer steps, ``ref <- ref_model_mixup_alpha * policy + (1 - alpha) * ref`` (needs a
    separate reference model: not with a PEFT policy or ``precompute_ref_log_probs``).

    TRL's tokenizer fields (`pad_token`, `pad_to_multiple_of`, ...): see `rlhf_core.trainers.tokenizer_options`.
    TRL fields accepted at their default only: ``DPO_UNIMPLEMENTED``.
    """

    beta: float = help_field(0.1, "Strength of the implicit KL constraint (> 0).")
    loss_type: list[str] = help_field(
        ["sigmoid"], f"DPO loss variant(s), one or several of {sorted(DPO_LOSSES)}."
    )
    loss_weights: list[float] | None = help_field(None, "One weight per loss_type entry (default 1.0 each).")
    label_smoothing: float = help_field(
        0.0, "Assumed preference-label flip rate in [0, 0.5) (cDPO, rDPO, EXO)."
    )
    ld_alpha: float | None = help_field(
        None, "LD-DPO (arXiv:2409.06411): weight in [0, 1] of the tokens past a pair's shared length."
    )
    use_weighting: bool = help_field(
        False, "WPO (arXiv:2406.11827): weight pairs by the policy's own probability."
    )
    f_divergence_type: str = help_field(
        "reverse_kl", f"f-DPO divergence (arXiv:2309.16240): one of {sorted(F_DIVERGENCES)}."
    )
    f_alpha_divergence_coef: float = help_field(0.5, "alpha of f_divergence_type='alpha_divergence'.")

    def __post_init__(self) -> None:
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = list(self.loss_type)
        unknown = [name for name in self.loss_type if name not in DPO_LOSSES]
        trl_only = [name for name in unknown if name in _TRL_ONLY_LOSSES]
        if trl_only:
            raise NotImplementedError(
                f"DPOConfig.loss_type={self.loss_type!r}: TRL's {trl_only} is not implemented; the DPO losses here "
                f"are {sorted(DPO_LOSSES)}"
            )
        if not self.loss_type or unknown:
            raise ValueError(f"loss_type {self.loss_type}: unknown {unknown}; known: {sorted(DPO_LOSSES)}")
        if self.loss_weights is not None:
            self.loss_weights = [float(w) for w in self.loss_weights]
            if len(self.loss_weights) != len(self.loss_type):
                raise ValueError(
                    f"loss_weights has {len(self.loss_weights)} entries for loss_type {self.loss_type}: give one "
                    "weight per loss type"
                )
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha must be in [0, 1] (or None), got {self.ld_alpha}")
        if self.f_divergence_type not in F_DIVERGENCES:
            raise ValueError(
                f"f_divergence_type {self.f_divergence_type!r} is unknown; known: {sorted(F_DIVERGENCES)}"
            )
        super().__post_init__()
