"""A causal LM with a scalar value head on its last hidden state (the classic TRL value-head model).

``AutoModelForCausalLMWithValueHead`` wraps any causal LM (a name/path, ``"rlhf-tiny"``, or a model object):
``forward`` returns ``(lm_logits, loss, values)`` as TRL's did; ``save_pretrained`` writes the language model
exactly as ``from_pretrained`` of transformers reads it, plus the head in ``value_head.safetensors``, so the
saved folder loads both as a plain ``AutoModelForCausalLM`` and, head included, through this class.
Checkpoints written by old TRL (head weights ``v_head.summary.*`` inside the model's weight file) load too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
_LEGACY_PREFIX = "v_head."

__all__ = [
    "AutoModelForCausalLMWithValueHead",
    "ValueHead",
    "backbone",
    "hidden_size_of",
    "save_value_head",
]


def backbone(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM or sequence classifier: the module that returns
    ``last_hidden_state`` (final norm applied) without the vocabulary projection.

    PEFT wrappers are looked through (their adapters live inside the body, so they stay active).
    """
    if isinstance(model, AutoModelForCausalLMWithValueHead):
        model = model.pretrained_model
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    prefix = getattr(model, "base_model_prefix", None)
    body = getattr(model, prefix, None) if prefix else None
    if not isinstance(body, nn.Module):
        raise TypeError(
            f"cannot find the transformer body of {type(model).__name__}: expected a transformers model whose "
            f"`base_model_prefix` ({prefix!r}) names a sub-module"
        )
    return body


def hidden_size_of(config: Any) -> int:
    """The width of the last hidden state, across config naming conventions."""
    for name in ("hidden_size", "n_embd", "d_model", "word_embed_proj_dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        return hidden_size_of(text_config)
    raise ValueError(f"cannot read the hidden size from {type(config).__name__}")


class ValueHead(nn.Module):
    """Dropout then a linear map from the hidden state to one scalar per position: [..., H] -> [...].

    Starts at zero (weight and bias), so the first value estimates are 0 and building the head consumes no
    random numbers (runs stay comparable with and without it). Computed in fp32 whatever the body's dtype.
    """

    def __init__(self, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(hidden_states).to(self.summary.weight.dtype)
        return self.summary(hidden).squeeze(-1)


class AutoModelForCausalLMWithValueHead(nn.Module):
    """A causal LM (``pretrained_model``) plus ``v_head``: a scalar value per position of the last hidden state."""

    def __init__(self, pretrained_model: nn.Module, *, summary_dropout_prob: float = 0.0) -> None:
        super().__init__()
        if isinstance(pretrained_model, AutoModelForCausalLMWithValueHead):
            raise TypeError("the model already has a value head")
        self.pretrained_model = pretrained_model
        self.v_head = ValueHead(hidden_size_of(pretrained_model.config), summary_dropout_prob)
        param = next(pretrained_model.parameters(), None)
        if param is not None:
            self.v_head.to(param.device)

    # ---- loading and saving -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str] | nn.Module,
        *model_args: Any,
        summary_dropout_prob: float = 0.0,
        **kwargs: Any,
    ) -> AutoModelForCausalLMWithValueHead:
        """Load (or wrap) a causal LM and add a value head; the head's weights are read when saved beside it."""
        if isinstance(pretrained_model_name_or_path, cls):
            return pretrained_model_name_or_path
        if isinstance(pretrained_model_name_or_path, nn.Module):
            return cls(pretrained_model_name_or_path, summary_dropout_prob=summary_dropout_prob)
        from rlhf_core.models.loading import load_causal_lm, resolve_model_path

        path = resolve_model_path(pretrained_model_name_or_path)
        if model_args:
            raise TypeError("positional model arguments are not supported: pass from_pretrained keywords")
        lm = load_causal_lm(path, **kwargs)
        model = cls(lm, summary_dropout_prob=summary_dropout_prob)
        if not (Path(path).is_dir() and load_value_head(model.v_head, path)):
            logger.info("no value head saved in %s: the value head starts at zero", path)
        return model

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """The language model via its own ``save_pretrained`` (``kwargs`` passed on), the head beside it."""
        kwargs.pop("state_dict", None)  # the LM's own state dict: a merged one would not load as a plain LM
        os.makedirs(save_directory, exist_ok=True)
        self.pretrained_model.save_pretrained(save_directory, **kwargs)
        if kwargs.get("is_main_process", True):
            save_value_head(self.v_head, save_directory)

    # ---- forward -----------------------------------------------------------------------------------------

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden state [B, T, H] of the language model (no vocabulary projection)."""
        out = backbone(self.pretrained_model)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(lm_logits [B, T, V], loss or None, values [B, T])`` as TRL's value-head model returned."""
        kwargs["output_hidden_states"] = True
        kwargs.setdefault("use_cache", False)
        out = self.pretrained_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        values = self.v_head(out.hidden_states[-1])
        return out.logits, getattr(out, "loss", None), values

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The language model's ``generate``."""
        return self.pretrained_model.generate(*args, **kwargs)

    # ---- what callers expect of a transformers model -----------------------------------------------------

    @property
    def config(self) -> Any:
        return self.pretrained_model.config

    @property
    def generation_config(self) -> Any:
        return getattr(self.pretrained_model, "generation_config", None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def get_input_embeddings(self) -> nn.Module:
        return self.pretrained_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.pretrained_model.get_output_embeddings()

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.pretrained_model.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.pretrained_model.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        model = self.pretrained_model
        flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5 name
        return bool(flag if flag is not None else getattr(model, "is_gradient_checkpointing", False))


def save_value_head(head: ValueHead, directory: str | os.PathLike[str]) -> None:
    """Write ``head``'s weight and bias to ``directory/value_head.safetensors``."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in head.summary.state_dict().items()}
    save_file(state, os.path.join(directory, VALUE_HEAD_FILE), metadata={"format": "pt"})


def load_value_head(head: ValueHead, directory: str | os.PathLike[str]) -> bool:
    """Load ``head`` from what ``directory`` holds (ours or an old TRL checkpoint); False when nothing is there."""
    state = _read_value_head(Path(directory))
    if state is None:
        return False
    head.summary.load_state_dict(state)
    return True


def _read_value_head(folder: Path) -> dict[str, torch.Tensor] | None:
    """The head's ``weight``/``bias`` from ``value_head.safetensors``, else from an old TRL checkpoint."""
    from safetensors import safe_open

    ours = folder / VALUE_HEAD_FILE
    if ours.is_file():
        with safe_open(str(ours), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    for candidate in sorted(folder.glob("*.safetensors")):
        with safe_open(str(candidate), framework="pt") as f:
            keys = [k for k in f.keys() if k.startswith(_LEGACY_PREFIX + "summary.")]  # noqa: SIM118
            if keys:
                return {k.removeprefix(_LEGACY_PREFIX + "summary."): f.get_tensor(k) for k in keys}
    legacy_bin = folder / "pytorch_model.bin"
    if legacy_bin.is_file():
        state = torch.load(legacy_bin, map_location="cpu", weights_only=True)
        legacy = _LEGACY_PREFIX + "summary."
        head = {k.removeprefix(legacy): v for k, v in state.items() if k.startswith(legacy)}
        return head or None
    return None
