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

from rlhf_core.data.collators import IGNORE_INDEX
from rlhf_core.kernels import fused_linear_logprobs
from rlhf_core.losses.dpo import ld_token_weights
from rlhf_core.models.lm_head import fusable_lm_head
from rlhf_core.trainers.model_setup import unwrap_model
from rlhf_core.trainers.padding_free import RowLayout

__all__ = ["SequenceLogProbs", "completion_logprobs", "last_hidden_state"]


class SequenceLogProbs(NamedTuple):
    """logps: `[R]` summed log-prob of each row's completion tokens; num_tokens: `[R]` how many there are.

    With ``with_log_sum_sq=True`` (WPO) also, per completion token in row-major order: ``token_logps`` `[N]`,
    ``rows`` `[N]` and ``log_sum_sq`` `[N]` = ``log sum_v p(v)^2`` (detached).
    """

    logps: torch.Tensor
    num_tokens: torch.Tensor
    token_logps: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    log_sum_sq: torch.Tensor | None = None


def completion_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    layout: RowLayout | None = None,
    ld_alpha: float | None = None,
    with_log_sum_sq: bool = False,
) -> SequenceLogProbs:
    """Per-row sums of `log p(label_t | tokens < t)` over the positions where `labels != -100`.

    Args:
        model: a causal LM (possibly wrapped by PEFT, DDP or accelerate).
        input_ids, attention_mask: `[R, T]`, right padded.
        labels: `[R, T]` aligned with `input_ids` (not shifted), -100 on prompt and padding.
        chunk_size: rows per chunk of the fused kernel.
        layout: how the rows go through the model (default: the padded batch as it is; see
            `preference_padding_free`).
        ld_alpha: LD-DPO (`rlhf_core.losses.dpo.ld_token_weights`; rows are chosen then rejected): the tokens past
            each pair's shared length count ``ld_alpha`` in the sums. None: plain sums.
        with_log_sum_sq: also return the per-token ``log sum_v p(v)^2`` WPO needs (one no-grad vocabulary pass).
    """
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    rows, cols = keep.nonzero(as_tuple=True)  # row-major: the order of target[keep]
    head = fusable_lm_head(unwrap_model(model))
    if head is not None:
        layout = layout or RowLayout(merged=False)
        hidden = last_hidden_state(model, layout.model_inputs(input_ids, attention_mask))
        states = layout.gather(hidden, rows, cols)
        token_logps = fused_linear_logprobs(
            states, head.weight, target[keep], head.bias, chunk_size=chunk_size, temperature=temperature
        )
        log_sum_sq = (
            _log_sum_sq_probs(lambda a, b: states[a:b] @ head.weight.T + (0 if head.bias is None else head.bias),
                              states.shape[0], temperature)
            if with_log_sum_sq else None
        )  # fmt: skip
    else:
        # A wrapped head (e.g. LoRA on lm_head) hides its effective weight from the kernel: use its logits.
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][
            keep
        ]
        token_logps = (logits.float() / temperature).log_softmax(-1)
        token_logps = token_logps.gather(-1, target[keep].unsqueeze(-1)).squeeze(-1)
        log_sum_sq = (
            _log_sum_sq_probs(lambda a, b: logits[a:b], logits.shape[0], temperature)
            if with_log_sum_sq
            else None
        )
    num_tokens = keep.sum(dim=1)
    weighted = token_logps if ld_alpha is None else token_logps * ld_token_weights(rows, num_tokens, ld_alpha)
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, rows, weighted.to(token_logps.dtype))
    if not with_log_sum_sq:
        return SequenceLogProbs(logps=sums, num_tokens=num_tokens)
    return SequenceLogProbs(sums, num_tokens, token_logps.detach(), rows, log_sum_sq)


_SUM_SQ_CHUNK = 1024  # tokens per [chunk, V] logits block of the WPO pass


@torch.no_grad()
def _log_sum_sq_probs(logits_of: Any, n: int, temperature: float) -> torch.Tensor:
    """``log sum_v softmax(z / temperature)_v^2 = lse(2 z') - 2 lse(z')`` per token, ``[chunk, V]`` at a time;
    ``logits_of(a, b)`` gives the logits of tokens ``a:b``."""
    out = []
    for start in range(0, n, _SUM_SQ_CHUNK):
        z = logits_of(start, min(start + _SUM_SQ_CHUNK, n)).float() / temperature
        out.append(torch.logsumexp(2 * z, dim=-1) - 2 * torch.logsumexp(z, dim=-1))
    return torch.cat(out) if out else torch.zeros(0)


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
