"""Frozen reference models for KL-regularised training (PPO, DPO).

``create_reference_model(model)`` returns a frozen deep copy in eval mode. With ``num_shared_layers=n`` the
copy shares the input embeddings and the bottom ``n`` decoder layers with ``model`` (the very same parameter
objects, no second copy in memory); those shared parts are frozen in ``model`` too, since a reference must not
move, which is the memory/capacity trade-off TRL made with the same option.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, TypeVar

from torch import nn

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

__all__ = ["create_reference_model", "decoder_layers"]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks: the ``nn.ModuleList`` whose length is the config's layer count."""
    config = getattr(model, "config", None)
    n_layers = None
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        n_layers = n_layers or getattr(config, name, None)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if n_layers is not None:
        candidates = [m for m in candidates if len(m) == n_layers]
    if not candidates:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__} (an nn.ModuleList with "
            f"{n_layers if n_layers is not None else 'the configured number of'} blocks)"
        )
    return candidates[0]


def _shared_modules(model: nn.Module, num_shared_layers: int) -> list[nn.Module]:
    layers = decoder_layers(model)
    if not 0 <= num_shared_layers <= len(layers):
        raise ValueError(
            f"num_shared_layers={num_shared_layers} but the model has {len(layers)} decoder layers"
        )
    if num_shared_layers == 0:
        return []
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shared = list(layers[:num_shared_layers])
    return [embeddings, *shared] if embeddings is not None else shared


def create_reference_model(model: M, num_shared_layers: int | None = None, pattern: Any = None) -> M:
    """A frozen copy of ``model`` (eval mode, ``requires_grad=False``) to compute reference log-probs.

    num_shared_layers: None (default) copies everything. ``n`` shares the input embeddings and the first
    ``n`` decoder layers by reference instead of copying them, and freezes them in ``model``.
    ``pattern`` (TRL's layer-name pattern) is accepted for compatibility and not needed: layers are found from
    the config's layer count.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"create_reference_model expects a torch model, got {type(model).__name__}")
    if pattern is not None:
        logger.info("create_reference_model: `pattern` is not needed and is ignored")
    shared = _shared_modules(model, num_shared_layers) if num_shared_layers else []
    # deepcopy returns memo entries as they are: the shared modules and their parameters stay the same objects.
    memo: dict[int, Any] = {}
    for module in shared:
        memo[id(module)] = module
        for param in module.parameters():
            memo[id(param)] = param
            param.requires_grad_(False)
    reference = copy.deepcopy(model, memo)
    for param in reference.parameters():
        param.requires_grad_(False)
    reference.eval()
    if shared:
        n_shared = sum(p.numel() for m in shared for p in m.parameters())
        logger.info("reference model shares %d parameters (frozen in the policy too)", n_shared)
    return reference
