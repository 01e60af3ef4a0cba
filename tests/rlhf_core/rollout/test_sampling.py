"""Next-token sampling: temperature, top-k, top-p, greedy."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.rollout.sampling import SamplingParams, sample_next_token


def _frequencies(logits: torch.Tensor, params: SamplingParams, n: int = 20000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    draws = sample_next_token(logits.expand(n, -1), params, gen)
    return torch.bincount(draws, minlength=logits.shape[-1]).float() / n


def test_temperature_sharpens_the_distribution_as_softmax_of_scaled_logits():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    # T = 0.5 squares the probabilities before renormalising: (0.36, 0.09, 0.01) / 0.46
    expected = torch.tensor([0.36, 0.09, 0.01]) / 0.46
    freq = _frequencies(logits, SamplingParams(temperature=0.5))
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


def test_top_k_and_top_p_restrict_the_support_and_renormalise():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    freq = _frequencies(logits, SamplingParams(top_k=2))
    assert freq[2:].sum() == 0
    torch.testing.assert_close(freq[:2], torch.tensor([0.625, 0.375]), atol=0.015, rtol=0)
    # nucleus 0.9: 0.5 + 0.3 = 0.8 < 0.9, so the 0.15 token is needed; the 0.05 one is not
    freq = _frequencies(logits, SamplingParams(top_p=0.9))
    assert freq[3] == 0 and freq[2] > 0.1


def test_reused_log_probs_give_the_same_distribution():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    params = SamplingParams(temperature=0.5)
    n = 20000
    logprobs = torch.log_softmax(logits / 0.5, dim=-1).expand(n, -1)
    draws = sample_next_token(
        logits.expand(n, -1), params, torch.Generator().manual_seed(1), logprobs=logprobs
    )
    freq = torch.bincount(draws, minlength=3).float() / n
    torch.testing.assert_close(freq, torch.tensor([0.36, 0.09, 0.01]) / 0.46, atol=0.015, rtol=0)


def test_greedy_and_validation():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 0.0]])
    assert sample_next_token(logits, SamplingParams(do_sample=False)).tolist() == [1, 0]
    assert sample_next_token(logits, SamplingParams(top_k=1)).tolist() == [1, 0]
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
