"""DPOTrainer: direct preference optimisation (and its variants) on `transformers.Trainer`.

Per step: the chosen and rejected sequences of B pairs go through the policy in one forward pass (`[2B, T]`); the
summed completion log-probs come from the last hidden state and the LM-head weight through the fused kernel (the
`[2B, T, V]` logits are never built, see `preference_logprobs`); the reference log-probs come from the reference
model, from the policy with its PEFT adapter disabled, or from dataset columns computed before training; the loss
is `rlhf_core.losses.dpo.dpo_loss` (any registered variant, or a weighted list), summed over pairs and divided by
the number of pairs in the whole accumulated batch.

Logged metrics (train, and with the ``eval_`` prefix): ``loss``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (and ``loss/<type>`` per variant
when several are combined).
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import nn

from rlhf_core.losses.dpo import dpo_loss
from rlhf_core.trainers.base import TokenNormalisedTrainer
from rlhf_core.trainers.batch_tracking import ROW_IDS_KEY
from rlhf_core.trainers.model_setup import (
    is_peft_model,
    load_model,
    load_processing_class,
    resolve_processing_class_alias,
)
from rlhf_core.trainers.padding_free import padding_free_cost_model, plan_layout
from rlhf_core.trainers.preference.data import (
    PreferencePairCollator,
    length_policy,
    prepare_preference_dataset,
)
from rlhf_core.trainers.preference.dpo_config import DPOConfig
from rlhf_core.trainers.preference.evaluation import PreferenceEvaluationMixin
from rlhf_core.trainers.preference.logprobs import SequenceLogProbs, completion_logprobs
from rlhf_core.trainers.preference.model_prep import (
    disable_dropout,
    ensure_pad_token,
    frozen_copy,
    reference_adapter_disabled,
    unwrap_model,
)
from rlhf_core.trainers.preference.reference import precompute_reference_logps

__all__ = ["DPOTrainer"]


class DPOTrainer(PreferenceEvaluationMixin, TokenNormalisedTrainer):
    """Direct preference optimisation of a causal LM (TRL-compatible constructor).

    Args:
        model: a causal LM object (built in memory or loaded) or a name/path (``"rlhf-tiny"`` included).
        ref_model: the reference model (object or name/path). None: a frozen in-memory copy of the initial policy;
            for a PEFT policy, the policy with its adapter disabled; with ``precompute_ref_log_probs=True``, the
            initial policy itself for the one precompute pass (no copy is made and none is kept).
        args: a `DPOConfig` (default ``DPOConfig()``).
        train_dataset, eval_dataset: raw preference datasets (explicit or implicit prompt, strings or messages) or
            already tokenised ones; eval may be a dict of them.
        processing_class / tokenizer: the tokenizer (``tokenizer=`` is an alias).
        peft_config: LoRA (or other PEFT) configuration; the reference pass then disables the adapter.
    """

    def __init__(
        self,
        model: nn.Module | str | None = None,
        ref_model: nn.Module | str | None = None,
        args: DPOConfig | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        tokenizer: Any = None,
        peft_config: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        args = DPOConfig() if args is None else args
        if not isinstance(args, DPOConfig):
            raise TypeError(f"args must be a DPOConfig, got {type(args).__name__}")
        if model is None:
            raise ValueError("DPOTrainer needs a model (an object or a name/path).")
        processing_class = resolve_processing_class_alias(processing_class, tokenizer)
        if isinstance(model, str):
            processing_class = load_processing_class(model, processing_class)
            model = load_model(model, model_init_kwargs=args.model_init_kwargs)
        if isinstance(ref_model, str):
            ref_model = load_model(ref_model, model_init_kwargs=args.ref_model_init_kwargs)
        if ref_model is not None and ref_model is model:
            raise ValueError("ref_model is the policy object itself: pass ref_model=None for a frozen copy.")
        pad_token_id = ensure_pad_token(processing_class, model)
        if args.disable_dropout:
            disable_dropout(model)
        ref_model = _initial_reference(model, ref_model, args, peft_config)

        self._length_policy = length_policy(args)
        train_dataset = prepare_preference_dataset(
            train_dataset, processing_class, **self._length_policy, what="train"
        )
        eval_dataset = prepare_preference_dataset(
            eval_dataset, processing_class, **self._length_policy, what="eval"
        )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or PreferencePairCollator(pad_token_id),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **trainer_kwargs,
        )
        self.ref_model = ref_model
        self._cost_models: dict[int, Any] = {}
        if args.precompute_ref_log_probs:
            self._precompute_and_release_reference()
        elif self.ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)

    # ---- reference ------------------------------------------------------------------------------------------

    def _precompute_and_release_reference(self) -> None:
        """One no-grad pass over the train/eval pairs; the log-probs become dataset columns, the model is freed."""
        reference = self.ref_model
        if reference is not None:
            reference = reference.to(self.args.device)
        batch_size = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size

        def score(dataset: Any, what: str) -> Any:
            return precompute_reference_logps(
                dataset,
                lambda batch: self._reference_logps(batch, reference),
                collator=self.data_collator,
                batch_size=batch_size,
                device=self.args.device,
                what=what,
            )

        was_training = self.model.training
        self.model.eval()
        try:
            self.train_dataset = score(self.train_dataset, "train")
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {k: score(v, f"eval[{k}]") for k, v in self.eval_dataset.items()}
            else:
                self.eval_dataset = score(self.eval_dataset, "eval")
        finally:
            self.model.train(was_training)
        # Keep no reference model: drop our handle (the caller's own variable, if any, is theirs).
        self.ref_model = reference = None
        gc.collect()

    def _reference_logps(
        self, inputs: dict[str, Any], reference: nn.Module | None = None
    ) -> SequenceLogProbs:
        """Reference log-probs of a batch: the reference model, else the policy with its adapter disabled."""
        reference = self.ref_model if reference is None else reference
        with torch.no_grad():
            if reference is not None:
                return self._logps(reference, inputs)
            if is_peft_model(self.model) or _wraps_peft(self.model):
                with reference_adapter_disabled(self.model):
                    return self._logps(self.model, inputs)
            # precompute with ref_model=None: the policy before any update is the reference
            return self._logps(self.model, inputs)

    def _logps(self, model: nn.Module, inputs: dict[str, Any]) -> SequenceLogProbs:
        return completion_logprobs(
            model,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["labels"],
            chunk_size=self.args.logprobs_chunk_size,
            layout=plan_layout(inputs["attention_mask"], self._cost_model(model)),
        )

    def _cost_model(self, model: nn.Module) -> Any:
        """Padding-free cost model of `model` (policy or reference), checked once per model."""
        key = id(unwrap_model(model))
        if key not in self._cost_models:
            self._cost_models[key] = padding_free_cost_model(model, self.args.padding_free)
        return self._cost_models[key]

    # ---- loss -----------------------------------------------------------------------------------------------

    def count_loss_units(self, batch: dict[str, Any]) -> int:
        """Pairs in a collated batch (its rows are chosen then rejected)."""
        return int(batch["input_ids"].shape[0]) // 2

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        policy = self._logps(model, inputs)
        policy_chosen, policy_rejected = policy.logps.chunk(2)
        chosen_tokens, rejected_tokens = policy.num_tokens.chunk(2)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        elif self.args.precompute_ref_log_probs:
            raise ValueError(
                "precompute_ref_log_probs=True but this batch has no ref_chosen_logps/ref_rejected_logps: evaluate "
                "only datasets given to the constructor (their reference log-probs were computed before training)."
            )
        else:
            ref_chosen, ref_rejected = self._reference_logps(inputs).logps.chunk(2)
        out = dpo_loss(
            policy_chosen,
            policy_rejected,
            ref_chosen.to(policy_chosen.device),
            ref_rejected.to(policy_chosen.device),
            beta=self.args.beta,
            loss_type=self.args.loss_type,
            loss_weights=self.args.loss_weights,
            label_smoothing=self.args.label_smoothing,
            chosen_lengths=chosen_tokens.to(policy_chosen.dtype),
            rejected_lengths=rejected_tokens.to(policy_chosen.dtype),
        )
        loss = out.losses.sum() / self.loss_divisor(inputs, num_items_in_batch)
        self._record(out, policy_chosen, policy_rejected)
        return (loss, out) if return_outputs else loss

    def _record(self, out: Any, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor) -> None:
        self.record_metric("rewards/chosen", out.chosen_rewards)
        self.record_metric("rewards/rejected", out.rejected_rewards)
        self.record_metric("rewards/accuracies", (out.chosen_rewards > out.rejected_rewards).float())
        self.record_metric("rewards/margins", out.chosen_rewards - out.rejected_rewards)
        self.record_metric("logps/chosen", policy_chosen.detach())
        self.record_metric("logps/rejected", policy_rejected.detach())
        if len(out.terms) > 1:
            for name, value in out.terms.items():
                self.record_metric(f"loss/{name}", value)

    # ---- evaluation -----------------------------------------------------------------------------------------

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Loss, and (unless ``prediction_loss_only``) logits `[B, 2]` = implicit rewards (chosen, rejected)."""
        inputs.pop(ROW_IDS_KEY, None)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        logits = torch.stack([out.chosen_rewards, out.rejected_rewards], dim=1)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return loss.detach(), logits, labels


def _initial_reference(
    model: nn.Module, ref_model: nn.Module | None, args: DPOConfig, peft_config: Any
) -> nn.Module | None:
    """The reference model to hold, fixed before any update and before PEFT wraps the policy.

    None when the policy itself serves (adapter disabled for a PEFT policy; the one precompute pass)."""
    peft_reference = is_peft_model(model) or peft_config is not None
    if ref_model is None and not peft_reference and not args.precompute_ref_log_probs:
        ref_model = frozen_copy(model)
    elif ref_model is not None:
        ref_model.requires_grad_(False)
        ref_model.eval()
    if ref_model is not None and args.disable_dropout:
        disable_dropout(ref_model)
    return ref_model


def _wraps_peft(model: nn.Module) -> bool:
    inner = getattr(model, "module", None)
    return isinstance(inner, nn.Module) and (is_peft_model(inner) or _wraps_peft(inner))
