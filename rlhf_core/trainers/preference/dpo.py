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

from typing import Any

import torch
from torch import nn

from rlhf_core.losses.dpo import dpo_loss, wpo_pair_weights
from rlhf_core.trainers.padding_free import plan_layout
from rlhf_core.trainers.preference.data import REFERENCE_COLUMNS
from rlhf_core.trainers.preference.dpo_config import DPOConfig
from rlhf_core.trainers.preference.logprobs import SequenceLogProbs, completion_logprobs
from rlhf_core.trainers.preference.reference import ReferenceModelTrainer

__all__ = ["DPOTrainer"]


class DPOTrainer(ReferenceModelTrainer):
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
        quantization_config: accepted for TRL's signature; only None (no quantised loading here).
    """

    config_class = DPOConfig
    reference_columns = REFERENCE_COLUMNS

    def _reference_logps(self, inputs: dict[str, Any]) -> SequenceLogProbs:
        """Reference log-probs of a batch's `2B` rows (see `ReferenceModelTrainer._reference_model`)."""
        with self._reference_model() as reference:
            return self._logps(reference, inputs)

    def _reference_scores(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return dict(zip(REFERENCE_COLUMNS, self._reference_logps(batch).logps.chunk(2)))

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


def _wpo_weights(policy: SequenceLogProbs) -> torch.Tensor:
    return wpo_pair_weights(policy.token_logps, policy.log_sum_sq, policy.rows, policy.num_tokens)
