"""SFTConfig: `transformers.TrainingArguments` plus the supervised fine-tuning options (TRL's names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

from rlhf_core.losses.sft import SFT_LOSSES
from rlhf_core.trainers.config_defaults import (
    ConfigDefaultsMixin,
    Unimplemented,
    unimplemented_fields,
)
from rlhf_core.trainers.fields import help_field
from rlhf_core.trainers.tokenizer_options import TokenizerOptionsMixin

__all__ = ["SFTConfig"]

_OVERLONG = ("truncate", "drop")
_PACKING_STRATEGIES = ("bfd",)
_TRUNCATION_MODES = ("keep_start", "keep_end")

# TRL 1.16 SFTConfig fields accepted at their default only (a non-default value raises NotImplementedError).
SFT_UNIMPLEMENTED = {
    "trust_remote_code": Unimplemented(
        False,
        "load the model and tokenizer yourself with trust_remote_code=True (or pass model_init_kwargs="
        "{'trust_remote_code': True} and a processing_class) and give them to the trainer",
    ),
    "router_aux_loss_coef": Unimplemented(
        None, "no mixture-of-experts load-balancing loss is added to the SFT loss", "float | None"
    ),
    "activation_offloading": Unimplemented(
        False, "activations are not offloaded to the CPU; use gradient_checkpointing=True to save memory"
    ),
}


@dataclass
@unimplemented_fields(SFT_UNIMPLEMENTED)
class SFTConfig(ConfigDefaultsMixin, TokenizerOptionsMixin, TrainingArguments):
    """Configuration of `SFTTrainer`.

    Besides every `TrainingArguments` field (with the CPU-safe defaults of `ConfigDefaultsMixin`):

    - data: ``dataset_text_field`` ("text"), ``max_length`` (1024; ``max_seq_length`` is accepted as an alias),
      ``overlong`` ("truncate" keeps the start of a too-long row, "drop" removes it; both are counted and logged),
      ``completion_only_loss`` (True: loss on the completion of prompt-completion rows), ``assistant_only_loss``
      (True: loss on the assistant turns of conversations), ``dataset_num_proc``,
      ``dataset_kwargs={"skip_prepare_dataset": True}`` for data that is already tokenised.
    - packing: ``packing`` (False), ``packing_strategy`` ("bfd", best-fit decreasing: whole documents, never split),
      ``eval_packing`` (None = same as ``packing``). Position ids restart per document and no document attends
      to another. ``padding_free`` (None = auto): the rows of a micro-batch are concatenated into one row instead
      of being padded whenever that computes less (see `rlhf_core.trainers.sft.padding_free`); losses are
      unchanged.
    - loss: ``use_fused_loss`` (True: log-probs straight from the last hidden state and the LM-head weight through
      `rlhf_core.kernels.fused_linear_logprobs`, never building [tokens, vocab] logits; False: plain logits),
      ``fused_chunk_size`` (None = the kernel's default), ``token_accuracy_every_step`` (False: the mean token
      accuracy, which needs an argmax over the vocabulary, is measured on the steps that log and at evaluation).
    - model: ``model_init_kwargs`` passed to ``from_pretrained`` when the model is given by name.
    - TRL 1.16 names: ``loss_type`` ("nll", or "dft": Dynamic Fine-Tuning, arXiv:2508.05629, see
      `rlhf_core.losses.sft`), ``truncation_mode`` ("keep_start", or "keep_end": a too-long row keeps its last
      ``max_length`` tokens), ``shuffle_dataset`` (shuffle the raw rows with ``seed`` before tokenising),
      ``pad_to_multiple_of`` (an int rounds each padded batch up; "auto" = no rounding: TRL rounds to 128 on AWS
      Neuron only), ``pad_token`` / ``eos_token`` (set on the tokenizer; must be tokens of its vocabulary),
      ``chat_template_path`` (a Jinja file, or a tokenizer folder/name whose template is copied).
    - TRL fields accepted at their default only: ``SFT_UNIMPLEMENTED`` (a non-default value raises
      ``NotImplementedError`` saying what to use instead).
    """

    learning_rate: float = help_field(2e-5, "Initial AdamW learning rate (TRL's SFT default).")
    model_init_kwargs: dict[str, Any] | None = help_field(
        None, "Keyword arguments for from_pretrained when the model is a name/path."
    )
    dataset_text_field: str = help_field("text", "Column holding the text (language modelling).")
    dataset_kwargs: dict[str, Any] | None = help_field(
        None, 'Dataset preparation options: {"skip_prepare_dataset": True}.'
    )
    dataset_num_proc: int | None = help_field(None, "Processes used to tokenise the dataset.")
    max_length: int | None = help_field(
        1024, "Maximum tokens per row (per packed row when packing). None = no limit."
    )
    max_seq_length: int | None = help_field(None, "Alias of max_length (older TRL name).")
    overlong: str = help_field("truncate", "Rows over max_length: 'truncate' or 'drop'.")
    completion_only_loss: bool | None = help_field(
        None, "Loss on completions only for prompt-completion data (None = True)."
    )
    assistant_only_loss: bool = help_field(
        True, "Loss on assistant turns only for conversational data (needs a chat template)."
    )
    packing: bool = help_field(False, "Pack several documents per row (best-fit decreasing).")
    packing_strategy: str = help_field("bfd", "Packing strategy: 'bfd'.")
    eval_packing: bool | None = help_field(None, "Pack the eval set (None = same as packing).")
    padding_free: bool | None = help_field(
        None,
        "Concatenate a micro-batch's rows into one row (position ids restart per row, no attention "
        "across rows) instead of padding them. None = whenever it computes less and the model reads packed "
        "position ids; True = always; False = never.",
    )
    use_fused_loss: bool = help_field(
        True, "Compute the loss with the fused linear+log-prob kernel (no full logits)."
    )
    fused_chunk_size: int | None = help_field(None, "Rows per chunk in the fused kernel.")
    token_accuracy_every_step: bool = help_field(
        False, "Measure mean_token_accuracy on every step (costs an extra vocab pass)."
    )
    loss_type: str = help_field("nll", f"Token loss: one of {sorted(SFT_LOSSES)} ('dft': arXiv:2508.05629).")
    truncation_mode: str = help_field(
        "keep_start", "Rows over max_length keep their first ('keep_start') or last ('keep_end') tokens."
    )
    shuffle_dataset: bool = help_field(False, "Shuffle the raw rows (with seed) before tokenising.")

    def __post_init__(self) -> None:
        self._resolve_max_length()
        if self.overlong not in _OVERLONG:
            raise ValueError(f"SFTConfig.overlong must be one of {_OVERLONG}, got {self.overlong!r}")
        if self.packing_strategy in ("bfd_split", "wrapped"):  # TRL 1.16's other strategies
            raise NotImplementedError(
                f"SFTConfig.packing_strategy={self.packing_strategy!r} is not implemented: 'bfd' (whole documents, "
                "never split, documents never attend to each other) is the packing here"
            )
        if self.packing_strategy not in _PACKING_STRATEGIES:
            raise ValueError(
                f"SFTConfig.packing_strategy must be one of {_PACKING_STRATEGIES}, got {self.packing_strategy!r}"
            )
        if self.packing and self.max_length is None:
            raise ValueError("packing=True needs max_length (the length of a packed row)")
        if self.eval_packing is None:
            self.eval_packing = self.packing
        if self.completion_only_loss is None:
            self.completion_only_loss = True
        if self.loss_type not in SFT_LOSSES:
            raise ValueError(
                f"SFTConfig.loss_type must be one of {sorted(SFT_LOSSES)}, got {self.loss_type!r}"
            )
        if self.truncation_mode not in _TRUNCATION_MODES:
            raise ValueError(
                f"SFTConfig.truncation_mode must be one of {_TRUNCATION_MODES}, got {self.truncation_mode!r}"
            )
        super().__post_init__()

    def _resolve_max_length(self) -> None:
        if self.max_seq_length is None:
            return
        default = type(self).__dataclass_fields__["max_length"].default
        if self.max_length not in (default, self.max_seq_length):
            raise ValueError(
                f"max_seq_length={self.max_seq_length} and max_length={self.max_length} disagree; max_seq_length is "
                "an alias of max_length: pass one."
            )
        self.max_length = self.max_seq_length
