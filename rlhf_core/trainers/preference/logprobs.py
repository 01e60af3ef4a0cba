"""Summed completion log-probs of a causal LM, from its last hidden state through the fused kernel.

The logits `[2B, T, V]` of a chosen+rejected batch are the largest tensor of a DPO step; we never build them. The
model is called with ``logits_to_keep`` set to no position (so its LM head projects nothing), a forward hook on
its base model captures the final hidden states, and `fused_linear_logprobs` computes the log-probs of the
completion tokens only, chunk by chunk, from those states and the LM-head weight. Calling the model itself (not its
inner decoder) keeps PEFT adapters, DDP gradient hooks and accelerate wrappers in the path. A head the kernel cannot
see through (LoRA on ``lm_head``: its weight is not the effective one) falls back to the model's own logits.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
from torch import nn

from rlhf_core.kernels import fused_linear_logprobs
from rlhf_core.trainers.padding_free import RowLayout
from rlhf_core.trainers.preference.model_prep import unwrap_model

__all__ = ["SequenceLogProbs", "completion_logprobs", "last_hidden_state"]

IGNORE_INDEX = -100


class SequenceLogProbs(NamedTuple):
    """logps: `[R]` summed log-prob of each row's completion tokens; num_tokens: `[R]` how many there are."""

    logps: torch.Tensor
    num_tokens: torch.Tensor


def completion_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    layout: RowLayout | None = None,
) -> SequenceLogProbs:
    """Per-row sums of `log p(label_t | tokens < t)` over the positions where `labels != -100`.

    Args:
        model: a causal LM (possibly wrapped by PEFT, DDP or accelerate).
        input_ids, attention_mask: `[R, T]`, right padded.
        labels: `[R, T]` aligned with `input_ids` (not shifted), -100 on prompt and padding.
        chunk_size: rows per chunk of the fused kernel.
        layout: how the rows go through the model (default: the padded batch as it is; see
            `preference_padding_free`).
    """
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    rows, cols = keep.nonzero(as_tuple=True)  # row-major: the order of target[keep]
    head = unwrap_model(model).get_output_embeddings()
    if type(head) is nn.Linear:
        layout = layout or RowLayout(merged=False)
        hidden = last_hidden_state(model, layout.model_inputs(input_ids, attention_mask))
        token_logps = fused_linear_logprobs(
            layout.gather(hidden, rows, cols),
            head.weight,
            target[keep],
            head.bias,
            chunk_size=chunk_size,
            temperature=temperature,
        )
    else:
        # A wrapped head (e.g. LoRA on lm_head) hides its effective weight from the kernel: use its logits.
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        token_logps = (logits[:, :-1][keep].float() / temperature).log_softmax(-1)
        token_logps = token_logps.gather(-1, target[keep].unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, rows, token_logps)
    return SequenceLogProbs(logps=sums, num_tokens=keep.sum(dim=1))


def last_hidden_state(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final hidden states (after the last norm), `[R, T, H]` or merged `[1, L, H]`, without the LM-head projection.

    `inputs`: the model's keyword arguments (`input_ids` with `attention_mask`, or merged `position_ids`).
    """
    inner = unwrap_model(model)
    base = getattr(inner, "base_model", None)
    if base is None or base is inner:
        raise TypeError(
            f"{type(inner).__name__} has no separate base model under its LM head: a causal LM such as "
            "LlamaForCausalLM or GPT2LMHeadModel is required"
        )
    if not _accepts_logits_to_keep(inner):
        # Without logits_to_keep the wrapper would build the full logits: call the base model directly.
        return _hidden_from_output(base(**inputs, use_cache=False))

    captured: dict[str, torch.Tensor] = {}

    def capture(_module: nn.Module, _args: Any, output: Any) -> None:
        captured["hidden"] = _hidden_from_output(output)

    handle = base.register_forward_hook(capture)
    try:
        no_position = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
        model(**inputs, use_cache=False, logits_to_keep=no_position)
    finally:
        handle.remove()
    return captured["hidden"]


def _hidden_from_output(output: Any) -> torch.Tensor:
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output[0]


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
