"""Scoring finished responses: a reward model (score at the last non-pad token) or a Python reward function."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rlhf_core.models.reward_pooling import pad_token_id_of, right_padded, score_positions
from rlhf_core.models.value_head import backbone
from rlhf_core.rollout.generation import position_ids_from_mask
from rlhf_core.rollout.logprobs import ResponseBatch

__all__ = ["RewardFn", "last_token_index", "reward_function_scores", "reward_model_scores", "score_head_of"]

RewardFn = Callable[[Sequence[Any], Sequence[str]], Sequence[float]]

# Heads applied to each position's hidden state. Encoder classifiers (BERT's `classifier`) read a pooled
# first token instead, so they are called whole.
_HEAD_NAMES = ("v_head", "score")


def score_head_of(model: nn.Module) -> nn.Module | None:
    """The per-position scalar head of a reward/value model (``score`` for transformers' causal-LM sequence
    classifiers, ``v_head`` for a value-head model), or None when it has none we can apply per position."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in _HEAD_NAMES:
        head = getattr(inner, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row: [B, T] -> [B] (works with left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def _head_scores(hidden: torch.Tensor, head: nn.Module) -> torch.Tensor:
    out = head(hidden)
    return out.squeeze(-1) if out.dim() == hidden.dim() else out


@torch.no_grad()
def reward_model_scores(
    reward_model: nn.Module, batch: ResponseBatch, *, micro_batch_size: int = 16
) -> torch.Tensor:
    """Scalar score [B] of each prompt + response: what the saved reward model gives on that text unpadded.

    ``reward_model``: an ``AutoModelForSequenceClassification`` with one label (or a value-head model). A causal
    backbone runs on the whole sequence and its score head is applied at `score_positions` (transformers'
    pooling position: the last token that is not the pad id, whatever the padding side). A model whose head
    cannot be applied per position (an encoder such as BERT, which pools ``[CLS]``) is called whole on the
    sequence re-laid as right-padded rows, so its first token is the text's first token.
    """
    head = score_head_of(reward_model)
    pad_id = pad_token_id_of(reward_model)
    scores = []
    for start in range(0, len(batch), micro_batch_size):
        part, _ = batch.select(slice(start, start + micro_batch_size)).trimmed()
        input_ids = torch.cat([part.prompt_ids, part.response_ids], dim=1)
        mask = torch.cat([part.prompt_mask, part.response_mask], dim=1)
        if head is None:
            ids, right_mask = right_padded(input_ids, mask, 0 if pad_id is None else pad_id)
            logits = reward_model(input_ids=ids, attention_mask=right_mask).logits
            scores.append(logits[:, 0].float())
            continue
        hidden = backbone(reward_model)(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=False,
        ).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        score = _head_scores(hidden[rows, score_positions(input_ids, mask, pad_id)], head)
        scores.append((score[:, 0] if score.dim() == 2 else score).float())
    return torch.cat(scores)


def reward_function_scores(
    reward_fn: RewardFn,
    prompts: Sequence[Any],
    responses: Sequence[str],
    *,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Call ``reward_fn(prompts, responses)`` and check what it returns: one finite number per response -> [B]."""
    name = getattr(reward_fn, "__qualname__", type(reward_fn).__name__)
    raw = reward_fn(list(prompts), list(responses))
    if torch.is_tensor(raw):
        raw = raw.detach().reshape(-1).tolist()
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"reward_fn {name} must return a list of numbers, one per response; got {raw!r}"
        ) from err
    if len(values) != len(responses):
        raise ValueError(f"reward_fn {name} returned {len(values)} scores for {len(responses)} responses")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise ValueError(
            f"reward_fn {name} returned non-finite scores at rows {bad[:10]}: "
            f"{[values[i] for i in bad[:10]]} for responses {[responses[i] for i in bad[:3]]!r}"
        )
    return torch.tensor(values, dtype=torch.float32, device=device)
