"""Loading models and tokenizers by name, path or object, with the offline tiny model as a built-in name.

Every place that accepts a model accepts: ``"rlhf-tiny"`` (built on first use, see `rlhf_core.models.tiny`), a
local checkpoint folder, a hub name such as ``"gpt2"`` (passed to ``from_pretrained`` unchanged), or - where a
model is meant - an already-built ``torch.nn.Module``, which passes through untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf_core.models.pad_token import ensure_pad_token
from rlhf_core.models.tiny import TINY_MODEL, tiny_model_path

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ModelNotAvailableError(OSError):
    """A model or tokenizer name that is neither a local folder nor loadable (e.g. not cached while offline)."""


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> str:
    """``"rlhf-tiny"`` -> the built tiny model's folder; anything else is returned unchanged (as a string)."""
    name = os.fspath(name_or_path)
    if name == TINY_MODEL:
        return str(tiny_model_path())
    return name


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _from_pretrained(
    loader: Callable[..., T], name_or_path: str | os.PathLike[str], what: str, **kwargs: Any
) -> T:
    """``loader(resolved, **kwargs)``, turning "not found" errors into one that names the model and the cause."""
    path = resolve_model_path(name_or_path)
    try:
        return loader(path, **kwargs)
    except OSError as err:
        if Path(path).expanduser().is_dir():
            raise
        if _looks_like_path(path):
            raise ModelNotAvailableError(f"cannot load {what} {path!r}: no such folder") from err
        if _hub_offline():
            raise ModelNotAvailableError(
                f"cannot load {what} {path!r}: it is not a local folder and not in the Hugging Face cache, and the "
                f"hub is offline (HF_HUB_OFFLINE=1). Use a local checkpoint folder or {TINY_MODEL!r}, or download "
                "the model where the hub is reachable."
            ) from err
        raise ModelNotAvailableError(f"cannot load {what} {path!r}: {err}") from err


def load_tokenizer(name_or_path: str | os.PathLike[str], **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` with a pad token by the one policy (``rlhf_core.models.pad_token``)."""
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, "tokenizer", **kwargs)
    ensure_pad_token(tokenizer)
    return tokenizer


def load_causal_lm(
    model_or_name_or_path: str | os.PathLike[str] | torch.nn.Module, **from_pretrained_kwargs: Any
) -> PreTrainedModel:
    """A causal LM from a name or path (``AutoModelForCausalLM.from_pretrained``); a model object passes through."""
    if isinstance(model_or_name_or_path, torch.nn.Module):
        if from_pretrained_kwargs:
            logger.warning(
                "model given as an object: ignoring from_pretrained arguments %s",
                sorted(from_pretrained_kwargs),
            )
        return model_or_name_or_path
    return _from_pretrained(
        AutoModelForCausalLM.from_pretrained, model_or_name_or_path, "causal LM", **from_pretrained_kwargs
    )


def load_sequence_classifier(
    name_or_path: str | os.PathLike[str] | torch.nn.Module, num_labels: int = 1, **kwargs: Any
) -> PreTrainedModel:
    """``AutoModelForSequenceClassification.from_pretrained(num_labels=...)`` (a model object passes through).

    The pad token id is set on the config when missing (from the tokenizer saved beside the model: its pad
    token, else its eos token), because sequence classifiers find each row's last token through it.
    """
    if isinstance(name_or_path, torch.nn.Module):
        return name_or_path
    model = _from_pretrained(
        AutoModelForSequenceClassification.from_pretrained,
        name_or_path,
        "sequence classifier",
        num_labels=num_labels,
        **kwargs,
    )
    if model.config.pad_token_id is None:
        tokenizer = load_tokenizer(name_or_path)
        model.config.pad_token_id = tokenizer.pad_token_id
        logger.info("set pad_token_id=%s on the config of %s", tokenizer.pad_token_id, name_or_path)
    return model
