"""Log-probabilities of sampled response tokens, straight from the last hidden state through the fused kernel.

The sequence layout everywhere: prompt [B, P] left padded, then response [B, R] right padded. The hidden state
at position ``P - 1 + t`` predicts response token ``t`` (and, for a value head, is the state whose value is
estimated before emitting it), so one body forward gives both. ``fused_linear_logprobs`` projects those hidden
states onto the vocabulary chunk by chunk and never builds the [tokens, vocab] logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlhf_core.data.collators import IGNORE_INDEX
from rlhf_core.kernels import fused_linear_logprobs
from rlhf_core.models.lm_head import is_plain_linear, lm_head_of
from rlhf_core.models.value_head import backbone
from rlhf_core.rollout.generation import position_ids_from_mask

__all__ = [
    "ResponseBatch",
    "lm_head_of",
    "policy_logprobs",
    "response_hidden_states",
    "response_logprobs",
    "token_logprobs",
]


@dataclass
class ResponseBatch:
    """Prompt [B, P] (left padded) and response [B, R] (right padded) token ids with their masks.

    ``response_mask`` marks the real response tokens (attended; a prefix of each row). ``loss_mask``, when given,
    marks the ones to learn from (classic ``step(response_masks=...)``: a tool output or another speaker's turn
    inside the response is context, attended but not trained on); ``learn_mask`` is whichever applies.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    loss_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def learn_mask(self) -> torch.Tensor:
        return self.response_mask if self.loss_mask is None else self.loss_mask

    def select(self, rows: torch.Tensor | slice) -> ResponseBatch:
        loss_mask = None if self.loss_mask is None else self.loss_mask[rows]
        return ResponseBatch(
            self.prompt_ids[rows],
            self.prompt_mask[rows],
            self.response_ids[rows],
            self.response_mask[rows],
            loss_mask,
        )

    def trimmed(self) -> tuple[ResponseBatch, int]:
        """Drop prompt columns that are padding in every row and response columns past the last real token.

        Returns the smaller batch and the original response width (to pad results back to it).
        """
        width = self.response_ids.shape[1]
        attended = self.prompt_mask.any(0).nonzero()
        first = int(attended[0]) if attended.numel() else self.prompt_mask.shape[1] - 1
        real = self.response_mask.any(0).nonzero()
        longest = int(real[-1]) + 1 if real.numel() else 1
        batch = ResponseBatch(
            self.prompt_ids[:, first:],
            self.prompt_mask[:, first:],
            self.response_ids[:, :longest],
            self.response_mask[:, :longest],
            None if self.loss_mask is None else self.loss_mask[:, :longest],
        )
        return batch, width


def response_hidden_states(body: nn.Module, batch: ResponseBatch) -> torch.Tensor:
    """Run ``body`` (a transformer body, see ``models.value_head.backbone``) on prompt + response.

    Returns the hidden states that predict the response tokens: [B, R, H].
    """
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    prompt_len, response_len = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    return out.last_hidden_state[:, prompt_len - 1 : prompt_len - 1 + response_len]


def token_logprobs(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(lm_head(hidden) / temperature)[labels] where ``mask``, 0 elsewhere.

    hidden: [B, R, H]; labels, mask: [B, R]. Returns (logps [B, R], entropy [B, R] detached, or None), fp32.
    A plain ``nn.Linear`` head goes through the fused kernel; a wrapped one (LoRA on ``lm_head``, PEFT's
    ``modules_to_save`` copy) is applied as the module it is, so the log-probs use the same effective head as
    sampling does (its ``.weight`` would be the base weight).
    """
    if not is_plain_linear(lm_head):
        return _module_head_logprobs(hidden, lm_head, labels, mask, temperature, return_entropy)
    batch, length, width = hidden.shape
    flat_labels = labels.masked_fill(mask == 0, IGNORE_INDEX).reshape(-1)
    out = fused_linear_logprobs(
        hidden.reshape(-1, width),
        lm_head.weight,
        flat_labels,
        getattr(lm_head, "bias", None),
        temperature=temperature,
        return_entropy=return_entropy,
    )
    if return_entropy:
        logps, entropy = out
        return logps.view(batch, length), entropy.view(batch, length)
    return out.view(batch, length), None


def policy_logprobs(
    policy: nn.Module,
    batch: ResponseBatch,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(log-probs [B, R], entropies [B, R] or None, the hidden states [B, R, H] they came from) of ``batch``'s
    responses under causal LM ``policy``, with gradients. ``hidden``: those states when the caller has them."""
    if hidden is None:
        hidden = response_hidden_states(backbone(policy), batch)
    logps, entropy = token_logprobs(
        hidden, lm_head_of(policy), batch.response_ids, batch.response_mask,
        temperature=temperature, return_entropy=return_entropy,
    )  # fmt: skip
    return logps, entropy, hidden


def _module_head_logprobs(hidden, lm_head, labels, mask, temperature, return_entropy):
    """`token_logprobs` through ``lm_head(hidden)``: builds the [B, R, V] logits, for heads the kernel cannot see."""
    keep = mask != 0
    logps = (lm_head(hidden).float() / temperature).log_softmax(-1)
    picked = logps.gather(-1, labels.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1) * keep
    if not return_entropy:
        return picked, None
    entropy = -(logps.exp() * logps).sum(-1).detach() * keep
    return picked, entropy


def pad_columns(x: torch.Tensor, width: int, value: float = 0.0) -> torch.Tensor:
    """Right-pad [B, R'] to [B, width]."""
    missing = width - x.shape[1]
    return x if missing <= 0 else torch.nn.functional.pad(x, (0, missing), value=value)


@torch.no_grad()
def response_logprobs(
    model: nn.Module,
    batch: ResponseBatch,
    *,
    temperature: float = 1.0,
    micro_batch_size: int = 16,
) -> torch.Tensor:
    """Log-probs [B, R] of ``batch``'s response tokens under causal LM ``model`` (0 on masked tokens).

    Runs under no_grad in micro-batches of ``micro_batch_size`` rows; each micro-batch is trimmed of padding
    columns first. ``temperature`` must be the sampling temperature, so the log-probs are those of the
    distribution the tokens were drawn from.
    """
    body, head = backbone(model), lm_head_of(model)
    chunks = []
    for start in range(0, len(batch), micro_batch_size):
        part, width = batch.select(slice(start, start + micro_batch_size)).trimmed()
        hidden = response_hidden_states(body, part)
        logps, _ = token_logprobs(
            hidden, head, part.response_ids, part.response_mask, temperature=temperature
        )
        chunks.append(pad_columns(logps, width))
    return torch.cat(chunks, dim=0)
