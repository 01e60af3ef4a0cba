"""The reference of the preference trainers: a PEFT policy with its adapters off, or log-probs computed once.

Reference log-probs computed once, before DPO training, are stored as dataset columns.

With the reference log-probs in the dataset no reference model has to stay in memory while training (the memory
of a second model, trl#2423): the pass runs under `torch.no_grad` in eval batches, with a progress bar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rlhf_core.trainers.model_setup import is_peft_model
from rlhf_core.trainers.preference.data import PAIR_COLUMNS, REFERENCE_COLUMNS
from rlhf_core.trainers.preference.logprobs import SequenceLogProbs

__all__ = ["precompute_reference_logps", "reference_adapter_disabled"]


def precompute_reference_logps(
    dataset: Any,
    score_batch: Callable[[dict[str, Any]], SequenceLogProbs],
    *,
    collator: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    device: torch.device | str,
    what: str = "train",
    show_progress: bool = True,
) -> Any:
    """Return `dataset` with float columns ``ref_chosen_logps`` and ``ref_rejected_logps``.

    `score_batch` maps a collated batch (chosen rows then rejected rows, on `device`) to the reference
    `SequenceLogProbs` of its `2B` rows. A dataset that already has both columns is returned unchanged.
    """
    if dataset is None:
        return None
    if all(name in dataset.column_names for name in REFERENCE_COLUMNS):
        return dataset
    columns = [
        name for name in PAIR_COLUMNS if name in dataset.column_names and name not in REFERENCE_COLUMNS
    ]
    loader = DataLoader(
        dataset.select_columns(columns), batch_size=batch_size, shuffle=False, collate_fn=collator
    )
    chosen: list[float] = []
    rejected: list[float] = []
    for batch in tqdm(loader, desc=f"Reference log-probs ({what})", disable=not show_progress):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            logps = score_batch(batch).logps.float()
        batch_chosen, batch_rejected = logps.chunk(2)
        chosen.extend(batch_chosen.tolist())
        rejected.extend(batch_rejected.tolist())
    dataset = dataset.add_column(REFERENCE_COLUMNS[0], chosen)
    return dataset.add_column(REFERENCE_COLUMNS[1], rejected)


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
