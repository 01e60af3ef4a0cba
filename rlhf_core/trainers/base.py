"""The trainer base shared by SFTTrainer, RewardTrainer, DPOTrainer and PPOTrainer.

`TokenNormalisedTrainer` is a `transformers.Trainer` with three additions:

1. **Loss normalised over the whole accumulated batch.** Subclasses implement ``count_loss_units(batch)`` (loss
   tokens for SFT, pairs for DPO/reward) and return from ``compute_loss`` the *summed* loss divided by the
   ``num_items_in_batch`` they receive. The base computes that number once per optimizer step over every
   micro-batch of the accumulation window (and over every process under DDP), so ``per_device_train_batch_size=8,
   gradient_accumulation_steps=1`` and ``1, 8`` give the same loss and the same update (transformers#35856,
   trl#2175). Under DDP with ``average_tokens_across_devices=True`` (the default) ``num_items_in_batch`` is the
   global count divided by the number of processes, because DDP averages the per-process gradients.
2. **A non-finite guard.** A NaN/inf loss or gradient norm raises `NonFiniteLossError` before the optimizer step,
   naming the global step, the micro-batch and the training rows involved. Nothing is saved after the bad step, so
   the last checkpoint on disk is the last good one (the message gives its path).
3. **TRL-style constructor helpers**: ``tokenizer=`` as an alias of ``processing_class=``, the model as an object
   or a name/path (``"rlhf-tiny"`` included), LoRA through ``peft_config``; and a per-step metric buffer
   (`record_metric`) whose averages are merged into every ``Trainer.log`` call, so callbacks (MLflow's) see them.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, NoReturn

import torch
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from rlhf_core.trainers.batch_tracking import (
    ROW_ID_COLUMN,
    ROW_IDS_KEY,
    RowIdCollator,
    describe_rows,
    with_row_ids,
)
from rlhf_core.trainers.model_setup import (
    apply_peft,
    is_model_name,
    load_model,
    load_processing_class,
    resolve_processing_class_alias,
)

__all__ = ["NonFiniteLossError", "TokenNormalisedTrainer", "last_checkpoint", "raise_nonfinite"]


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss or the gradient norm became NaN or infinite.

    Attributes: ``what`` ("loss" or "gradient norm"), ``value``, ``global_step`` (the optimizer step that was being
    computed, 1-based), ``micro_batch`` (1-based index in the accumulation window, None for a gradient),
    ``row_ids`` (training-set rows involved, when known), ``last_checkpoint`` (path or None).
    """

    def __init__(
        self,
        message: str,
        *,
        what: str,
        value: float,
        global_step: int,
        micro_batch: int | None,
        row_ids: list[int] | None,
        last_checkpoint: str | None,
    ) -> None:
        super().__init__(message)
        self.what = what
        self.value = value
        self.global_step = global_step
        self.micro_batch = micro_batch
        self.row_ids = row_ids
        self.last_checkpoint = last_checkpoint


