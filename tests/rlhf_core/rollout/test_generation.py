"""KV-cache sampling loop: equal to unpadded greedy decoding, stop handling, early exit, min_new_tokens."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.rollout.generation import generate, position_ids_from_mask, truncate_after_stop
from rlhf_core.rollout.logprobs import ResponseBatch, response_logprobs
from rlhf_core.rollout.sampling import SamplingParams

GREEDY = SamplingParams(do_sample=False)


def test_truncate_after_stop_by_hand():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    out, mask = truncate_after_stop(ids, [2], pad_token_id=0)
    # the stop token itself is kept and masked in; everything after it becomes padding
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist() == [
        [0, 0, 0, 1],
        [0, 1, 2, 3],
    ]


def test_left_padded_batch_matches_unpadded_greedy_decoding(tiny, prompts):
    model, tok = tiny
    ids, mask, rows = prompts
    out = generate(model, ids, mask, max_new_tokens=12, pad_token_id=tok.pad_token_id, sampling=GREEDY)
    assert out.response_ids.shape == (3, 12) and out.response_mask.all()
    for i, row in enumerate(rows):
        # reference: transformers' own greedy decoding of the row alone, no padding, no early stop
        ref = model.generate(
            row[None], max_new_tokens=12, min_new_tokens=12, do_sample=False, eos_token_id=None
        )
        assert out.response_ids[i].tolist() == ref[0, len(row) :].tolist(), f"row {i}"
    assert out.sequences.shape == (3, ids.shape[1] + 12)


def test_stop_token_masks_the_rest_and_ends_the_loop_early(tiny, prompts):
    model, tok = tiny
    ids, mask, _ = prompts
    free = generate(model, ids, mask, max_new_tokens=8, pad_token_id=tok.pad_token_id, sampling=GREEDY)
    # make each row's third token a stop token: every row must stop there or earlier
    stops = sorted(set(free.response_ids[:, 2].tolist()))
    out = generate(
        model,
        ids,
        mask,
        max_new_tokens=8,
        pad_token_id=tok.pad_token_id,
        stop_token_ids=stops,
        sampling=GREEDY,
    )
    assert out.response_ids.shape[1] <= 3  # the loop stopped once every row had stopped
    assert out.finished.all()
    for i in range(3):
        length = int(out.response_mask[i].sum())
        assert out.response_ids[i, length - 1].item() in stops  # the stop token is kept...
        assert (out.response_ids[i, length:] == tok.pad_token_id).all()  # ...and what follows is padding
        assert out.response_ids[i, :length].tolist() == free.response_ids[i, :length].tolist()


def test_min_new_tokens_forbids_an_early_stop(tiny, prompts):
    model, tok = tiny
    ids, mask, _ = prompts
    free = generate(model, ids, mask, max_new_tokens=4, pad_token_id=tok.pad_token_id, sampling=GREEDY)
    first = sorted(set(free.response_ids[:, 0].tolist()))
    out = generate(model, ids, mask, max_new_tokens=4, pad_token_id=tok.pad_token_id, stop_token_ids=first,
                   min_new_tokens=2, sampling=GREEDY)  # fmt: skip
    assert (out.response_lengths >= 2).all()
    assert not torch.isin(out.response_ids[:, :2], torch.tensor(first)).any()


def test_sampling_is_reproducible_with_a_generator_and_validates_length(tiny, prompts):
    model, tok = tiny
    ids, mask, _ = prompts

    def draw():
        gen = torch.Generator().manual_seed(7)
        return generate(model, ids, mask, max_new_tokens=6, pad_token_id=tok.pad_token_id,
                        sampling=SamplingParams(temperature=0.9, top_k=20), generator=gen).response_ids  # fmt: skip

    assert torch.equal(draw(), draw())
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ids, mask, max_new_tokens=0, pad_token_id=tok.pad_token_id)


def test_sampling_log_probs_equal_a_separate_scoring_pass(tiny, prompts):
    model, tok = tiny
    ids, mask, _ = prompts
    torch.manual_seed(3)
    out = generate(model, ids, mask, max_new_tokens=10, pad_token_id=tok.pad_token_id,
                   stop_token_ids=[tok.eos_token_id], sampling=SamplingParams(temperature=0.7, top_k=50),
                   return_logprobs=True)  # fmt: skip
    batch = ResponseBatch(out.prompt_ids, out.prompt_mask, out.response_ids, out.response_mask)
    # the full softmax at the sampling temperature (not the top-k-filtered one), as PPO's training pass sees it
    rescored = response_logprobs(model, batch, temperature=0.7)
    torch.testing.assert_close(out.logprobs, rescored, atol=1e-4, rtol=1e-4)
    assert (out.logprobs[out.response_mask == 0] == 0).all()


def test_row_seeds_make_a_rows_sample_independent_of_its_batch(tiny, prompts):
    """PPO on N processes samples what 1 process samples (each rank holds a slice of the global batch): a row's
    response depends on its seed, not on the rows beside it, their padding or their order."""
    from rlhf_core.rollout.sampling import episode_seeds

    model, tok = tiny
    ids, mask, rows = prompts
    seeds = episode_seeds(0, 1, range(3))
    assert len(set(seeds)) == 3 and episode_seeds(0, 1, [2]) == seeds[2:]
    assert episode_seeds(0, 2, [2]) != seeds[2:]  # another update draws afresh
    sampling = SamplingParams(temperature=1.0)

    def sample(ids, mask, row_seeds):
        return generate(model, ids, mask, max_new_tokens=8, pad_token_id=tok.pad_token_id, sampling=sampling,
                        row_seeds=row_seeds).response_ids  # fmt: skip

    together = sample(ids, mask, seeds)
    for i, row in enumerate(rows):  # each row alone, unpadded, after the global generator moved on
        torch.manual_seed(100 + i)
        assert sample(row[None], None, [seeds[i]])[0].tolist() == together[i].tolist(), f"row {i}"
    reversed_rows = sample(ids.flip(0), mask.flip(0), seeds[::-1])
    assert torch.equal(reversed_rows.flip(0), together)
    assert not torch.equal(sample(ids, mask, episode_seeds(1, 1, range(3))), together)  # the seeds are used


def test_prompt_repeats_prefill_once_and_sample_as_the_repeated_batch(tiny, prompts):
    model, tok = tiny
    ids, mask, _ = prompts

    def draw(prompt_ids, prompt_mask, repeats):
        gen = torch.Generator().manual_seed(11)
        return generate(model, prompt_ids, prompt_mask, max_new_tokens=8, pad_token_id=tok.pad_token_id,
                        stop_token_ids=[tok.eos_token_id], sampling=SamplingParams(temperature=1.0),
                        generator=gen, return_logprobs=True, prompt_repeats=repeats)  # fmt: skip

    once = draw(ids, mask, 3)
    repeated = draw(ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), 1)
    assert once.response_ids.shape[0] == 9
    assert torch.equal(once.prompt_ids, repeated.prompt_ids)
    assert torch.equal(once.response_ids, repeated.response_ids)  # the same draws from the same distributions
    assert torch.equal(once.response_mask, repeated.response_mask)
    torch.testing.assert_close(once.logprobs, repeated.logprobs, atol=1e-5, rtol=1e-5)
    # the copies of a prompt are sampled apart
    assert not torch.equal(once.response_ids[0], once.response_ids[1])
