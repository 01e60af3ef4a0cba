"""Per-token log-probs, entropy and accuracy of the SFT targets, with or without building the logits.

Both paths select the loss positions first (labels shifted by one, -100 dropped), so padding and prompt tokens
cost nothing in the LM head:

- `fused_token_stats`: the model runs with ``logits_to_keep=1`` (one logit row per sequence instead of T) and
  returns its last hidden state; the fused kernels turn ``[N, H]`` hidden states and the ``[V, H]`` LM-head
  weight into the loss chunk by chunk, never holding ``[N, V]``. On steps that report statistics
  `rlhf_core.kernels.fused_linear_logprobs` gives per-token log-probs and entropies (its backward recomputes each
  chunk's logits: 4 LM-head matmuls); on the other steps `fused_linear_cross_entropy(reduction="sum")` computes
  the gradients during the forward (3 matmuls, as naive), which is the same loss and gradient.
- `plain_token_stats`: the model's own logits (``log_softmax`` + ``gather``): the reference, and the fallback for
  heads the kernel cannot see through (e.g. LoRA on the LM head).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Rows per no-grad argmax chunk: [128, 30k] fp32 is 15 MB.
_ARGMAX_CHUNK = 128


@dataclass
class TokenStats:
    """What the SFT loss and its metrics need about the N target tokens of a micro-batch.

    ``summed_nll``: differentiable scalar ``-sum(logps)``. ``logps [N]``: per-token log-probs (None on the fast
    path). ``entropy [N]`` (detached) and ``correct [N]`` (bool): None when not measured.
    """

    summed_nll: torch.Tensor
    logps: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    correct: torch.Tensor | None = None


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (every causal LM of transformers v5 does).

    A PEFT wrapper forwards its keyword arguments to the base model, so the base model's signature decides.
    """
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        model = get_base_model()
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _forward(model: torch.nn.Module, inputs: dict[str, Any], **kwargs: Any) -> Any:
    return model(**inputs, use_cache=False, **kwargs)


def fused_token_stats(
    model: torch.nn.Module,
    head: torch.nn.Linear,
    inputs: dict[str, Any],
    shift_labels: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    chunk_size: int | None = None,
    measure_stats: bool = False,
) -> TokenStats:
    """Stats of the targets ``shift_labels[loss_mask]`` from the last hidden state through the fused kernels.

    ``model`` is what the trainer calls (possibly DDP/PEFT-wrapped: the forward must go through it); ``head`` is
    the unwrapped model's LM head. ``shift_labels``/``loss_mask``: ``[B, T-1]``. ``measure_stats``: also return
    per-token log-probs, entropy and argmax correctness (slower: see the module doc).
    """
    from rlhf_core.kernels import fused_linear_cross_entropy, fused_linear_logprobs

    outputs = _forward(model, inputs, output_hidden_states=True, logits_to_keep=1)
    hidden = outputs.hidden_states[-1][:, :-1][loss_mask]
    targets = shift_labels[loss_mask]
    if not measure_stats:
        summed = fused_linear_cross_entropy(
            hidden, head.weight, targets, head.bias, chunk_size=chunk_size, reduction="sum"
        )
        return TokenStats(summed_nll=summed)
    logps, entropy = fused_linear_logprobs(
        hidden, head.weight, targets, head.bias, chunk_size=chunk_size, return_entropy=True
    )
    correct = chunked_argmax(hidden.detach(), head.weight.detach(), head.bias) == targets
    return TokenStats(summed_nll=-logps.sum(), logps=logps, entropy=entropy.detach(), correct=correct)


def plain_token_stats(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    shift_labels: torch.Tensor,
    loss_mask: torch.Tensor,
) -> TokenStats:
    """Stats of the targets from the model's full logits (``log_softmax`` + ``gather``)."""
    logits = _forward(model, inputs).logits[:, :-1][loss_mask].float()
    targets = shift_labels[loss_mask]
    logp_all = logits.log_softmax(-1)
    logps = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        correct = logits.argmax(-1) == targets
    return TokenStats(summed_nll=-logps.sum(), logps=logps, entropy=entropy, correct=correct)


@torch.no_grad()
def chunked_argmax(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``argmax(hidden @ weight.T + bias, -1)`` for ``hidden [N, H]``, holding ``[chunk, V]`` logits at a time."""
    out = torch.empty(hidden.shape[0], dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[0], _ARGMAX_CHUNK):
        logits = hidden[start : start + _ARGMAX_CHUNK] @ weight.T
        if bias is not None:
            logits = logits + bias
        out[start : start + _ARGMAX_CHUNK] = logits.argmax(-1)
    return out
