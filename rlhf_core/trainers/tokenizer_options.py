"""TRL's tokenizer options of a trainer config: ``pad_token``, ``eos_token``, ``chat_template_path`` and
``pad_to_multiple_of``, applied the same way by every trainer that has them (SFT, reward, DPO)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_core.trainers.fields import help_field

logger = logging.getLogger(__name__)

__all__ = ["TokenizerOptionsMixin", "apply_tokenizer_options", "resolve_pad_to_multiple_of"]


@dataclass
class TokenizerOptionsMixin:
    """TRL's tokenizer fields (SFT, reward and DPO configs), in the bases between `ConfigDefaultsMixin` and
    `TrainingArguments`. The trainers apply them with `apply_tokenizer_options` and hand ``pad_to_multiple_of``
    (resolved to an int or None here) to their collators."""

    pad_to_multiple_of: int | str | None = help_field(
        "auto", "Round padded batch lengths up to a multiple of this. 'auto' or None: no rounding."
    )
    pad_token: str | None = help_field(None, "Set as the tokenizer's pad token (a token of its vocabulary).")
    eos_token: str | None = help_field(None, "Set as the tokenizer's eos token (a token of its vocabulary).")
    chat_template_path: str | None = help_field(
        None, "A Jinja chat template file, or a tokenizer folder/name whose chat template is copied."
    )

    def __post_init__(self) -> None:
        self.pad_to_multiple_of = resolve_pad_to_multiple_of(self.pad_to_multiple_of)
        super().__post_init__()  # type: ignore[misc]  # TrainingArguments.__post_init__


def resolve_pad_to_multiple_of(value: int | str | None) -> int | None:
    """TRL's ``pad_to_multiple_of``: an int (or its string, from a command line), ``None`` or ``"auto"``.

    "auto" rounds to 128 on AWS Neuron only in TRL (it compiles once per input shape); this project does not target
    Neuron, so "auto" means no rounding, as it does in TRL on every other device.
    """
    if value is None or value == "auto":
        return None
    try:
        multiple = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"pad_to_multiple_of must be an int, None or 'auto', got {value!r}") from None
    if multiple < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {multiple}")
    return multiple


def _token_in_vocab(tokenizer: Any, token: str, option: str) -> None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    unknown = getattr(tokenizer, "unk_token_id", None)
    if token_id is None or (token_id == unknown and token != getattr(tokenizer, "unk_token", None)):
        raise ValueError(
            f"{option}={token!r} is not a token of the tokenizer's vocabulary: add it first "
            "(tokenizer.add_special_tokens and model.resize_token_embeddings) or pick an existing token"
        )


def _read_chat_template(path: str) -> str:
    """A Jinja file's text, or the chat template of the tokenizer at a folder / name."""
    if os.path.isfile(path):
        return Path(path).read_text(encoding="utf-8")
    from rlhf_core.models.loading import load_tokenizer

    template = getattr(load_tokenizer(path), "chat_template", None)
    if not template:
        raise ValueError(f"chat_template_path={path!r}: that tokenizer has no chat template")
    return template


def apply_tokenizer_options(tokenizer: Any, args: Any) -> Any:
    """Set ``args.pad_token`` / ``args.eos_token`` / ``args.chat_template_path`` on ``tokenizer`` (when given).

    Each token must already be in the vocabulary (TRL requires the same); the template of a folder or name is
    copied as it is (its special tokens must exist in this tokenizer too). Returns the tokenizer.
    """
    if tokenizer is None:
        return tokenizer
    for option in ("pad_token", "eos_token"):
        token = getattr(args, option, None)
        if token is not None and token != getattr(tokenizer, option, None):
            _token_in_vocab(tokenizer, token, option)
            setattr(tokenizer, option, token)
            logger.info("tokenizer %s set to %r (from the config)", option, token)
    path = getattr(args, "chat_template_path", None)
    if path is not None:
        tokenizer.chat_template = _read_chat_template(str(path))
        logger.info("chat template read from %s", path)
    return tokenizer
