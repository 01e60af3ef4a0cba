"""The trained module of PPO: the policy and its value estimator as one ``nn.Module``.

One module means one ``accelerator.prepare`` (DDP wraps both), one optimizer and one forward per micro-batch.
The value estimator is either a head on the policy's own last hidden state (``value_model=None``: the classic
value-head model, one body forward gives log-probs and values) or a separate model (TRL's critic, e.g. a copy of
the reward model), whose per-position score head is read at the same positions.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
from torch import nn

from rlhf_core.models.value_head import (
    AutoModelForCausalLMWithValueHead,
    ValueHead,
    backbone,
    hidden_size_of,
    load_value_head,
    save_value_head,
)
from rlhf_core.rollout.logprobs import ResponseBatch, policy_logprobs, response_hidden_states
from rlhf_core.rollout.scoring import score_head_of

__all__ = ["PolicyAndValue", "PolicyValueOutput"]

VALUE_MODEL_DIR = "value_model"


class PolicyValueOutput(NamedTuple):
    logprobs: torch.Tensor  # [B, R], 0 on masked tokens
    entropy: torch.Tensor | None  # [B, R] detached, when asked
    values: torch.Tensor  # [B, R]


class PolicyAndValue(nn.Module):
    """``policy`` (a causal LM, possibly PEFT-wrapped) plus ``v_head`` on its body, or a separate ``value_model``."""

    def __init__(
        self, policy: nn.Module, *, v_head: ValueHead | None = None, value_model: nn.Module | None = None
    ):
        super().__init__()
        if (v_head is None) == (value_model is None):
            raise ValueError("PolicyAndValue needs exactly one of v_head (shared body) and value_model")
        if value_model is not None and score_head_of(value_model) is None:
            raise TypeError(
                f"value_model {type(value_model).__name__} has no per-position score head (`score` or `v_head`): "
                "use AutoModelForSequenceClassification(num_labels=1) of a causal LM or a value-head model"
            )
        self.policy = policy
        self.v_head = v_head
        self.value_model = value_model

    @classmethod
    def build(cls, model: nn.Module, value_model: nn.Module | None) -> PolicyAndValue:
        """From what a user passes: a causal LM (a value head is added) or a value-head model."""
        if isinstance(model, AutoModelForCausalLMWithValueHead):
            if value_model is not None:
                return cls(model.pretrained_model, value_model=value_model)
            return cls(model.pretrained_model, v_head=model.v_head)
        if value_model is not None:
            return cls(model, value_model=value_model)
        head = ValueHead(hidden_size_of(model.config))
        param = next(model.parameters(), None)
        return cls(model, v_head=head.to(param.device) if param is not None else head)

    @property
    def config(self) -> Any:
        return self.policy.config

    def forward(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        *,
        temperature: float = 1.0,
        return_entropy: bool = False,
    ) -> PolicyValueOutput:
        """Log-probs of the response tokens (at ``temperature``) and the value before each of them."""
        batch = ResponseBatch(prompt_ids, prompt_mask, response_ids, response_mask)
        logps, entropy, hidden = policy_logprobs(
            self.policy, batch, temperature=temperature, return_entropy=return_entropy
        )
        return PolicyValueOutput(logps, entropy, self._values(batch, hidden))

    def values(self, batch: ResponseBatch) -> torch.Tensor:
        """Only the value before each response token, [B, R]: no vocabulary projection at all."""
        hidden = response_hidden_states(backbone(self.policy), batch) if self.v_head is not None else None
        return self._values(batch, hidden)

    def _values(self, batch: ResponseBatch, policy_hidden: torch.Tensor | None) -> torch.Tensor:
        if self.v_head is not None:
            return self.v_head(policy_hidden)
        value_hidden = response_hidden_states(backbone(self.value_model), batch)
        return score_head_of(self.value_model)(value_hidden).squeeze(-1).float()

    # ---- persistence -------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """The policy as a loadable checkpoint; the value head beside it, or the value model in ``value_model/``."""
        self.policy.save_pretrained(directory, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        if self.v_head is not None:
            save_value_head(self.v_head, directory)
        else:
            self.value_model.save_pretrained(os.path.join(directory, VALUE_MODEL_DIR), **kwargs)

    def load_checkpoint(self, directory: str | os.PathLike[str]) -> None:
        """Load what ``save_pretrained`` wrote (full-weight policies; a PEFT policy loads its adapters)."""
        _load_weights(self.policy, directory)
        if self.v_head is not None:
            if not load_value_head(self.v_head, directory):
                raise FileNotFoundError(f"no value head in checkpoint {directory}")
        else:
            _load_weights(self.value_model, os.path.join(directory, VALUE_MODEL_DIR))

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        for model in (self.policy, self.value_model):
            if model is not None and hasattr(model, "gradient_checkpointing_enable"):
                model.gradient_checkpointing_enable(**kwargs)


def _load_weights(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    if hasattr(model, "load_adapter") and hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model, load_peft_weights(str(directory)))
        return
    from safetensors.torch import load_file
    from transformers.trainer_utils import load_sharded_checkpoint

    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        missing, unexpected = model.load_state_dict(load_file(single), strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint {single} does not match the model: missing {missing}, unexpected {unexpected}"
            )
        return
    load_sharded_checkpoint(model, str(directory), strict=False)
