"""Response log-probs through the fused kernel equal a naive full-logits computation on unpadded rows."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.rollout.logprobs import ResponseBatch, response_logprobs


def _batch(prompts, responses, pad):
    p_width, r_width = max(map(len, prompts)), max(map(len, responses))
    b = ResponseBatch(
        torch.full((len(prompts), p_width), pad), torch.zeros(len(prompts), p_width, dtype=torch.long),
        torch.full((len(prompts), r_width), pad), torch.zeros(len(prompts), r_width, dtype=torch.long),
    )  # fmt: skip
    for i, (p, r) in enumerate(zip(prompts, responses)):
        b.prompt_ids[i, p_width - len(p) :], b.prompt_mask[i, p_width - len(p) :] = torch.tensor(p), 1
        b.response_ids[i, : len(r)], b.response_mask[i, : len(r)] = torch.tensor(r), 1
    return b


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_naive_log_softmax_on_each_unpadded_row(tiny, temperature):
    model, tok = tiny
    prompts = [[1, 4, 204, 361, 320, 342], [1, 4, 19], [1, 4, 204, 361]]
    responses = [[10, 11, 12, 2], [13, 2], [14, 15, 16, 17, 18]]
    batch = _batch(prompts, responses, tok.pad_token_id)
    logps = response_logprobs(model, batch, temperature=temperature, micro_batch_size=2)
    assert logps.shape == (3, 5)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + len(r) - 1]
        expected = (logits / temperature).log_softmax(-1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        torch.testing.assert_close(logps[i, : len(r)], expected, atol=1e-5, rtol=5e-4)
        assert (logps[i, len(r) :] == 0).all()  # masked positions are exactly 0
