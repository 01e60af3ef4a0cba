"""Model set-up shared by the reward and DPO trainers: pad tokens, dropout, the DPO reference model."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any

from torch import nn

from rlhf_core.trainers.model_setup import is_peft_model

__all__ = [
    "disable_dropout",
    "ensure_pad_token",
    "frozen_copy",
    "reference_adapter_disabled",
    "unwrap_model",
]

logger = logging.getLogger(__name__)


def ensure_pad_token(tokenizer: Any, model: nn.Module | None = None) -> int:
    """Give the tokenizer a pad token (its eos when missing) and copy its id to the model config when unset.

    Returns the pad token id. An encoder tokenizer (BERT family) has a pad token but no eos: that is fine here.
    """
    if tokenizer is None:
        raise ValueError("A tokenizer is required (processing_class= or tokenizer=) to pad preference pairs.")
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"The tokenizer {type(tokenizer).__name__} has neither a pad token nor an eos token: set "
                "tokenizer.pad_token before training."
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.info(
            "The tokenizer had no pad token: using its eos token %r for padding.", tokenizer.eos_token
        )
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        # Sequence classifiers find each row's last real token through config.pad_token_id.
        config.pad_token_id = tokenizer.pad_token_id
    return int(tokenizer.pad_token_id)


def disable_dropout(model: nn.Module) -> None:
    """Set every `nn.Dropout` probability to 0 (chosen and rejected are scored without noise)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def frozen_copy(model: nn.Module) -> nn.Module:
    """An independent, frozen, eval-mode copy of `model` (works for models built in memory: nothing is reloaded)."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The `PreTrainedModel` inside DDP / accelerate / PEFT wrappers (PEFT's LoRA layers stay in place)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model
