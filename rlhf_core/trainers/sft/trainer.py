"""SFTTrainer: supervised fine-tuning on `transformers.Trainer`, in the shape TRL users know.

Data: language modelling (``text`` or ``dataset_text_field``), prompt-completion (loss on the completion by
default) or conversational ``messages`` (loss on the assistant turns when the chat template allows it), tokenised by
`rlhf_core.data.tokenize_sft`, optionally packed (`rlhf_core.data.pack_dataset`, best-fit decreasing) and collated
by `rlhf_core.data.collators.SFTCollator`. Loss: summed NLL of the target tokens over the accumulated batch's loss
tokens (`rlhf_core.losses.sft_loss`, normalised by `TokenNormalisedTrainer`), computed through the fused
linear+log-prob kernel unless ``use_fused_loss=False``. Logged: loss, mean_token_accuracy, num_tokens (cumulative),
entropy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from rlhf_core.losses.sft import sft_loss
from rlhf_core.models.lm_head import fusable_lm_head
from rlhf_core.trainers.base import TokenNormalisedTrainer
from rlhf_core.trainers.batch_tracking import ROW_ID_COLUMN
from rlhf_core.trainers.model_setup import (
    load_model,
    load_processing_class,
    model_name_or_path,
    resolve_processing_class_alias,
)
from rlhf_core.trainers.padding_free import BatchCostModel
from rlhf_core.trainers.sft.config import SFTConfig
from rlhf_core.trainers.sft.data import NUM_TOKENS_KEY, TokenCountingCollator, prepare_sft_dataset
from rlhf_core.trainers.sft.padding_free import PaddingFreeCollator, reads_packed_position_ids
from rlhf_core.trainers.sft.token_stats import (
    fused_token_stats,
    plain_token_stats,
    supports_logits_to_keep,
)
from rlhf_core.trainers.tokenizer_options import apply_tokenizer_options

__all__ = ["SFTTrainer"]

logger = logging.getLogger(__name__)

_FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids")


def _as_sft_config(args: TrainingArguments | None, model: Any) -> SFTConfig:
    if args is None:
        name = (model_name_or_path(model) or "model").rstrip("/").split("/")[-1]
        return SFTConfig(output_dir=f"{name}-SFT")
    if isinstance(args, SFTConfig):
        return args
    if isinstance(args, TrainingArguments):
        # A plain TrainingArguments: keep every value it holds, add the SFT defaults.
        # Field values as set (not to_dict(), which masks tokens with placeholders).
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
        return SFTConfig(**values)
    raise TypeError(f"args must be an SFTConfig (or TrainingArguments), got {type(args).__name__}")


def _default_collator(tokenizer: Any, model: Any, args: SFTConfig) -> Any:
    """`SFTCollator`, merging each micro-batch into one padding-free row when ``args.padding_free`` allows."""
    from rlhf_core.data.collators import SFTCollator
    from rlhf_core.data.tokenization import resolve_pad_token_id

    collator = SFTCollator(resolve_pad_token_id(tokenizer), pad_to_multiple_of=args.pad_to_multiple_of)
    if args.padding_free is False:
        return collator
    supported = reads_packed_position_ids(model)
    if args.padding_free:
        if not supported:
            raise ValueError(
                f"padding_free=True but {type(model).__name__} does not build its attention mask from packed "
                "position ids (transformers' create_causal_mask): rows would attend to each other. Use "
                "padding_free=False."
            )
        return PaddingFreeCollator(collator)
    cost_model = BatchCostModel.from_config(getattr(model, "config", None))
    if not supported or cost_model is None:
        return collator
    return PaddingFreeCollator(collator, cost_model)


def _is_prepared(dataset: Any) -> bool:
    return "input_ids" in (getattr(dataset, "column_names", None) or ["input_ids"])


class SFTTrainer(TokenNormalisedTrainer):
    """Supervised fine-tuning trainer (TRL-compatible constructor).

    Args:
        model: a `PreTrainedModel`/``nn.Module``, or a name/path (``"rlhf-tiny"``, a checkpoint folder, a hub name),
            loaded with ``args.model_init_kwargs``.
        args: `SFTConfig` (a plain `TrainingArguments` is converted; None = defaults, output in ``<model>-SFT``).
        data_collator: default `SFTCollator` with the tokenizer's pad token (rows merged per ``args.padding_free``).
        train_dataset / eval_dataset: a `datasets.Dataset` (or a dict of them for eval) in any SFT format, or
            already tokenised (``input_ids`` [+ ``completion_mask``]).
        processing_class / tokenizer: the tokenizer (aliases); default: the one saved with the model's name/path.
        peft_config: a `peft.PeftConfig` (e.g. ``LoraConfig``) to train adapters instead of the whole model.
        dataset_text_field: overrides ``args.dataset_text_field``.
        formatting_func: ``example -> str`` rendering each raw row to the text to train on.
        **kwargs: passed to `transformers.Trainer` (callbacks, optimizers, compute_metrics, ...).
    """

    _tag_names = ["rlhf_core", "sft"]

    def __init__(
        self,
        model: Any,
        args: SFTConfig | TrainingArguments | None = None,
        data_collator: Callable[[list[Any]], Any] | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        tokenizer: Any = None,
        peft_config: Any = None,
        dataset_text_field: str | None = None,
        formatting_func: Callable[[Mapping[str, Any]], str] | None = None,
        **kwargs: Any,
    ) -> None:
        args = _as_sft_config(args, model)
        if dataset_text_field is not None:
            args.dataset_text_field = dataset_text_field
        processing_class = apply_tokenizer_options(
            load_processing_class(model, resolve_processing_class_alias(processing_class, tokenizer)), args
        )
        model = load_model(model, model_init_kwargs=args.model_init_kwargs)
        self.overlong_reports: dict[str, Any] = {}
        train_dataset = self._prepare(
            train_dataset, processing_class, args, args.packing, formatting_func, "train"
        )
        if isinstance(eval_dataset, Mapping):
            eval_dataset = {
                key: self._prepare(
                    ds, processing_class, args, args.eval_packing, formatting_func, f"eval_{key}"
                )
                for key, ds in eval_dataset.items()
            }
        else:
            eval_dataset = self._prepare(
                eval_dataset, processing_class, args, args.eval_packing, formatting_func, "eval"
            )
        if data_collator is None:
            data_collator = _default_collator(processing_class, model, args)
        super().__init__(
            model=model,
            args=args,
            data_collator=TokenCountingCollator(data_collator),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        self._num_tokens = {"train": 0, "eval": 0}
        self._formatting_func = formatting_func
        self._fused_ok = self._check_fusable()

    # ---- data ---------------------------------------------------------------------------------------------

    def _prepare(self, dataset, tokenizer, args, packing, formatting_func, what):
        if dataset is None:
            return None
        dataset, report = prepare_sft_dataset(
            dataset, tokenizer, args, packing=packing, formatting_func=formatting_func, what=what
        )
        if report is not None:
            self.overlong_reports[what] = report
        return dataset

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        # A raw dataset handed to evaluate() is tokenised (and packed) like the one given at construction.
        if eval_dataset is not None and not isinstance(eval_dataset, str) and not _is_prepared(eval_dataset):
            eval_dataset = self._prepare(
                eval_dataset,
                self.processing_class,
                self.args,
                self.args.eval_packing,
                self._formatting_func,
                "eval",
            )
        return super().get_eval_dataloader(eval_dataset)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "completion_mask", "seq_lengths", "labels", ROW_ID_COLUMN]
        super()._set_signature_columns_if_needed()

    # ---- loss ---------------------------------------------------------------------------------------------

    def _check_fusable(self) -> bool:
        if not self.args.use_fused_loss:
            return False
        unwrapped = self.accelerator.unwrap_model(self.model)
        if fusable_lm_head(unwrapped) is None or not supports_logits_to_keep(unwrapped):
            logger.warning(
                "use_fused_loss=True but the model's LM head is not a plain nn.Linear or its forward takes no "
                "logits_to_keep (e.g. LoRA on lm_head): computing the loss from full logits instead."
            )
            return False
        return True

    def count_loss_units(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return (batch["labels"][:, 1:] != -100).sum()

    def _measure_stats(self, mode: str) -> bool:
        # Entropy and accuracy cost extra LM-head passes: measure them on the steps that log them.
        if mode == "eval" or self.args.token_accuracy_every_step:
            return True
        if self.args.logging_strategy != IntervalStrategy.STEPS:
            return self.args.logging_strategy == IntervalStrategy.EPOCH
        step = self.state.global_step + 1
        every = max(int(self.state.logging_steps or 1), 1)
        return (
            step % every == 0 or step == self.state.max_steps or (self.args.logging_first_step and step == 1)
        )

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ):
        mode = "train" if model.training else "eval"
        num_tokens = inputs.pop(NUM_TOKENS_KEY, None)
        labels = inputs["labels"]
        shift_labels = labels[:, 1:]
        loss_mask = shift_labels != -100
        forward_inputs = {k: inputs[k] for k in _FORWARD_KEYS if inputs.get(k) is not None}
        dft = (
            getattr(self.args, "loss_type", "nll") == "dft"
        )  # DFT weights each token: it needs the log-probs
        measure = self._measure_stats(mode) or dft
        if self._fused_ok:
            head = fusable_lm_head(self.accelerator.unwrap_model(model))
            stats = fused_token_stats(
                model, head, forward_inputs, shift_labels, loss_mask,
                chunk_size=self.args.fused_chunk_size, measure_stats=measure,
            )  # fmt: skip
        else:
            stats = plain_token_stats(model, forward_inputs, shift_labels, loss_mask)
        divisor = self.loss_divisor(inputs, num_items_in_batch)
        if stats.logps is not None:
            loss = sft_loss(
                stats.logps, torch.ones_like(stats.logps, dtype=torch.bool), num_items=divisor,
                loss_type="dft" if dft else "nll",
            ).loss  # fmt: skip
        else:
            # The fast fused path gives -sum(logps) directly: the same value sft_loss computes.
            loss = stats.summed_nll / divisor
        self._record_token_metrics(stats if measure else None, num_tokens, mode)
        if return_outputs:
            return loss, {"summed_nll": stats.summed_nll.detach()}
        return loss

    def _record_token_metrics(self, stats: Any, num_tokens: Any, mode: str) -> None:
        """Entropy and accuracy when measured (``stats`` not None); the cumulative real-token count always."""
        if stats is not None and stats.entropy is not None:
            self.record_metric("entropy", stats.entropy, mode=mode)
            if stats.correct is not None:
                self.record_metric("mean_token_accuracy", stats.correct, mode=mode)
        if num_tokens is not None:
            count = torch.as_tensor(num_tokens, device=self.accelerator.device).reshape(1)
            if self.args.world_size > 1:
                count = self.accelerator.gather(count).sum()
            self._num_tokens[mode] += int(count.sum())

    def extra_log_values(self, mode: str) -> dict[str, float]:
        prefix = "eval_" if mode == "eval" else ""
        return {f"{prefix}num_tokens": float(self._num_tokens[mode])}

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Without compute_metrics nothing reads the predictions: skip gathering them.
        if self.compute_metrics is None:
            prediction_loss_only = True
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
