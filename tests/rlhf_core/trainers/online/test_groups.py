"""Sampling a generation's completions: each completion's sample depends on its place in the generation alone."""

from __future__ import annotations

import torch

from rlhf_core.data.collators import PromptCollator
from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.models.tiny import TINY_MODEL
from rlhf_core.rollout.sampling import SamplingParams
from rlhf_core.trainers.online.groups import local_seeds, sample_completions


def test_local_seeds_of_two_ranks_are_one_ranks_seeds_split():
    whole = local_seeds(0, 3, 8, rank=0)
    assert local_seeds(0, 3, 4, rank=0) + local_seeds(0, 3, 4, rank=1) == whole
    assert len(set(whole)) == 8
    assert local_seeds(0, 4, 8, rank=0) != whole  # another generation samples anew
    assert local_seeds(0, 3, 8, rank=0, stream=1) != whole  # evaluation's stream is apart from training's
    assert local_seeds(0, 3, 4, rank=0, offset=4) == whole[4:]


def test_a_generation_split_over_two_processes_samples_the_same_completions():
    model, tokenizer = load_causal_lm(TINY_MODEL).eval(), load_tokenizer(TINY_MODEL)
    texts = [
        "Name two fruits.",
        "List three colours for a flag, please.",
    ]  # different lengths: padding differs
    examples = []
    for text in texts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        examples += [{"prompt": text, "input_ids": list(ids["input_ids"])}] * 4  # prompt-major groups of 4

    def sample(rows, seeds):
        return sample_completions(
            model, rows, tokenizer=tokenizer, collator=PromptCollator(tokenizer.pad_token_id),
            max_completion_length=12, sampling=SamplingParams(temperature=1.0), stop_token_ids=[],
            return_logprobs=True, device=torch.device("cpu"), num_generations=4, row_seeds=seeds,
        )  # fmt: skip

    torch.manual_seed(0)
    whole = sample(examples, local_seeds(0, 0, 8, rank=0))
    torch.manual_seed(1)  # the global generator is not what samples
    halves = [sample(examples[r * 4 : (r + 1) * 4], local_seeds(0, 0, 4, rank=r)) for r in (0, 1)]
    assert whole.completion_ids == halves[0].completion_ids + halves[1].completion_ids
    assert len(set(map(tuple, whole.completion_ids))) > 1  # really sampled, not one greedy answer
    split_logps = torch.cat([h.logprobs for h in halves])
    torch.testing.assert_close(whole.logprobs, split_logps, atol=1e-5, rtol=0)
