"""Groups of completions: which prompts each generation answers, sampling them, and what reward functions see.

Every process walks the same seeded prompt order. A generation takes ``generation_batch_size / num_generations``
prompts, repeats each ``num_generations`` times (prompt-major, as TRL's RepeatSampler), and each process answers
its own contiguous slice of that list; rewards are gathered so that every group is normalised whole even when
its completions live on different processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf_core.data.collators import PromptCollator
from rlhf_core.data.formats import is_conversational
from rlhf_core.models.module_state import eval_mode
from rlhf_core.rollout.generation import generate
from rlhf_core.rollout.logprobs import ResponseBatch
from rlhf_core.rollout.sampling import SamplingParams, episode_seeds

__all__ = ["GroupBatch", "generation_rows", "local_examples", "local_seeds", "sample_completions"]

_HIDDEN_COLUMNS = ("prompt", "completion", "completion_ids", "input_ids", "attention_mask")


def generation_rows(
    num_prompts: int, *, prompts_per_generation: int, shuffle: bool, seed: int, skip: int = 0
) -> Iterator[list[int]]:
    """Endless dataset row indices, ``prompts_per_generation`` per generation, reshuffled per epoch from the seed.

    A last incomplete generation of an epoch is dropped; the first ``skip`` generations are passed over.
    """
    per_epoch = num_prompts // prompts_per_generation
    index, epoch = 0, 0
    while True:
        if shuffle:
            order = torch.randperm(
                num_prompts, generator=torch.Generator().manual_seed(seed + epoch)
            ).tolist()
        else:
            order = list(range(num_prompts))
        for start in range(0, per_epoch * prompts_per_generation, prompts_per_generation):
            if index >= skip:
                yield order[start : start + prompts_per_generation]
            index += 1
        epoch += 1


@dataclass
class GroupBatch:
    """This process's share of one generation: tokens, the texts reward functions see, and the other columns."""

    batch: ResponseBatch
    finished: torch.Tensor  # [L] bool: the completion ended with a stop token
    logprobs: torch.Tensor | None  # [L, R] sampling log-probs (unfiltered softmax at the temperature)
    prompts: list[Any]
    completions: list[Any]
    completion_ids: list[list[int]]
    columns: dict[str, list[Any]]


def local_examples(
    dataset: Any, rows: list[int], *, num_generations: int, rank: int, world: int
) -> list[dict]:
    """This process's contiguous slice of the prompt-major list of ``rows`` each repeated ``num_generations`` times."""
    repeated = [r for r in rows for _ in range(num_generations)]
    share = len(repeated) // world
    return [dataset[int(r)] for r in repeated[rank * share : (rank + 1) * share]]


def local_seeds(
    seed: int, generation: int, count: int, *, rank: int, offset: int = 0, stream: int | None = None
) -> list[int]:
    """The sampling seeds of this process's ``count`` completions of one generation (see `local_examples`).

    Completion ``i`` of the generation's prompt-major list (prompt index x num_generations + j, plus ``offset``)
    samples from its own seed, so the same generation samples the same completions on 1 process or split over
    several.
    """
    first = offset + rank * count
    return episode_seeds(seed, generation, range(first, first + count), stream=stream)


def _completion_texts(
    ids: torch.Tensor, mask: torch.Tensor, tokenizer: Any
) -> tuple[list[str], list[list[int]]]:
    kept = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    return tokenizer.batch_decode(kept, skip_special_tokens=True), kept


def prompt_repeats(examples: list[dict], num_generations: int) -> int:
    """``num_generations`` when ``examples`` are whole groups (each prompt's copies side by side), else 1."""
    if len(examples) % num_generations:
        return 1
    for start in range(0, len(examples), num_generations):
        first = examples[start]["input_ids"]
        if any(e["input_ids"] != first for e in examples[start + 1 : start + num_generations]):
            return 1
    return num_generations


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    examples: list[dict],
    *,
    tokenizer: Any,
    collator: PromptCollator,
    max_completion_length: int,
    sampling: SamplingParams,
    stop_token_ids: list[int],
    return_logprobs: bool,
    device: torch.device,
    num_generations: int = 1,
    row_seeds: list[int] | None = None,
) -> GroupBatch:
    """Sample one completion per example from causal LM ``model`` with PPO's decode loop, in one chunk.

    Whole groups of ``num_generations`` copies of a prompt are prefilled once (``generate(prompt_repeats=...)``).
    ``row_seeds`` (one per example, `local_seeds`): each completion samples from its own seed.
    """
    repeats = prompt_repeats(examples, num_generations)
    collated = collator(examples[::repeats])
    prompt_ids, prompt_mask = collated["input_ids"].to(device), collated["attention_mask"].to(device)
    with eval_mode(model):
        out = generate(
            model, prompt_ids, prompt_mask, max_new_tokens=max_completion_length, pad_token_id=collator.pad_token_id,
            stop_token_ids=stop_token_ids, sampling=sampling, return_logprobs=return_logprobs,
            prompt_repeats=repeats, row_seeds=row_seeds,
        )  # fmt: skip
    batch = ResponseBatch(
        out.prompt_ids, out.prompt_mask.long(), out.response_ids.long(), out.response_mask.long()
    )
    texts, completion_ids = _completion_texts(batch.response_ids, batch.response_mask, tokenizer)
    prompts = [e["prompt"] for e in examples]
    if is_conversational(prompts[0]):
        completions: list[Any] = [[{"role": "assistant", "content": text}] for text in texts]
    else:
        completions = texts
    columns = {key: [e.get(key) for e in examples] for key in examples[0] if key not in _HIDDEN_COLUMNS}
    return GroupBatch(batch, _finished(batch, stop_token_ids), out.logprobs, prompts, completions, completion_ids,
                      columns)  # fmt: skip


def _finished(batch: ResponseBatch, stop_token_ids: list[int]) -> torch.Tensor:
    """[L] bool: the completion ended with a stop token (else it was cut at max_completion_length)."""
    if not stop_token_ids:
        return torch.zeros(len(batch), dtype=torch.bool, device=batch.response_ids.device)
    stops = torch.as_tensor(stop_token_ids, device=batch.response_ids.device)
    return (torch.isin(batch.response_ids, stops) & (batch.response_mask == 1)).any(-1)
