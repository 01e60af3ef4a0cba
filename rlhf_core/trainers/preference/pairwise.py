"""PairwiseTrainer: what the preference trainers on it (RewardTrainer, DPOTrainer, KTOTrainer) share, once.

The TRL-style constructor (model object or name/path, ``tokenizer=`` alias, pad token, dropout, the length policy,
datasets tokenised or raw), ``compute_loss`` normalised by the accumulated batch's pairs, loss-unit counting,
``prediction_step`` (loss and per-pair scores), and ``evaluate`` / ``predict`` on raw (untokenised) datasets.

A subclass names its ``config_class`` and fills in the hooks: ``_prepare_models`` (before Trainer's set-up:
checks, a reference model), ``_finish_setup`` (after it), ``pair_loss`` and ``pair_scores``; a trainer on other
rows than pairs (KTO) also overrides ``_prepare_dataset``, ``_default_collator``, ``count_loss_units`` and
``signature_columns``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlhf_core.models.module_state import disable_dropout
from rlhf_core.models.pad_token import ensure_pad_token
from rlhf_core.trainers.base import TokenNormalisedTrainer
from rlhf_core.trainers.batch_tracking import ROW_IDS_KEY
from rlhf_core.trainers.model_setup import load_model, load_processing_class, resolve_processing_class_alias
from rlhf_core.trainers.preference.data import (
    PAIR_COLUMNS,
    PreferencePairCollator,
    length_policy,
    prepare_preference_dataset,
)
from rlhf_core.trainers.tokenizer_options import apply_tokenizer_options

__all__ = ["PairwiseTrainer"]


class PairwiseTrainer(TokenNormalisedTrainer):
    """A `TokenNormalisedTrainer` on preference data; subclasses set ``config_class`` and the hooks above."""

    config_class: type = type(None)
    signature_columns: tuple[str, ...] = tuple(PAIR_COLUMNS)

    def __init__(
        self,
        model: nn.Module | str | None = None,
        args: Any = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        ref_model: nn.Module | str | None = None,
        tokenizer: Any = None,
        peft_config: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        args = self.config_class() if args is None else args
        if not isinstance(args, self.config_class):
            raise TypeError(f"args must be a {self.config_class.__name__}, got {type(args).__name__}")
        if model is None:
            raise ValueError(f"{type(self).__name__} needs a model (an object or a name/path).")
        processing_class = resolve_processing_class_alias(processing_class, tokenizer)
        if isinstance(model, str):
            processing_class = load_processing_class(model, processing_class)
            model = self._load_model(model, args)
        pad_token_id = ensure_pad_token(apply_tokenizer_options(processing_class, args), model)
        self._pad_to_multiple_of = getattr(args, "pad_to_multiple_of", None)
        if args.disable_dropout:
            disable_dropout(model)
        ref_model = self._prepare_models(model, ref_model, args, peft_config)
        if args.disable_dropout:
            disable_dropout(ref_model)
        self._length_policy = length_policy(args)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or self._default_collator(pad_token_id),
            train_dataset=self._prepare_dataset(train_dataset, processing_class, "train"),
            eval_dataset=self._prepare_dataset(eval_dataset, processing_class, "eval"),
            processing_class=processing_class,
            peft_config=peft_config,
            **trainer_kwargs,
        )
        self.ref_model = ref_model
        self._finish_setup()

    # ---- hooks ------------------------------------------------------------------------------------------------

    def _load_model(self, name: str, args: Any) -> nn.Module:
        """The trained model from a name/path (a causal LM by default)."""
        return load_model(name, model_init_kwargs=args.model_init_kwargs)

    def _prepare_models(
        self, model: nn.Module, ref_model: nn.Module | str | None, args: Any, peft_config: Any
    ) -> nn.Module | None:
        """Checks and the reference model, before Trainer (and PEFT) set-up; returns the reference to hold."""
        return None

    def _finish_setup(self) -> None:
        """What the subclass sets up once Trainer is initialised (accelerator, wrapped model)."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, what: str) -> Any:
        """A raw or tokenised dataset (or a dict of them, or None) as the collator's rows."""
        return prepare_preference_dataset(dataset, processing_class, **self._length_policy, what=what)

    def _default_collator(self, pad_token_id: int) -> Any:
        return PreferencePairCollator(pad_token_id, pad_to_multiple_of=self._pad_to_multiple_of)

    def pair_loss(self, model: nn.Module, inputs: dict[str, Any], divisor: Any) -> tuple[torch.Tensor, Any]:
        """(the loss summed over the batch's pairs divided by ``divisor``, outputs for ``pair_scores``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement pair_loss(model, inputs, divisor)")

    def pair_scores(self, outputs: Any) -> torch.Tensor:
        """``[B, 2]`` (chosen, rejected) scores from ``compute_loss``'s outputs, for ``prediction_step``."""
        raise NotImplementedError(f"{type(self).__name__} must implement pair_scores(outputs)")

    # ---- loss, loss units, prediction -------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """``pair_loss`` divided by the accumulated batch's pairs (``num_items_in_batch``, else this batch's)."""
        loss, outputs = self.pair_loss(model, inputs, self.loss_divisor(inputs, num_items_in_batch))
        return (loss, outputs) if return_outputs else loss

    def count_loss_units(self, batch: dict[str, Any]) -> int:
        """Pairs in a collated batch (its rows are chosen then rejected)."""
        return int(batch["input_ids"].shape[0]) // 2

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Loss, and (unless ``prediction_loss_only``) logits ``[B, 2]`` (see ``pair_scores``) with labels 0."""
        inputs.pop(ROW_IDS_KEY, None)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        logits = self.pair_scores(outputs)
        return loss.detach(), logits, self.prediction_labels(inputs, logits)

    def prediction_labels(self, inputs: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        """The ``label_ids`` returned beside ``pair_scores``: 0 (the chosen side) for pairs."""
        return torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)

    # ---- evaluation on raw datasets ---------------------------------------------------------------------------

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ):
        """`Trainer.evaluate`, also accepting a raw (untokenised) dataset."""
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._prepare_dataset(eval_dataset, self.processing_class, metric_key_prefix)
        return super().evaluate(
            eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ):
        """`Trainer.predict` (also on a raw dataset): predictions ``[N, 2]`` = (chosen, rejected)."""
        test_dataset = self._prepare_dataset(test_dataset, self.processing_class, metric_key_prefix)
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(self.signature_columns)
        super()._set_signature_columns_if_needed()
