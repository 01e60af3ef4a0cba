"""The reference of the preference trainers (DPO, KTO), set up once for both.

`ReferenceModelTrainer` is the `PairwiseTrainer` both build on: TRL's constructor with ``ref_model`` second, and a
reference that is one of

- the given model (an object, or a name/path loaded here), frozen;
- with ``ref_model=None``, a frozen in-memory copy of the initial policy (`initial_reference`);
- for a PEFT policy, the policy with its adapters off (`reference_adapter_disabled`): no second model at all;
- with ``precompute_ref_log_probs=True``, nothing while training: the reference log-probs are computed once before
  training, under `torch.no_grad` in eval batches with a progress bar, and stored as dataset columns
  (`precompute_reference_columns`), so no reference model has to stay in memory (the memory of a second model,
  trl#2423).

TR-DPO synchronisation (``sync_ref_model``, `ref_sync`) applies to whichever trainer holds a separate reference.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, TrainingArguments

from rlhf_core.models.module_state import eval_mode, freeze
from rlhf_core.models.reference import create_reference_model as frozen_copy
from rlhf_core.trainers.model_setup import is_peft_model, load_model, unwrap_model
from rlhf_core.trainers.padding_free import padding_free_cost_model
from rlhf_core.trainers.preference.pairwise import PairwiseTrainer
from rlhf_core.trainers.preference.ref_sync import SyncReferenceCallback, check_reference_sync

__all__ = [
    "ReferenceModelTrainer",
    "carries_peft_adapter",
    "initial_reference",
    "precompute_reference_columns",
    "reference_adapter_disabled",
]


def carries_peft_adapter(model: nn.Module) -> bool:
    """Whether `model` is a PEFT model or wraps one (DDP's ``.module``, possibly nested)."""
    if is_peft_model(model):
        return True
    inner = getattr(model, "module", None)
    return isinstance(inner, nn.Module) and carries_peft_adapter(inner)


def initial_reference(
    model: nn.Module, ref_model: nn.Module | None, args: Any, peft_config: Any
) -> nn.Module | None:
    """The reference model to hold, fixed before any update and before PEFT wraps the policy.

    None when the policy itself serves (adapter disabled for a PEFT policy; the one precompute pass)."""
    peft_reference = is_peft_model(model) or peft_config is not None
    if ref_model is None and not peft_reference and not args.precompute_ref_log_probs:
        ref_model = frozen_copy(model)
    return freeze(ref_model)


@contextlib.contextmanager
def reference_adapter_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `model` (a PEFT model, possibly wrapped) runs as its base model without adapters."""
    peft_model = model
    while not is_peft_model(peft_model) and isinstance(getattr(peft_model, "module", None), nn.Module):
        peft_model = peft_model.module
    if not is_peft_model(peft_model):
        raise TypeError(f"{type(model).__name__} carries no PEFT adapter to disable")
    with peft_model.disable_adapter():
        yield model


def precompute_reference_columns(
    dataset: Any,
    score_batch: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
    *,
    input_columns: Sequence[str],
    output_columns: Sequence[str],
    collator: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    device: torch.device | str,
    what: str = "train",
    show_progress: bool = True,
) -> Any:
    """Return `dataset` with float columns of reference log-probs, from one no-grad pass in batches.

    `score_batch` maps a collated batch (on `device`) of N dataset rows to ``{column: [N] tensor}``. Every name of
    `output_columns` becomes a column (empty for an empty dataset), and so does any other name it returns.
    Of the dataset only `input_columns` (those it has) are collated.
    """
    columns = [name for name in input_columns if name in dataset.column_names]
    loader = DataLoader(
        dataset.select_columns(columns), batch_size=batch_size, shuffle=False, collate_fn=collator
    )
    values: dict[str, list[float]] = {name: [] for name in output_columns}
    for batch in tqdm(loader, desc=f"Reference log-probs ({what})", disable=not show_progress):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            scores = score_batch(batch)
        for name, logps in scores.items():
            values.setdefault(name, []).extend(logps.float().tolist())
    for name, column in values.items():
        dataset = dataset.add_column(name, column)
    return dataset


class ReferenceModelTrainer(PairwiseTrainer):
    """A `PairwiseTrainer` scored against a reference (see the module doc): DPOTrainer and KTOTrainer.

    A subclass sets ``reference_columns`` (the columns of the precompute pass; a dataset that has them all is
    already scored, and they are never collated as its input) and implements ``_reference_scores``.
    """

    reference_columns: tuple[str, ...] = ()

    def __init__(
        self,
        model: nn.Module | str | None = None,
        ref_model: nn.Module | str | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable[[list[Any]], dict[str, Any]] | None = None,
        train_dataset: Dataset | Sequence[Mapping[str, Any]] | None = None,
        eval_dataset: Dataset | Mapping[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        peft_config: Any = None,
        quantization_config: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        """TRL's order, ``ref_model`` second. ``quantization_config`` is in TRL's signature; only None is accepted
        (no quantised loading here)."""
        if quantization_config is not None:
            raise NotImplementedError(
                f"{type(self).__name__}(quantization_config=...) is not implemented: load the quantised model "
                "yourself"
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

    def _prepare_models(
        self, model: nn.Module, ref_model: nn.Module | str | None, args: Any, peft_config: Any
    ) -> nn.Module | None:
        if isinstance(ref_model, str):
            ref_model = self._load_reference(ref_model, args)
        if ref_model is not None and ref_model is model:
            raise ValueError("ref_model is the policy object itself: pass ref_model=None for a frozen copy.")
        return initial_reference(model, ref_model, args, peft_config)

    def _load_reference(self, name: str, args: Any) -> nn.Module:
        """The reference model from a name/path."""
        return load_model(name, model_init_kwargs=args.ref_model_init_kwargs)

    def _finish_setup(self) -> None:
        self._cost_models: dict[int, Any] = {}
        if self.args.precompute_ref_log_probs:
            self._precompute_and_release_reference()
        elif self.ref_model is not None:
            self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
        if self.args.sync_ref_model:  # TR-DPO (ref_sync.py)
            check_reference_sync(self.args, self.ref_model)
            self.add_callback(SyncReferenceCallback(self.ref_model, self.accelerator))

    def _cost_model(self, model: nn.Module) -> Any:
        """Padding-free cost model of `model` (policy or reference), checked once per model."""
        key = id(unwrap_model(model))
        if key not in self._cost_models:
            self._cost_models[key] = padding_free_cost_model(model, self.args.padding_free)
        return self._cost_models[key]

    # ---- the reference pass ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reference_model(self) -> Iterator[nn.Module]:
        """Under `torch.no_grad`, the module that scores as the reference: the reference model, else the policy with
        its adapter disabled (PEFT), else the policy itself (before any update it is the reference: the one
        precompute pass with ``ref_model=None``)."""
        with torch.no_grad():
            if self.ref_model is not None:
                yield self.ref_model
            elif carries_peft_adapter(self.model):
                with reference_adapter_disabled(self.model):
                    yield self.model
            else:
                yield self.model

    def _reference_scores(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{column: [N]}`` reference log-probs of a collated batch of N dataset rows (the precompute pass)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _reference_scores(batch)")

    def _precompute_and_release_reference(self) -> None:
        """One no-grad pass over the train/eval data; the log-probs become dataset columns, the model is freed."""
        if self.ref_model is not None:
            self.ref_model = self.ref_model.to(self.args.device)
        with eval_mode(self.model):
            self.train_dataset = self._with_reference_columns(self.train_dataset, "train")
            self.eval_dataset = self._with_reference_columns(self.eval_dataset, "eval")
        # Keep no reference model: drop our handle (the caller's own variable, if any, is theirs).
        self.ref_model = None
        gc.collect()

    def _with_reference_columns(self, dataset: Any, what: str) -> Any:
        """`dataset` (or each of a dict of them) with the reference columns, computed unless it has them."""
        if isinstance(dataset, dict):
            return {k: self._with_reference_columns(v, f"{what}[{k}]") for k, v in dataset.items()}
        if dataset is None or all(name in dataset.column_names for name in self.reference_columns):
            return dataset
        return precompute_reference_columns(
            dataset,
            self._reference_scores,
            input_columns=[c for c in self.signature_columns if c not in self.reference_columns],
            output_columns=self.reference_columns,
            collator=self.data_collator,
            batch_size=self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size,
            device=self.args.device,
            what=what,
            show_progress=not self.args.disable_tqdm,
        )
