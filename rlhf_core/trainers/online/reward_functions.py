"""The rewards of an online trainer: TRL 1.16's ``reward_funcs`` (functions, reward models, or paths to them).

A reward function is called as ``fn(prompts=..., completions=..., completion_ids=..., **columns)`` and returns
one float (or None: the function does not apply to that completion) per completion. ``columns`` are the other
dataset columns of each completion's row, plus ``trainer_state``, ``log_extra`` and ``log_metric`` as in TRL.
A reward model is a sequence classifier with one label; it scores the prompt + completion text as rendered by its
own tokenizer (the chat template for conversational prompts).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf_core.data.formats import is_conversational
from rlhf_core.models.pad_token import ensure_pad_token
from rlhf_core.rollout.logprobs import ResponseBatch
from rlhf_core.rollout.scoring import reward_model_scores

__all__ = ["RewardFunctions", "RewardSource"]


@dataclass
class RewardSource:
    """One reward: a callable, or a sequence-classifier ``model`` with its ``tokenizer``."""

    name: str
    fn: Callable[..., Sequence[Any]] | None = None
    model: nn.Module | None = None
    tokenizer: Any = None


def _name_of(func: Any) -> str:
    if isinstance(func, nn.Module):
        path = getattr(getattr(func, "config", None), "_name_or_path", "") or type(func).__name__
        return str(path).rstrip("/").split("/")[-1]
    return getattr(func, "__name__", None) or type(func).__name__


def _check_one_label(labels: int, name: str) -> None:
    if labels != 1:
        raise ValueError(
            f"reward model {name!r} has {labels} labels: a reward model must output one score "
            "(AutoModelForSequenceClassification with num_labels=1)"
        )


def _load_reward_model(path: str, init_kwargs: dict | None) -> nn.Module:
    from transformers import AutoConfig

    from rlhf_core.models.loading import load_sequence_classifier, resolve_model_path

    _check_one_label(AutoConfig.from_pretrained(resolve_model_path(path)).num_labels, path)
    return load_sequence_classifier(path, num_labels=1, **(init_kwargs or {}))


def _tokenizer_for(model: nn.Module, given: Any, fallback: Any) -> Any:
    if given is not None:
        return given
    path = getattr(getattr(model, "config", None), "_name_or_path", "")
    if path:
        from rlhf_core.models.loading import load_tokenizer

        try:
            return load_tokenizer(path)
        except OSError:
            pass
    return fallback  # built in memory: assume it shares the policy's tokenizer


class RewardFunctions:
    """Resolves ``reward_funcs`` / ``reward_weights`` and scores completions: [N, F] with NaN for None."""

    def __init__(
        self,
        reward_funcs: Any,
        *,
        weights: Sequence[float] | None,
        processing_classes: Any = None,
        policy_tokenizer: Any = None,
        model_init_kwargs: dict | None = None,
    ) -> None:
        if reward_funcs is None or (isinstance(reward_funcs, (list, tuple)) and not reward_funcs):
            raise ValueError(
                "reward_funcs is required: a function, a reward model (or its path), or a list of them"
            )
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        tokenizers = (
            processing_classes if isinstance(processing_classes, (list, tuple)) else [processing_classes]
        )
        tokenizers = list(tokenizers) + [None] * (len(funcs) - len(tokenizers))
        if len(tokenizers) != len(funcs):
            raise ValueError(f"{len(tokenizers)} reward_processing_classes for {len(funcs)} reward_funcs")
        self.sources = [
            self._source(f, tok, policy_tokenizer, model_init_kwargs) for f, tok in zip(funcs, tokenizers)
        ]
        if weights is None:
            weights = [1.0] * len(funcs)
        if len(weights) != len(funcs):
            raise ValueError(f"reward_weights has {len(weights)} values for {len(funcs)} reward functions")
        self.weights = torch.tensor([float(w) for w in weights], dtype=torch.float32)

    @staticmethod
    def _source(func: Any, tokenizer: Any, policy_tokenizer: Any, init_kwargs: dict | None) -> RewardSource:
        if isinstance(func, str):
            func = _load_reward_model(func, init_kwargs)
        name = _name_of(func)
        if isinstance(func, nn.Module):
            _check_one_label(getattr(getattr(func, "config", None), "num_labels", 1), name)
            func.requires_grad_(False).eval()
            tokenizer = _tokenizer_for(func, tokenizer, policy_tokenizer)
            ensure_pad_token(tokenizer, func)  # the texts are padded into one batch
            return RewardSource(name, model=func, tokenizer=tokenizer)
        if not callable(func):
            raise TypeError(f"reward_funcs entry {func!r} is neither callable, a reward model nor a path")
        return RewardSource(name, fn=func)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def models(self) -> list[nn.Module]:
        return [s.model for s in self.sources if s.model is not None]

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]],
        columns: dict[str, list[Any]],
        *,
        device: torch.device,
        micro_batch_size: int = 16,
    ) -> torch.Tensor:
        """Scores [N, F] (float32, NaN where a function returned None)."""
        out = torch.empty(len(prompts), len(self.sources), dtype=torch.float32)
        for i, source in enumerate(self.sources):
            if source.model is not None:
                out[:, i] = self._model_scores(source, prompts, completions, device, micro_batch_size).cpu()
            else:
                out[:, i] = self._function_scores(source, prompts, completions, completion_ids, columns)
        return out.to(device)

    @staticmethod
    def _function_scores(source, prompts, completions, completion_ids, columns) -> torch.Tensor:
        try:
            raw = source.fn(
                prompts=prompts, completions=completions, completion_ids=completion_ids, **columns
            )
        except Exception as err:
            raise RuntimeError(
                f"reward function {source.name!r} raised {type(err).__name__}: {err} (called on {len(prompts)} "
                f"completions, first prompt {prompts[0]!r})"
            ) from err
        if torch.is_tensor(raw):
            raw = raw.detach().reshape(-1).tolist()
        try:
            raw = list(raw)
        except TypeError:
            raise TypeError(
                f"reward function {source.name!r} returned {type(raw).__name__}, not a list"
            ) from None
        if len(raw) != len(prompts):
            raise ValueError(
                f"reward function {source.name!r} returned {len(raw)} rewards for {len(prompts)} completions "
                "(one float or None per completion is expected)"
            )
        return torch.tensor([_as_reward(v, source.name, i, completions) for i, v in enumerate(raw)])

    @staticmethod
    @torch.no_grad()
    def _model_scores(source, prompts, completions, device, micro_batch_size) -> torch.Tensor:
        tokenizer = source.tokenizer
        conversational = is_conversational(prompts[0])
        if conversational:
            texts = [
                tokenizer.apply_chat_template(list(p) + list(c), tokenize=False)
                for p, c in zip(prompts, completions)
            ]
        else:
            texts = [p + c for p, c in zip(prompts, completions)]
        # Plain text is scored as plain inference tokenises it: with the tokenizer's own special tokens (BERT's
        # [CLS]/[SEP], Llama's bos); a rendered chat template already holds the ones it wants.
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not conversational)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        empty = ids.new_zeros(ids.shape[0], 0)
        batch = ResponseBatch(ids, mask, empty, empty)
        return reward_model_scores(source.model, batch, micro_batch_size=micro_batch_size).float()


def _as_reward(value: Any, name: str, index: int, completions: list[Any]) -> float:
    if value is None:
        return math.nan
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise TypeError(
            f"reward function {name!r} returned {value!r} ({type(value).__name__}) for completion {index} "
            f"({completions[index]!r}): expected a float, or None when the function does not apply"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"reward function {name!r} returned {value} for completion {index} ({completions[index]!r}): "
            "rewards must be finite (return None when the function does not apply)"
        )
    return value
