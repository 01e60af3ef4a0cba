"""What every trainer constructor does before training: load a model given by name, pick its tokenizer, add LoRA.

These helpers keep the TRL-style constructors (model as an object or a name/path, ``processing_class=`` or its alias
``tokenizer=``, ``peft_config=``) identical across the SFT, reward, DPO and PPO trainers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def resolve_processing_class_alias(processing_class: Any = None, tokenizer: Any = None) -> Any:
    """Return the tokenizer given as ``processing_class=`` or its alias ``tokenizer=`` (not both)."""
    if processing_class is not None and tokenizer is not None and processing_class is not tokenizer:
        raise ValueError(
            "Both processing_class= and tokenizer= were given with different objects; `tokenizer` is an alias of "
            "`processing_class`: pass only one."
        )
    return processing_class if processing_class is not None else tokenizer


def is_model_name(model: Any) -> bool:
    """True for a name or path (str or os.PathLike), False for a model object."""
    return isinstance(model, (str, os.PathLike))


def model_name_or_path(model: Any) -> str | None:
    """The name or path a model was given by or loaded from (None for a model built in memory)."""
    if is_model_name(model):
        return os.fspath(model)
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return name or None


def _torch_dtype(value: Any) -> Any:
    if isinstance(value, str) and value not in ("auto",):
        return getattr(torch, value)
    return value


def load_model(
    model: PreTrainedModel | torch.nn.Module | str | os.PathLike[str],
    *,
    model_init_kwargs: dict[str, Any] | None = None,
    loader: Callable[..., PreTrainedModel] | None = None,
) -> PreTrainedModel | torch.nn.Module:
    """Return ``model`` itself when it is an object, else load it by name/path with ``loader``.

    ``loader`` defaults to ``rlhf_core.models.loading.load_causal_lm`` (which maps "rlhf-tiny" to the offline tiny
    model); the reward trainer passes ``load_sequence_classifier``. ``model_init_kwargs`` go to ``from_pretrained``
    (a string ``dtype``/``torch_dtype`` such as "float32" is converted to the torch dtype).
    """
    kwargs = dict(model_init_kwargs or {})
    if not is_model_name(model):
        if kwargs:
            logger.warning(
                "model_init_kwargs are ignored because the model was given as an object, not a name."
            )
        return model
    for key in ("dtype", "torch_dtype"):
        if key in kwargs:
            kwargs[key] = _torch_dtype(kwargs[key])
    if loader is None:
        from rlhf_core.models.loading import load_causal_lm as loader
    return loader(model, **kwargs)


def load_processing_class(model: Any, processing_class: Any = None) -> Any:
    """Return ``processing_class`` when given, else the tokenizer saved with the model's name/path.

    Raises a ValueError when the model was built in memory and no tokenizer was given.
    """
    if processing_class is not None:
        return processing_class
    name = model_name_or_path(model)
    if not name:
        raise ValueError(
            "No tokenizer given and the model was built in memory (config._name_or_path is empty): pass "
            "processing_class= (or tokenizer=)."
        )
    from rlhf_core.models.loading import load_tokenizer

    return load_tokenizer(name)


def is_peft_model(model: Any) -> bool:
    """True when ``model`` carries PEFT adapters (without importing peft when it is not loaded)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def apply_peft(
    model: PreTrainedModel, peft_config: Any = None, *, gradient_checkpointing: bool = False
) -> Any:
    """Wrap ``model`` with LoRA (or any PEFT method) from ``peft_config``; a no-op when it is None.

    peft is imported here only, so the package works without it until LoRA is asked for.
    """
    if peft_config is None:
        return model
    try:
        from peft import get_peft_model
    except ImportError as err:  # pragma: no cover - peft is a dev dependency here
        raise ImportError("peft_config was given but peft is not installed: pip install peft") from err
    if is_peft_model(model):
        raise ValueError(
            "The model already carries PEFT adapters and peft_config was given too: pass peft_config=None to "
            "train the existing adapters, or merge them first (model.merge_and_unload())."
        )
    if gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        # With frozen embeddings no input needs grad, so checkpointed blocks would get no gradient at all.
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The `PreTrainedModel` inside DDP / accelerate / PEFT wrappers (PEFT's LoRA layers stay in place)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model
