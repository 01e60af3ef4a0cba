"""The pad-token policy, one rule for every trainer, loader and collator (TRL's).

The tokenizer's own pad token when it has one; otherwise its eos token, said in a log line; with neither, a
clear error. Padding with eos is safe here because every batch carries an attention mask and collators pad by
length: no code path infers padding from token ids (reward pooling reads its position from the mask, see
``rlhf_core.models.reward_pooling``).

``resolve_pad_token_id`` applies the rule without touching the tokenizer (a collator's pad id);
``ensure_pad_token`` applies it to the tokenizer (and to the model config, which sequence classifiers read).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

__all__ = ["ensure_pad_token", "resolve_pad_token_id"]

logger = logging.getLogger(__name__)


def resolve_pad_token_id(tokenizer: Any) -> int:
    """The pad id by the rule above; the tokenizer is left as it is."""
    if tokenizer is None:
        raise ValueError("A tokenizer is required (processing_class= or tokenizer=) to pad batches.")
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"The tokenizer {type(tokenizer).__name__} has neither a pad token nor an eos token: set "
            "tokenizer.pad_token first (and resize the model's embeddings if you add a new token)."
        )
    logger.warning(
        "The tokenizer %s has no pad token: padding with its eos token %r (id %d).",
        type(tokenizer).__name__,
        tokenizer.eos_token,
        tokenizer.eos_token_id,
    )
    return int(tokenizer.eos_token_id)


def ensure_pad_token(tokenizer: Any, model: nn.Module | None = None) -> int:
    """Give the tokenizer a pad token by the rule and copy its id to ``model.config`` when unset; returns the id.

    An encoder tokenizer (BERT family) has a pad token but no eos: that is fine.
    """
    pad_id = resolve_pad_token_id(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        # Sequence classifiers find each row's last real token through config.pad_token_id.
        config.pad_token_id = pad_id
    return pad_id
