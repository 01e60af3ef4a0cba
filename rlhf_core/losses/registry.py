"""`LossRegistry`: the ``loss_type`` name -> loss function table of a loss family (DPO, KTO).

A dict, so configs and trainers look names up and list them as they would any mapping; ``register(name)`` is the
decorator that adds a variant, once per name (a second function under a taken name is an error, not an override).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["LossRegistry"]

LossFn = TypeVar("LossFn", bound=Callable)


class LossRegistry(dict[str, LossFn]):
    """``{loss_type: function}`` of one family; ``family`` names it in error messages."""

    def __init__(self, family: str) -> None:
        super().__init__()
        self.family = family

    def register(self, name: str) -> Callable[[LossFn], LossFn]:
        """Decorator adding a variant under `name` (the value users pass as `loss_type`)."""

        def add(fn: LossFn) -> LossFn:
            if name in self:
                raise ValueError(f"{self.family} loss {name!r} is already registered")
            self[name] = fn
            return fn

        return add
