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

from rlhf_core.losses.dpo import dpo_loss, wpo_pair_weights
from rlhf_core.models.module_state import eval_mode, freeze
from rlhf_core.models.reference import create_reference_model as frozen_copy
from rlhf_core.trainers.model_setup import is_peft_model, load_model, unwrap_model
from rlhf_core.trainers.padding_free import padding_free_cost_model, plan_layout
from rlhf_core.trainers.preference.dpo_config import DPOConfig
from rlhf_core.trainers.preference.logprobs import SequenceLogProbs, completion_logprobs
from rlhf_core.trainers.preference.pairwise import PairwiseTrainer
from rlhf_core.trainers.preference.ref_sync import SyncReferenceCallback, check_reference_sync
from rlhf_core.trainers.preference.reference import precompute_reference_logps, reference_adapter_disabled

__all__ = ["DPOTrainer"]


class DPOTrainer(PairwiseTrainer):
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

    config_class = DPOConfig

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
        super().__init__(
            model,
            args,
            data_collator,
            train_dataset,
            eval_dataset,
            processing_class,
            ref_model=ref_model,
            tokenizer=tokenizer,
            peft_config=peft_config,
            **trainer_kwargs,
        )

    def _prepare_models(
        self, model: nn.Module, ref_model: nn.Module | str | None, args: Any, peft_config: Any
    ) -> nn.Module | None:
        if isinstance(ref_model, str):
            ref_model = load_model(ref_model, model_init_kwargs=args.ref_model_init_kwargs)
        if ref_model is not None and ref_model is model:
            raise ValueError("ref_model is the policy object itself: pass ref_model=None for a frozen copy.")
        return _initial_reference(model, ref_model, args, peft_config)

    def _finish_setup(self) -> None:
        self._cost_models: dict[int, Any] = {}
        if self.args.precompute_ref_log_probs:
            self._precompute_and_release_reference()
        elif self.ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
        if self.args.sync_ref_model:  # TR-DPO (ref_sync.py)
            check_reference_sync(self.args, self.ref_model)
            self.add_callback(SyncReferenceCallback(self.ref_model, self.accelerator))

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

        with eval_mode(self.model):
            self.train_dataset = score(self.train_dataset, "train")
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {k: score(v, f"eval[{k}]") for k, v in self.eval_dataset.items()}
            else:
                self.eval_dataset = score(self.eval_dataset, "eval")
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

    def _logps(self, model: nn.Module, inputs: dict[str, Any], *, wpo: bool = False) -> SequenceLogProbs:
        return completion_logprobs(
            model,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["labels"],
            chunk_size=self.args.logprobs_chunk_size,
            layout=plan_layout(inputs["attention_mask"], self._cost_model(model)),
            ld_alpha=self.args.ld_alpha,  # LD-DPO: policy and reference alike, as TRL
            with_log_sum_sq=wpo,
        )

    def _cost_model(self, model: nn.Module) -> Any:
        """Padding-free cost model of `model` (policy or reference), checked once per model."""
        key = id(unwrap_model(model))
        if key not in self._cost_models:
            self._cost_models[key] = padding_free_cost_model(model, self.args.padding_free)
        return self._cost_models[key]

    # ---- loss -----------------------------------------------------------------------------------------------

    def pair_loss(self, model: nn.Module, inputs: dict[str, Any], divisor: Any) -> tuple[torch.Tensor, Any]:
        policy = self._logps(model, inputs, wpo=self.args.use_weighting)
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
            f_divergence_type=self.args.f_divergence_type,
            f_alpha_divergence_coef=self.args.f_alpha_divergence_coef,
            pair_weights=_wpo_weights(policy) if self.args.use_weighting else None,
        )
        self._record(out, policy_chosen, policy_rejected)
        return out.losses.sum() / divisor, out

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

    def pair_scores(self, outputs: Any) -> torch.Tensor:
        """``[B, 2]`` = implicit rewards (chosen, rejected)."""
        return torch.stack([outputs.chosen_rewards, outputs.rejected_rewards], dim=1)


def _initial_reference(
    model: nn.Module, ref_model: nn.Module | None, args: DPOConfig, peft_config: Any
) -> nn.Module | None:
    """The reference model to hold, fixed before any update and before PEFT wraps the policy.

    None when the policy itself serves (adapter disabled for a PEFT policy; the one precompute pass)."""
    peft_reference = is_peft_model(model) or peft_config is not None
    if ref_model is None and not peft_reference and not args.precompute_ref_log_probs:
        ref_model = frozen_copy(model)
    return freeze(ref_model)


def _wpo_weights(policy: SequenceLogProbs) -> torch.Tensor:
    return wpo_pair_weights(policy.token_logps, policy.log_sum_sq, policy.rows, policy.num_tokens)


def _wraps_peft(model: nn.Module) -> bool:
    inner = getattr(model, "module", None)
    return isinstance(inner, nn.Module) and (is_peft_model(inner) or _wraps_peft(inner))
