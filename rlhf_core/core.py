"""The small helpers the classic TRL API had under ``trl.core``, kept importable as ``rlhf_core.core``.

``LengthSampler`` draws response lengths for ``PPOTrainer.generate``; the tensor helpers are the
library's own implementations (``rlhf_core.losses.ppo``, ``rlhf_core.rollout.sampling``) under the
names old scripts import.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import set_seed

from rlhf_core.losses.ppo import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
)
from rlhf_core.rollout.sampling import top_k_top_p_filtering

__all__ = [
    "LengthSampler",
    "clip_by_value",
    "entropy_from_logits",
    "flatten_dict",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "set_seed",
    "stack_dicts",
    "top_k_top_p_filtering",
    "whiten",
]


class LengthSampler:
    """Draws an integer uniformly from ``[min_length, max_length)`` (upper bound excluded, as in TRL).

    Accepts the classic positional form ``LengthSampler(4, 16)`` and the keywords ``min_length`` /
    ``max_length`` (or TRL's ``min_value`` / ``max_value``). Without ``seed`` it draws from numpy's
    global generator, so ``rlhf_core.core.set_seed`` (transformers' ``set_seed``) makes it repeatable.
    """

    def __init__(
        self,
        min_length: int | None = None,
        max_length: int | None = None,
        *,
        min_value: int | None = None,
        max_value: int | None = None,
        seed: int | None = None,
    ) -> None:
        low = min_length if min_length is not None else min_value
        high = max_length if max_length is not None else max_value
        if low is None or high is None:
            raise TypeError("LengthSampler needs min_length and max_length (e.g. LengthSampler(32, 128))")
        low, high = int(low), int(high)
        if low < 0 or high <= low:
            raise ValueError(
                f"LengthSampler needs 0 <= min_length < max_length (max is excluded); got {low} and {high}"
            )
        self.min_length, self.max_length = low, high
        self._rng = random.Random(seed) if seed is not None else None

    def __call__(self) -> int:
        if self._rng is not None:
            return self._rng.randrange(self.min_length, self.max_length)
        return int(np.random.randint(self.min_length, self.max_length))

    def __repr__(self) -> str:
        return f"LengthSampler(min_length={self.min_length}, max_length={self.max_length})"


def whiten(values: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Unmasked whitening: ``masked_whiten`` with every position counted."""
    return masked_whiten(values, torch.ones_like(values), shift_mean=shift_mean)


def clip_by_value(
    x: torch.Tensor, tensor_min: torch.Tensor | float, tensor_max: torch.Tensor | float
) -> torch.Tensor:
    """Element-wise clamp between two bounds that may be tensors."""
    lower = torch.as_tensor(tensor_min, dtype=x.dtype, device=x.device)
    upper = torch.as_tensor(tensor_max, dtype=x.dtype, device=x.device)
    return torch.maximum(torch.minimum(x, upper), lower)


def flatten_dict(nested: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    flat: dict[str, Any] = {}

    def _walk(prefix: str, node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            name = f"{prefix}{sep}{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                _walk(name, value)
            else:
                flat[name] = value

    _walk("", nested)
    return flat


def stack_dicts(stats_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-step statistics key by key: a list of ``{k: tensor}`` -> ``{k: stacked tensor}``."""
    if not stats_dicts:
        return {}
    return {key: torch.stack([torch.as_tensor(d[key]) for d in stats_dicts]) for key in stats_dicts[0]}
