"""One way to declare a documented config field, shared by every trainer config (torch-free, so the CLI can
read config fields without importing torch)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["help_field"]


def help_field(default: Any, text: str) -> Any:
    """A dataclass field with ``default`` and TrainingArguments' ``metadata={"help": text}`` (shown by
    HfArgumentParser's --help). A list or dict default becomes a factory of copies, so instances never share it."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})
