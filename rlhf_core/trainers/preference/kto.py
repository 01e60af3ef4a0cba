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

import gc
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rlhf_core.data.collators import IGNORE_INDEX
from rlhf_core.losses.kto import kto_loss, kto_reference_point
from rlhf_core.models.module_state import eval_mode
from rlhf_core.trainers.model_setup import is_peft_model, load_model, unwrap_model
from rlhf_core.trainers.padding_free import padding_free_cost_model, plan_layout
from rlhf_core.trainers.preference.dpo import _initial_reference, _wraps_peft
from rlhf_core.trainers.preference.kto_config import KTOConfig
from rlhf_core.trainers.preference.kto_data import (
    KTO_COLUMNS,
    UnpairedCollator,
    prepare_kto_dataset,
    warn_on_class_imbalance,
)
from rlhf_core.trainers.preference.logprobs import completion_logprobs
from rlhf_core.trainers.preference.pairwise import PairwiseTrainer
from rlhf_core.trainers.preference.ref_sync import SyncReferenceCallback, check_reference_sync
from rlhf_core.trainers.preference.reference import reference_adapter_disabled

__all__ = ["KTOTrainer"]


class KTOTrainer(PairwiseTrainer):
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

    def __init__(
        self,
        model: nn.Module | str | None = None,
        ref_model: nn.Module | str | None = None,
        args: KTOConfig | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        tokenizer: Any = None,
        peft_config: Any = None,
        quantization_config: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        if quantization_config is not None:
            raise NotImplementedError(
                "KTOTrainer(quantization_config=...) is not implemented: load the quantised model yourself"
            )
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

    # ---- set-up (PairwiseTrainer's hooks) -------------------------------------------------------------------

    def _load_model(self, name: str, args: KTOConfig, init_kwargs: dict | None = None) -> nn.Module:
        trust = {"trust_remote_code": True} if args.trust_remote_code else {}
        return load_model(name, model_init_kwargs={**(init_kwargs or args.model_init_kwargs or {}), **trust})

    def _prepare_models(
        self, model: nn.Module, ref_model: nn.Module | str | None, args: KTOConfig, peft_config: Any
    ) -> nn.Module | None:
        if isinstance(ref_model, str):
            ref_model = self._load_model(ref_model, args, args.ref_model_init_kwargs)
        if ref_model is not None and ref_model is model:
            raise ValueError("ref_model is the policy object itself: pass ref_model=None for a frozen copy.")
        # mismatched pairs are built per batch: training batches for the train set, eval batches for the others
        blocks = (args.per_device_train_batch_size, args.per_device_eval_batch_size)
        self._kl_blocks = blocks if args.uses_kl else (None, None)
        return _initial_reference(model, ref_model, args, peft_config)

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
        self._cost_models: dict[int, Any] = {}
        if self.train_dataset is not None and hasattr(self.train_dataset, "column_names"):
            warn_on_class_imbalance(
                self.train_dataset["label"], self.args.desirable_weight, self.args.undesirable_weight
            )
        if self.args.precompute_ref_log_probs:
            self._precompute_and_release_reference()
            self._reference_columns_needed = True
        elif self.ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
        if self.args.sync_ref_model:  # TR-DPO's soft reference updates apply to KTO's reference as well
            check_reference_sync(self.args, self.ref_model)
            self.add_callback(SyncReferenceCallback(self.ref_model, self.accelerator))

    # ---- log-probs ------------------------------------------------------------------------------------------

    def _sequence_logps(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
        layout = plan_layout(mask, self._cost_model(model))
        return completion_logprobs(
            model, ids, mask, labels, chunk_size=self.args.logprobs_chunk_size, layout=layout
        ).logps

    def _cost_model(self, model: nn.Module) -> Any:
        key = id(unwrap_model(model))
        if key not in self._cost_models:
            self._cost_models[key] = padding_free_cost_model(model, self.args.padding_free)
        return self._cost_models[key]

    def _reference_forward(
        self, inputs: dict[str, Any], reference: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reference log-probs `[B]` of the completions and `[B]` of the mismatched ones (None without them).

        `reference` None: the policy (adapter disabled for PEFT; before any update it is the reference)."""
        ids, mask, labels = _with_mismatched_rows(inputs)
        with torch.no_grad():
            if reference is not None:
                logps = self._sequence_logps(reference, ids, mask, labels)
            elif is_peft_model(self.model) or _wraps_peft(self.model):
                with reference_adapter_disabled(self.model):
                    logps = self._sequence_logps(self.model, ids, mask, labels)
            else:
                logps = self._sequence_logps(self.model, ids, mask, labels)
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
        return self._reference_forward(inputs, self.ref_model)

    # ---- precomputed reference ------------------------------------------------------------------------------

    def _precompute_and_release_reference(self) -> None:
        """One no-grad pass over the train/eval examples; the log-probs become dataset columns, the model is freed."""
        if self.ref_model is not None:
            self.ref_model = self.ref_model.to(self.args.device)
        with eval_mode(self.model):
            self.train_dataset = self._with_reference_columns(self.train_dataset, "train")
            self.eval_dataset = self._with_reference_columns(self.eval_dataset, "eval")
        # Keep no reference model: drop our handle (the caller's own variable, if any, is theirs).
        self.ref_model = None
        gc.collect()

    def _reference_columns_for_evaluation(self, dataset: Any, what: str) -> Any:
        """A dataset given to evaluate() / predict() under precompute: scored now, if a reference still exists."""
        if dataset is None:
            return None
        peft_reference = is_peft_model(self.model) or _wraps_peft(self.model)
        if self.state.global_step > 0 and not peft_reference:
            raise ValueError(
                "precompute_ref_log_probs=True keeps no reference model, and after training the policy is no longer "
                "the reference: give this dataset as eval_dataset to the constructor, or evaluate it before training."
            )
        with eval_mode(self.model):
            return self._with_reference_columns(dataset, what)

    def _with_reference_columns(self, dataset: Any, what: str) -> Any:
        if dataset is None or (hasattr(dataset, "column_names") and "ref_logps" in dataset.column_names):
            return dataset
        if isinstance(dataset, dict):
            return {k: self._with_reference_columns(v, f"{what}[{k}]") for k, v in dataset.items()}
        columns = [c for c in KTO_COLUMNS if c in dataset.column_names]
        batch_size = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size
        loader = DataLoader(
            dataset.select_columns(columns), batch_size=batch_size, collate_fn=self.data_collator
        )
        main: list[float] = []
        mismatched: list[float] = []
        for batch in tqdm(loader, desc=f"Reference log-probs ({what})", disable=self.args.disable_tqdm):
            batch = {k: v.to(self.args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logps, kl_logps = self._reference_forward(batch, self.ref_model)
            main.extend(logps.float().tolist())
            if kl_logps is not None:
                mismatched.extend(kl_logps.float().tolist())
        dataset = dataset.add_column("ref_logps", main)
        return dataset.add_column("ref_KL_logps", mismatched) if mismatched else dataset

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
