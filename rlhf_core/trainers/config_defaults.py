"""Defaults shared by every trainer config (SFTConfig, RewardConfig, DPOConfig, PPOConfig).

Each config is a dataclass that subclasses `transformers.TrainingArguments` with this mixin first in its bases::

    @dataclass
    class SFTConfig(ConfigDefaultsMixin, TrainingArguments):
        ...

The mixin re-declares a few `TrainingArguments` fields with defaults that work wherever the user is:

- ``bf16=None`` (auto): bf16 mixed precision on a CUDA device that supports it, full fp32 elsewhere. TRL's configs
  default to ``bf16=True``, which fails on a CPU-only machine. An explicit ``bf16=True`` (or ``fp16=True``) on a
  machine without a GPU that supports it falls back to fp32 with a warning instead of failing deep inside
  accelerate; pass ``use_cpu=True`` as well to force CPU bf16 autocast on purpose.
- ``dataloader_pin_memory=None`` (auto): pinned memory only when CUDA is present (pinning on a CPU-only machine only
  produces a warning per data loader).
- ``optim="adamw_torch_fused"`` (``None`` means the same) for every trainer, CPU and CUDA alike. On the CPU the
  alternatives are slower (``benchmarks/bench_optimizer.py``, torch 2.13, one AdamW step, 1 thread, CPU ms):
  11M Llama fused 5.7-5.8, foreach 17.5-21.2, per-parameter loop 17.4-42.7; PPO's 22M policy+critic fused 11.0-11.5,
  foreach 35-72, loop 36-58. ``"adamw_torch"`` is the loop on the CPU (torch's ``foreach=None`` turns foreach on
  only for CUDA/XPU tensors). Fused AdamW rounds differently from the loop: weights 2.4e-7 apart after 3 steps at
  lr 1e-3 (7e-9 at 5e-5), one or two float32 ulps of the norm weights near 1.0.
- ``logging_steps=10``: short runs still log a few points (the transformers default, 500, often logs nothing).
- ``report_to="none"``: nothing is sent anywhere unless asked; the pipeline sets ``["mlflow"]`` itself.

TRL field parity: every field of TRL's matching config is accepted. A field this project does not implement is
declared from a table, one per config, ``{name: Unimplemented(default, instead)}``, by the `unimplemented_fields`
class decorator (under ``@dataclass``); at construction a non-default value raises ``NotImplementedError`` naming
the field and what to use instead, so a TRL script never trains silently with a setting ignored::

    @dataclass
    @unimplemented_fields({"activation_offloading": Unimplemented(False, "use gradient_checkpointing=True")})
    class SFTConfig(ConfigDefaultsMixin, TrainingArguments):
        ...
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch

from rlhf_core.trainers.fields import help_field

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=type)


class Unimplemented(NamedTuple):
    """A TRL field accepted at its default only. ``instead``: what to use instead (ends the error message);
    ``annotation``: the field's type for argument parsers (default: the default's type)."""

    default: Any
    instead: str
    annotation: str = ""


def unimplemented_fields(table: Mapping[str, Unimplemented]) -> Callable[[T], T]:
    """Class decorator (place it under ``@dataclass``): declares each entry of ``table`` as a field with that default.

    `ConfigDefaultsMixin.__post_init__` then refuses a non-default value of any of them (`refuse_unimplemented`).
    The table lives on the class (``_unimplemented_fields``, merged with the parents'), not in field metadata:
    argument parsers (``HfArgumentParser``, TRL's ``TrlParser``) pass metadata on to argparse.
    """

    def declare(cls: T) -> T:
        annotations = cls.__dict__.get("__annotations__", {})
        for name, entry in table.items():
            if name in annotations:
                raise TypeError(f"{cls.__name__}.{name} is declared in the class body and as unimplemented")
            annotations[name] = entry.annotation or type(entry.default).__name__
            help_text = (
                f"Accepted for TRL compatibility; only {entry.default!r} is supported ({entry.instead})."
            )
            setattr(cls, name, help_field(entry.default, help_text))
        cls.__annotations__ = annotations
        cls._unimplemented_fields = {**getattr(cls, "_unimplemented_fields", {}), **table}
        return cls

    return declare


def unimplemented_table(config_class: type) -> dict[str, Unimplemented]:
    """``{field: Unimplemented}`` of a config class (for documentation and tests)."""
    return dict(getattr(config_class, "_unimplemented_fields", {}))


def refuse_unimplemented(config: Any) -> None:
    """``NotImplementedError`` for the first unimplemented field (see `unimplemented_fields`) set to another value."""
    for name, entry in unimplemented_table(type(config)).items():
        value = vars(config).get(name, entry.default)
        if value != entry.default:
            raise NotImplementedError(
                f"{type(config).__name__}.{name}={value!r} is not implemented (only {entry.default!r} is): "
                f"{entry.instead}"
            )


def cuda_bf16_available() -> bool:
    """True when a CUDA device that supports bf16 is visible."""
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


_CHECKPOINTING_ALIASES = (
    ("gradient_checkpointing", "activation_checkpointing"),
    ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
)


@dataclass
class ConfigDefaultsMixin:
    """Hardware-aware precision, quiet reporting and frequent logging for every trainer config (see module doc)."""

    bf16: bool | None = help_field(
        None,
        "bf16 mixed precision. None (default) = on for a CUDA device with bf16 support, off elsewhere. "
        "True on a machine without such a GPU falls back to fp32 with a warning unless use_cpu=True.",
    )
    fp16: bool = help_field(
        False, "fp16 mixed precision (CUDA only; falls back to fp32 with a warning elsewhere)."
    )
    optim: str | None = help_field(
        "adamw_torch_fused", "Optimizer name (fused AdamW by default, CPU too; None = the default)."
    )
    logging_steps: float = help_field(
        10, "Log every X optimizer steps (or a ratio of the total steps when < 1)."
    )
    report_to: None | str | list[str] = help_field(
        "none", "Integrations to report to ('none' by default; the pipeline sets 'mlflow')."
    )
    dataloader_pin_memory: bool | None = help_field(
        None, "Pin data loader memory. None (default) = only when CUDA is available."
    )

    def __post_init__(self) -> None:
        refuse_unimplemented(self)
        self._resolve_precision()
        # TRL's configs (and the scripts written for them) say gradient_checkpointing; transformers 5 renamed it
        # activation_checkpointing and warns on every config built with the old name. Both are accepted, quietly.
        for old, new in _CHECKPOINTING_ALIASES:
            if hasattr(self, new) and getattr(self, new) is None and getattr(self, old, None) is not None:
                setattr(self, new, getattr(self, old))
        if self.optim is None:
            self.optim = "adamw_torch_fused"
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available()
        super().__post_init__()  # type: ignore[misc]  # TrainingArguments.__post_init__

    def _resolve_precision(self) -> None:
        use_cpu = bool(getattr(self, "use_cpu", False))
        gpu_bf16 = cuda_bf16_available() and not use_cpu
        if self.bf16 is None:
            self.bf16 = gpu_bf16 and not self.fp16
            if self.bf16:
                logger.info("bf16 mixed precision enabled automatically (CUDA device with bf16 support).")
        elif self.bf16 and not gpu_bf16 and not use_cpu:
            warnings.warn(
                "bf16=True was requested but no CUDA device with bf16 support is available: training in fp32 "
                "instead. Pass use_cpu=True together with bf16=True to force CPU bf16 autocast.",
                UserWarning,
                stacklevel=3,
            )
            self.bf16 = False
        if self.fp16 and (use_cpu or not torch.cuda.is_available()):
            warnings.warn(
                "fp16=True was requested but no CUDA device is in use: training in fp32 instead.",
                UserWarning,
                stacklevel=3,
            )
            self.fp16 = False
