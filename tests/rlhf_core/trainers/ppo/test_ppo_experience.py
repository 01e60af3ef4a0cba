"""Experience: KL-penalised rewards, GAE, whitening, mini-batch order."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.rollout.logprobs import ResponseBatch
from rlhf_core.trainers.ppo.experience import build_experience, mini_batch_indices


def _batch(mask):
    mask = torch.tensor(mask)
    return ResponseBatch(torch.ones(mask.shape[0], 2, dtype=torch.long), torch.ones(mask.shape[0], 2, dtype=torch.long),
                         torch.ones_like(mask), mask)  # fmt: skip


def test_rewards_are_kl_penalty_plus_score_on_the_last_token():
    batch = _batch([[1, 1, 0]])
    logps = torch.tensor([[math.log(0.5), math.log(0.25), -9.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.25), -1.0]])
    exp = build_experience(batch, logprobs=logps, ref_logprobs=ref, values=torch.tensor([[0.5, 0.25, 7.0]]),
                           scores=torch.tensor([2.0]), kl_coef=0.1, kl_estimator="k1", gamma=1.0, lam=1.0,
                           whiten_advantages=False)  # fmt: skip
    # k1 per token: log 2, 0, (masked) 0
    assert exp.kl.tolist()[0] == pytest.approx([math.log(2), 0.0, 0.0])
    # rewards: -0.1 log 2 on token 0; 0 + score 2 on token 1 (the last real token); nothing on padding
    assert exp.rewards.tolist()[0] == pytest.approx([-0.1 * math.log(2), 2.0, 0.0])
    # gamma = lambda = 1: advantage = reward-to-go - value
    assert exp.advantages.tolist()[0] == pytest.approx([2 - 0.1 * math.log(2) - 0.5, 2.0 - 0.25, 0.0])
    assert exp.returns.tolist()[0] == pytest.approx([2 - 0.1 * math.log(2), 2.0, 0.0])
    assert exp.values[0, 2] == 0 and exp.logprobs[0, 2] == 0


def test_k3_is_penalised_and_advantages_are_whitened_over_real_tokens():
    batch = _batch([[1, 1, 1], [1, 0, 0]])
    torch.manual_seed(0)
    logps, ref = -torch.rand(2, 3), -torch.rand(2, 3)
    exp = build_experience(batch, logprobs=logps, ref_logprobs=ref, values=torch.zeros(2, 3),
                           scores=torch.tensor([1.0, -1.0]), kl_coef=0.5, kl_estimator="k3", gamma=1.0, lam=0.95)  # fmt: skip
    log_r = ref - logps
    expected_kl = (log_r.exp() - 1 - log_r) * batch.response_mask
    torch.testing.assert_close(exp.kl, expected_kl)
    real = exp.advantages[batch.response_mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.std().item() == pytest.approx(1.0, abs=1e-4)
    assert (exp.advantages[~batch.response_mask.bool()] == 0).all()


def test_one_token_batch_is_not_whitened():
    exp = build_experience(_batch([[1]]), logprobs=torch.zeros(1, 1), ref_logprobs=torch.zeros(1, 1),
                           values=torch.zeros(1, 1), scores=torch.tensor([3.0]), kl_coef=0.1, kl_estimator="k1",
                           gamma=1.0, lam=0.95)  # fmt: skip
    assert exp.advantages.item() == pytest.approx(3.0)


def test_mini_batches_cover_each_row_once_in_micro_batches():
    gen = torch.Generator().manual_seed(0)
    batches = list(mini_batch_indices(10, mini_batch_size=4, micro_batch_size=2, generator=gen))
    assert [[len(m) for m in mb] for mb in batches] == [[2, 2], [2, 2], [2]]
    rows = torch.cat([m for mb in batches for m in mb])
    assert sorted(rows.tolist()) == list(range(10))
