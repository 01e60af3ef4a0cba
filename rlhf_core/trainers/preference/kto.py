"""KTOTrainer: Kahneman-Tversky optimisation (arXiv:2402.01306) on unpaired, labelled completions.

Per step, for B examples `(x_i, y_i, label_i)` and their mismatched completions `(x_i, y'_i)` (see `kto_data`):

- the policy scores the B completions (with gradient) and, without gradient, the B mismatched ones;
- the reference scores both sets in one forward pass of 2B rows (a frozen copy, the policy with its PEFT adapter
  disabled, or nothing at all: the log-probs precomputed into dataset columns before training);
- `z0 = max(0, mean_i [log pi(y'_i|x_i) - log pi_ref(y'_i|x_i)])`, averaged over every process, without gradient;
- the loss is `rlhf_core.losses.kto.kto_loss`, summed over examples and divided by the examples of the whole
  accumulated batch (as TRL's per-batch mean, and the same under gradient accumulation).

Summed completion log-probs come from the last hidden state and the LM-head weight through the fused kernel
(`completion_logprobs`: the `[B, T, V]` logits are never built), with the padding-free row layout where it pays.

Logged metrics (train, and with the ``eval_`` prefix), TRL's names: ``loss``, ``kl`` (z0), ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected`` ("chosen" = desirable examples).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlhf_core.data.collators import IGNORE_INDEX
from rlhf_core.losses.kto import kto_loss, kto_reference_point
from rlhf_core.models.module_state import eval_mode
from rlhf_core.trainers.model_setup import load_model
from rlhf_core.trainers.padding_free import plan_layout
from rlhf_core.trainers.preference.kto_config import KTOConfig
from rlhf_core.trainers.preference.kto_data import (
    KTO_COLUMNS,
    UnpairedCollator,
    prepare_kto_dataset,
    warn_on_class_imbalance,
)
from rlhf_core.trainers.preference.logprobs import completion_logprobs
from rlhf_core.trainers.preference.reference import ReferenceModelTrainer, carries_peft_adapter

__all__ = ["KTOTrainer"]


class KTOTrainer(ReferenceModelTrainer):
    """KTO of a causal LM (TRL 1.16's constructor).

    Args:
        model: a causal LM object (built in memory or loaded) or a name/path (``"rlhf-tiny"`` included).
        ref_model: the reference model (object or name/path); None as in `DPOTrainer`: a frozen in-memory copy, the
            policy with its adapter disabled for PEFT, or (``precompute_ref_log_probs``) the initial policy for the
            one precompute pass.
        args: a `KTOConfig` (default ``KTOConfig()``).
        train_dataset, eval_dataset: unpaired (``prompt``, ``completion``, ``label``), paired (explicit or implicit
            prompt) or tokenised datasets, strings or messages; eval may be a dict of them.
        processing_class / tokenizer: the tokenizer (``tokenizer=`` is an alias).
        peft_config: LoRA (or other PEFT) configuration.
        quantization_config: accepted for TRL's signature; only None (no quantised loading here).
    """

    config_class = KTOConfig
    signature_columns = KTO_COLUMNS
    reference_columns = ("ref_logps",)  # ref_KL_logps too when the loss uses z0

    # ---- set-up (ReferenceModelTrainer's hooks) -----------------------------------------------------------------

    def _load_model(self, name: str, args: KTOConfig, init_kwargs: dict | None = None) -> nn.Module:
        trust = {"trust_remote_code": True} if args.trust_remote_code else {}
        return load_model(name, model_init_kwargs={**(init_kwargs or args.model_init_kwargs or {}), **trust})

    def _load_reference(self, name: str, args: KTOConfig) -> nn.Module:
        return self._load_model(name, args, args.ref_model_init_kwargs)

    def _prepare_models(
        self, model: nn.Module, ref_model: nn.Module | str | None, args: KTOConfig, peft_config: Any
    ) -> nn.Module | None:
        # mismatched pairs are built per batch: training batches for the train set, eval batches for the others
        blocks = (args.per_device_train_batch_size, args.per_device_eval_batch_size)
        self._kl_blocks = blocks if args.uses_kl else (None, None)
        return super()._prepare_models(model, ref_model, args, peft_config)

    def _prepare_dataset(self, dataset: Any, processing_class: Any, what: str) -> Any:
        block = self._kl_blocks[0 if what == "train" else 1]
        dataset = prepare_kto_dataset(
            dataset, processing_class, **self._length_policy, kl_block=block, what=what
        )
        if getattr(self, "_reference_columns_needed", False):  # evaluate() / predict() after the precompute
            dataset = self._reference_columns_for_evaluation(dataset, what)
        return dataset

    def _default_collator(self, pad_token_id: int) -> Any:
        max_length = self._length_policy["max_length"]
        return UnpairedCollator(
            pad_token_id, max_length=max_length, pad_to_multiple_of=self._pad_to_multiple_of
        )

    def _finish_setup(self) -> None:
        if self.train_dataset is not None and hasattr(self.train_dataset, "column_names"):
            warn_on_class_imbalance(
                self.train_dataset["label"], self.args.desirable_weight, self.args.undesirable_weight
            )
        super()._finish_setup()

    # ---- log-probs ------------------------------------------------------------------------------------------

    def _sequence_logps(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
        layout = plan_layout(mask, self._cost_model(model))
        return completion_logprobs(
            model, ids, mask, labels, chunk_size=self.args.logprobs_chunk_size, layout=layout
        ).logps

    def _reference_forward(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reference log-probs `[B]` of the completions and `[B]` of the mismatched ones (None without them)."""
        ids, mask, labels = _with_mismatched_rows(inputs)
        with self._reference_model() as reference:
            logps = self._sequence_logps(reference, ids, mask, labels)
        n = inputs["input_ids"].shape[0]
        return logps[:n], (logps[n:] if logps.shape[0] > n else None)

    def _reference_logps(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "ref_logps" in inputs:
            return inputs["ref_logps"], inputs.get("ref_KL_logps")
        if self.args.precompute_ref_log_probs:
            raise ValueError(
                "precompute_ref_log_probs=True but this batch has no ref_logps: evaluate only datasets given to "
                "the constructor or to evaluate() before training (their reference log-probs are computed then)."
            )
        return self._reference_forward(inputs)

    # ---- precomputed reference ------------------------------------------------------------------------------

    def _precompute_and_release_reference(self) -> None:
        super()._precompute_and_release_reference()
        self._reference_columns_needed = True

    def _reference_scores(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logps, kl_logps = self._reference_forward(batch)
        return {"ref_logps": logps} if kl_logps is None else {"ref_logps": logps, "ref_KL_logps": kl_logps}

    def _reference_columns_for_evaluation(self, dataset: Any, what: str) -> Any:
        """A dataset given to evaluate() / predict() under precompute: scored now, if a reference still exists."""
        if dataset is None:
            return None
        peft_reference = carries_peft_adapter(self.model)
        if self.state.global_step > 0 and not peft_reference:
            raise ValueError(
                "precompute_ref_log_probs=True keeps no reference model, and after training the policy is no longer "
                "the reference: give this dataset as eval_dataset to the constructor, or evaluate it before training."
            )
        with eval_mode(self.model):
            return self._with_reference_columns(dataset, what)

    # ---- loss -----------------------------------------------------------------------------------------------

    def count_loss_units(self, batch: dict[str, Any]) -> int:
        """Examples in a collated batch."""
        return int(batch["input_ids"].shape[0])

    def pair_loss(self, model: nn.Module, inputs: dict[str, Any], divisor: Any) -> tuple[torch.Tensor, Any]:
        """The KTO loss summed over the batch's examples, divided by ``divisor`` (the accumulated examples)."""
        policy = self._sequence_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        reference, reference_kl = self._reference_logps(inputs)
        z0 = self._reference_point(model, inputs, reference_kl, like=policy)
        desirable = inputs["label"].to(policy.device)
        out = kto_loss(
            policy,
            reference.to(policy.device),
            desirable,
            z0=z0,
            beta=self.args.beta,
            desirable_weight=self.args.desirable_weight,
            undesirable_weight=self.args.undesirable_weight,
            loss_type=self.args.loss_type,
        )
        self._record(out, policy, desirable)
        return out.losses.sum() / divisor, out

    def _reference_point(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        reference_kl: torch.Tensor | None,
        *,
        like: torch.Tensor,
    ) -> torch.Tensor:
        """z0 from this batch's mismatched pairs, summed over every process (0 for losses without it)."""
        if not self.args.uses_kl:
            return torch.zeros((), dtype=like.dtype, device=like.device)
        if reference_kl is None or "KL_input_ids" not in inputs:
            raise ValueError(
                "loss_type needs mismatched completions (KL_completion_ids), absent from this batch"
            )
        with torch.no_grad():
            policy_kl = self._sequence_logps(
                model, inputs["KL_input_ids"], inputs["KL_attention_mask"], inputs["KL_labels"]
            )
        count = torch.tensor(float(policy_kl.shape[0]), device=policy_kl.device)
        stats = torch.stack([(policy_kl - reference_kl.to(policy_kl)).sum(), count])
        if self.args.world_size > 1:
            stats = self.accelerator.gather(stats.to(self.accelerator.device)).reshape(-1, 2).sum(0)
        return kto_reference_point(stats[0], stats[1]).to(like.device)

    def _record(self, out: Any, policy: torch.Tensor, desirable: torch.Tensor) -> None:
        self.record_metric("kl", float(out.z0))
        self.record_metric("rewards/chosen", out.rewards[desirable])
        self.record_metric("rewards/rejected", out.rewards[~desirable])
        self.record_metric("logps/chosen", policy.detach()[desirable])
        self.record_metric("logps/rejected", policy.detach()[~desirable])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        metrics = self._metrics[mode]
        if metrics.get("rewards/chosen") and metrics.get("rewards/rejected"):
            chosen, rejected = metrics["rewards/chosen"], metrics["rewards/rejected"]
            metrics["rewards/margins"] = [sum(chosen) / len(chosen) - sum(rejected) / len(rejected)]
        super().log(logs, start_time)

    # ---- prediction -----------------------------------------------------------------------------------------

    def pair_scores(self, outputs: Any) -> torch.Tensor:
        """``[B]`` implied rewards, one per example (`predict()` returns them as predictions)."""
        return outputs.rewards

    def prediction_labels(self, inputs: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        """The examples' labels (1 = desirable)."""
        return inputs["label"].long()


def _with_mismatched_rows(inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's rows followed by its mismatched rows (when present), right padded to one width."""
    parts = [(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])]
    if "KL_input_ids" in inputs:
        parts.append((inputs["KL_input_ids"], inputs["KL_attention_mask"], inputs["KL_labels"]))
    width = max(p[0].shape[1] for p in parts)

    def widen(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[1]), value=value)

    # the id under a padded position is never attended to nor scored
    return (
        torch.cat([widen(p[0], 0) for p in parts]),
        torch.cat([widen(p[1], 0) for p in parts]),
        torch.cat([widen(p[2], IGNORE_INDEX) for p in parts]),
    )
