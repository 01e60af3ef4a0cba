"""A module's training state, one helper per concept: eval mode for a block, frozen modules, no dropout."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["disable_dropout", "eval_mode", "freeze"]


@contextlib.contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Within the block the given modules (``None`` entries skipped) are in eval mode; each gets its own mode back."""
    present = [m for m in modules if m is not None]
    modes = [m.training for m in present]
    for module in present:
        module.eval()
    try:
        yield
    finally:
        for module, was_training in zip(present, modes):
            module.train(was_training)


def freeze(module: nn.Module | None) -> nn.Module | None:
    """No gradients and eval mode, for good (a reference or reward model); returns ``module``."""
    if module is not None:
        module.requires_grad_(False).eval()
    return module


def disable_dropout(model: nn.Module | None) -> None:
    """Set every ``nn.Dropout`` probability to 0: rollout and training forwards (and chosen and rejected in a
    pair) must compute the same function."""
    if model is None:
        return
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
