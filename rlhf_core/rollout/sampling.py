"""Next-token sampling: temperature, top-k and nucleus (top-p) filtering on a [B, V] logits row."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token.

    temperature: logits are divided by it before softmax (log-probs for PPO must use the same value).
    top_k: keep the k most likely tokens (0 or None: no limit). top_p: keep the smallest set of tokens
    whose probability mass reaches p (1.0: no limit). do_sample=False: greedy (argmax).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no limit), got {self.top_k}")


def top_k_top_p_filtering(
    logits: torch.Tensor,
    top_k: int | None = 0,
    top_p: float = 1.0,
    filter_value: float = -float("inf"),
    min_tokens_to_keep: int = 1,
) -> torch.Tensor:
    """Set to ``filter_value`` the logits outside the top-k and outside the top-p nucleus. [..., V]."""
    logits = logits.clone()
    vocab = logits.shape[-1]
    if top_k:
        k = min(max(int(top_k), min_tokens_to_keep), vocab)
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, filter_value)
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass strictly before it already reaches top_p, so the token that
        # crosses the threshold stays in the nucleus.
        remove_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        remove_sorted[..., :min_tokens_to_keep] = False
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, filter_value)
    return logits


def sample_next_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    *,
    logprobs: torch.Tensor | None = None,
    draw: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token per row from ``logits`` [B, V] -> [B] long.

    ``logprobs``: ``log_softmax(logits / temperature)`` when the caller has it already (it is reused when no
    top-k/top-p filter applies, saving a pass over the vocabulary). ``draw``: [B] uniforms in [0, 1) to sample
    with (`row_uniforms`) instead of drawing from ``generator``.
    """
    if not params.do_sample:
        return logits.argmax(dim=-1)
    filtered = bool(params.top_k) or params.top_p < 1.0
    if logprobs is not None and not filtered:
        probs = logprobs.exp()
    else:
        scores = logits.float()
        if params.temperature != 1.0:
            scores = scores / params.temperature
        if filtered:
            scores = top_k_top_p_filtering(scores, top_k=params.top_k, top_p=params.top_p)
        probs = torch.softmax(scores, dim=-1)
    return sample_from_probs(probs, generator, draw=draw)


def sample_from_probs(
    probs: torch.Tensor, generator: torch.Generator | None = None, *, draw: torch.Tensor | None = None
) -> torch.Tensor:
    """Inverse-CDF sampling: [B, V] probabilities (need not sum exactly to 1) -> [B] token ids.

    One uniform draw per row and a binary search in the cumulative sum. torch.multinomial (and the
    exponential/Gumbel tricks) cost ~20x more on a 30k-token vocabulary on the CPU, which made sampling as
    slow as the model's forward pass. Zero-probability tokens (filtered out) can never be drawn.
    """
    cdf = probs.cumsum(dim=-1)
    if draw is None:
        draw = torch.rand(cdf.shape[:-1] + (1,), generator=generator, dtype=cdf.dtype, device=cdf.device)
    else:
        draw = draw.to(device=cdf.device, dtype=cdf.dtype).reshape(cdf.shape[:-1] + (1,))
    token = torch.searchsorted(cdf, draw * cdf[..., -1:], right=True)
    return token.clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


def episode_seeds(
    seed: int, update: int, positions: Iterable[int], *, stream: int | None = None
) -> list[int]:
    """One sampling seed per episode, from (run seed, update, the episode's place in the global batch).

    A rollout sampled from one generator per process depends on how the global batch is split: with 2 processes
    each rank draws the first numbers of the same stream for its own rows, so 2 ranks sample other responses
    than 1 process with the whole batch. Seeds per episode make an episode's sample independent of the layout.
    ``stream`` (a non-negative int) keeps other samplings of one run (e.g. evaluation's) apart from training's.
    """
    mask = 2**64 - 1  # SeedSequence takes non-negative entropy
    head = [seed & mask] if stream is None else [seed & mask, stream]
    return [
        int(np.random.SeedSequence([*head, update, position]).generate_state(1, np.uint64)[0])
        for position in positions
    ]


def row_uniforms(
    row_seeds: Sequence[int], steps: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``steps`` uniform draws per row from a generator of its own, seeded with its seed: [B] seeds -> [B, steps].

    Row i's draws depend on ``row_seeds[i]`` alone: not on the other rows of its batch, its chunk or its process.
    """
    draws = [torch.rand(steps, generator=torch.Generator().manual_seed(int(s))) for s in row_seeds]
    return torch.stack(draws).to(device) if draws else torch.empty(0, steps, device=device)