class TokenNormalisedTrainer(Trainer):
    """`transformers.Trainer` whose subclasses normalise the summed loss by the accumulated batch's loss units.

    Subclasses implement `count_loss_units` and, in ``compute_loss``, return ``summed_loss / num_items_in_batch``
    (use `loss_divisor` to get that divisor also when ``num_items_in_batch`` is None, e.g. at evaluation).
    """

    # compute_loss already returns the loss normalised over the whole accumulation window.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: Any = None,
        args: Any = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        tokenizer: Any = None,
        peft_config: Any = None,
        model_init_kwargs: dict[str, Any] | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        processing_class = resolve_processing_class_alias(processing_class, tokenizer)
        if model is not None:
            if is_model_name(model) and processing_class is None:
                processing_class = load_processing_class(model)
            model = load_model(model, model_init_kwargs=model_init_kwargs)
            gradient_checkpointing = bool(getattr(args, "gradient_checkpointing", False))
            model = apply_peft(model, peft_config, gradient_checkpointing=gradient_checkpointing)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **trainer_kwargs,
        )
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._micro_batch_rows: list[list[int] | None] = []
        self._micro_batch_index = -1

    # ---- what subclasses provide -------------------------------------------------------------------------------

    def count_loss_units(self, batch: Mapping[str, Any]) -> int | torch.Tensor:
        """Number of loss units (tokens, pairs, ...) in one collated micro-batch. Subclasses must implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement count_loss_units(batch) (loss tokens for SFT, pairs for DPO)."
        )

    def loss_divisor(self, batch: Mapping[str, Any], num_items_in_batch: Any) -> torch.Tensor | float:
        """``num_items_in_batch`` when the training loop gave it, else this batch's own count (at least 1)."""
        if num_items_in_batch is not None:
            return num_items_in_batch
        return max(float(self.count_loss_units(batch)), 1.0)

    # ---- loss normalisation over the accumulation window (and processes) -------------------------------------

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        if not batch_samples:
            return None
        local = sum(torch.as_tensor(self.count_loss_units(b)).to(torch.float32).cpu() for b in batch_samples)
        total = torch.as_tensor(local, dtype=torch.float32, device=device).reshape(1)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            # Each process divides its summed loss by global / world_size; DDP's mean of the gradients then
            # normalises by the global count exactly.
            total = self.accelerator.gather(total).sum() / self.args.world_size
        # A window with no loss unit (e.g. every completion truncated away) has a zero summed loss: divide by 1.
        return total.reshape(()).clamp(min=1.0)

    # ---- metrics ----------------------------------------------------------------------------------------------

    def record_metric(self, name: str, value: float | torch.Tensor, *, mode: str | None = None) -> None:
        """Buffer a metric of this micro-batch; the mean over the logging interval joins the next ``log`` call.

        A tensor counts as the per-item values (tokens, pairs) of this micro-batch: their mean over every process is
        recorded (nothing when there are none). Under DDP every process must call this for the same micro-batches.
        """
        if mode is None:
            mode = "train" if self.model.training else "eval"
        if torch.is_tensor(value):
            flat = value.detach().float().reshape(-1)
            sum_count = torch.stack([flat.sum(), torch.tensor(float(flat.numel()), device=flat.device)])
            if self.args.world_size > 1:
                sum_count = (
                    self.accelerator.gather(sum_count.to(self.accelerator.device)).reshape(-1, 2).sum(0)
                )
            total, count = sum_count.tolist()
            if count == 0:
                return
            value = total / count
        self._metrics[mode][name].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self._metrics[mode].items():
            if values:
                logs[f"{prefix}{name}"] = sum(values) / len(values)
        self._metrics[mode].clear()
        logs.update(self.extra_log_values(mode))
        super().log(logs, start_time)

    def extra_log_values(self, mode: str) -> dict[str, float]:
        """Values that are not averages (e.g. a cumulative token count); subclasses override."""
        return {}

    # ---- batch tracking for error messages --------------------------------------------------------------------

    def get_train_dataloader(self) -> Any:
        dataset, collator = self.train_dataset, self.data_collator
        self.train_dataset = with_row_ids(dataset)
        self.data_collator = RowIdCollator(collator)
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset, self.data_collator = dataset, collator

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if ROW_ID_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, ROW_ID_COLUMN]

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._micro_batch_rows = [_pop_row_ids(batch) for batch in batch_samples]
        self._micro_batch_index = -1
        return batch_samples, num_items_in_batch

    # ---- non-finite guard -------------------------------------------------------------------------------------

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        self._micro_batch_index += 1
        _pop_row_ids(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):
            self._stop_nonfinite("loss", float(loss.float().mean()), micro_batch=self._micro_batch_index)
        return loss

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            self._stop_nonfinite("gradient norm", float(grad_norm), micro_batch=None)
        return grad_norm

    def prediction_step(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any):
        _pop_row_ids(inputs)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def _stop_nonfinite(self, what: str, value: float, *, micro_batch: int | None) -> None:
        step = self.state.global_step + 1
        n_micro = len(self._micro_batch_rows)
        if micro_batch is not None:
            rows = self._micro_batch_rows[micro_batch] if micro_batch < n_micro else None
            where = f"micro-batch {micro_batch + 1} of {max(n_micro, 1)} in this step, {describe_rows(rows)}"
        else:
            known = [r for rows in self._micro_batch_rows if rows for r in rows]
            rows = known or None
            where = f"the {max(n_micro, 1)} micro-batch(es) of this step, {describe_rows(rows)}"
        where = f"global step {step} ({where} of the training set)"
        causes = "a learning rate too high, fp16 overflow, or a corrupted row"
        raise_nonfinite(self, what, value, micro_batch=micro_batch, row_ids=rows, where=where, causes=causes)


def raise_nonfinite(
    trainer: Trainer,
    what: str,
    value: float,
    *,
    micro_batch: int | None,
    row_ids: list[int] | None,
    where: str,
    causes: str,
    label: str = "",
) -> NoReturn:
    """Drop the gradients of ``trainer.model`` and raise `NonFiniteLossError` for the optimizer step being computed.

    `micro_batch` is 0-based (None: the gradient norm); `where` and `causes` complete the message, `label` prefixes
    `what` there.
    """
    step = trainer.state.global_step + 1
    last = last_checkpoint(trainer.args.output_dir)
    # Drop the poisoned gradients so the in-memory model can still be used or saved as it was.
    trainer.model.zero_grad(set_to_none=True)
    raise NonFiniteLossError(
        f"Non-finite {label}{what} ({value}) at {where}. Training stopped before the optimizer step, so the weights "
        f"were not updated and no checkpoint was written after it; last good checkpoint: "
        f"{last or 'none saved yet'}. Usual causes: {causes}.",
        what=what,
        value=value,
        global_step=step,
        micro_batch=None if micro_batch is None else micro_batch + 1,
        row_ids=row_ids,
        last_checkpoint=last,
    )


def _pop_row_ids(batch: Any) -> list[int] | None:
    if isinstance(batch, dict) and ROW_IDS_KEY in batch:
        return [int(i) for i in batch.pop(ROW_IDS_KEY).tolist()]
    return None


def last_checkpoint(output_dir: str | None) -> str | None:
    """The newest ``checkpoint-*`` folder in ``output_dir``, or None (no folder, or none saved yet)."""
    if not output_dir or not os.path.isdir(output_dir):
        return None
    return get_last_checkpoint(output_dir)
