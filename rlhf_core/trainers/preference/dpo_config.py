"""DPOConfig: `TrainingArguments` plus the DPO loss, reference-model and length settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from rlhf_core.losses.dpo import DPO_LOSSES
from rlhf_core.trainers.config_defaults import ConfigDefaultsMixin
from rlhf_core.trainers.preference.data import check_length_policy

__all__ = ["DPOConfig"]


@dataclass
class DPOConfig(ConfigDefaultsMixin, TrainingArguments):
    """Configuration of `DPOTrainer` (every `TrainingArguments` field, with CPU-safe defaults, plus these).

    Loss: `loss_type` names one or several functions of `rlhf_core.losses.dpo.DPO_LOSSES` (a string or a list;
    e.g. ``["sigmoid", "sft"]`` with ``loss_weights=[1.0, 1.0]`` is RPO), `beta`, `label_smoothing` (cDPO / rDPO /
    EXO flip rate).

    Reference model: with ``ref_model=None`` the trainer uses a frozen copy of the initial policy (or, for a PEFT
    model, the policy with its adapter disabled). ``precompute_ref_log_probs=True`` computes every pair's reference
    log-probs in one pass before training, stores them as dataset columns and keeps no reference model.

    Length policy: as in `RewardConfig` (with ``overlong="truncate"`` the prompt keeps its end and gives up tokens
    first, then the completions keep their start; ``"drop"`` removes the pair; counts logged).
    """

    beta: float = field(default=0.1, metadata={"help": "Strength of the implicit KL constraint (> 0)."})
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": f"DPO loss variant(s), one or several of {sorted(DPO_LOSSES)}."},
    )
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per loss_type entry (default 1.0 each)."}
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "Assumed preference-label flip rate in [0, 0.5) (cDPO, rDPO, EXO)."}
    )
    max_length: int | None = field(
        default=1024,
        metadata={"help": "Maximum tokens of prompt + completion per sequence (None: no limit)."},
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Maximum prompt tokens (kept from the end) when truncating."}
    )
    overlong: str = field(
        default="truncate", metadata={"help": "Pairs longer than max_length: 'truncate' or 'drop' (counted)."}
    )
    padding_free: bool | None = field(
        default=None,
        metadata={
            "help": "Run each batch's chosen + rejected rows as one row without padding when that computes less. "
            "None (default): where the model supports it (checked at start); False: never."
        },
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={
            "help": "Compute reference log-probs in one pass before training and keep no reference model."
        },
    )
    precompute_ref_batch_size: int | None = field(
        default=None,
        metadata={"help": "Pairs per batch of the precompute pass (default: per_device_eval_batch_size)."},
    )
    logprobs_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows per chunk of the fused linear->log-prob kernel (None: the kernel's default)."
        },
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Set every dropout probability of the policy and reference to 0."}
    )
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Processes used to tokenize the datasets (None: the main process)."}
    )
    model_init_kwargs: dict | None = field(
        default=None, metadata={"help": "from_pretrained keyword arguments when the model is given by name."}
    )
    ref_model_init_kwargs: dict | None = field(
        default=None, metadata={"help": "from_pretrained keyword arguments when ref_model is given by name."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = list(self.loss_type)
        unknown = [name for name in self.loss_type if name not in DPO_LOSSES]
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
        check_length_policy(self.max_length, self.max_prompt_length, self.overlong)
        super().__post_init__()
