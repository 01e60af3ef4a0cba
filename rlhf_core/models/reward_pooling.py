"""Where a reward model reads its score: one rule for every batch layout, the rule of the saved model itself.

transformers' causal-LM sequence classifiers score a row at its rightmost token whose id is not
``config.pad_token_id``. When the pad token is the eos token (GPT-2, Llama, Mistral, and what the trainers set for
a tokenizer without a pad), that skips the final eos, so plain inference of a saved reward model reads the token
before it. Every path here that scores a sequence (padded, padding-free and PPO batches) uses that same position,
computed by `score_positions` from the ids and the attention mask (so the padding side, and what the padding ids
are, does not matter), and therefore agrees with ``AutoModelForSequenceClassification`` on the unpadded text.

Encoders (BERT, ModernBERT) pool their first token (``[CLS]``) and use absolute or rotary positions from 0: they
must see right-padded rows, which `right_padded` makes from any layout.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["pad_token_id_of", "right_padded", "score_positions"]


def pad_token_id_of(model: nn.Module) -> int | None:
    """``config.pad_token_id`` of ``model`` (through DDP/accelerate/PEFT wrappers and composite configs)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return getattr(config, "pad_token_id", None)


def score_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None
) -> torch.Tensor:
    """[B, T] -> [B]: each row's rightmost attended position whose id is not ``pad_token_id``.

    That is transformers' pooling position for the unpadded row. A row with no such token gets 0, as in
    transformers (``argmax`` of all zeros).
    """
    keep = attention_mask.bool()
    if pad_token_id is not None:
        keep = keep & (input_ids != pad_token_id)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * keep.long()).argmax(-1)


def right_padded(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attended tokens of each row moved to its start, in order, padding after them: ([B, T'], [B, T'])
    with T' the longest row (left padding, or the gap between a left-padded prompt and its response, removed)."""
    mask = attention_mask.bool()
    # A stable sort on "not attended" keeps the attended tokens in order and moves them first.
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    width = max(int(mask.sum(-1).max()), 1)
    ids = input_ids.gather(1, order)[:, :width]
    new_mask = mask.gather(1, order)[:, :width]
    return ids.masked_fill(~new_mask, pad_token_id), new_mask.long()
