"""PPO losses against numbers worked out by hand (the working is in each test)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.losses.ppo import (
    KL_ESTIMATORS,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
)


def t(*rows):
    """One list -> a 1-D float64 tensor; several lists -> a 2-D one (rows)."""
    return torch.tensor(rows[0] if len(rows) == 1 else rows, dtype=torch.float64)


def test_masked_mean_ignores_masked_positions_and_reduces_along_an_axis():
    values = t([1.0, 2.0, 100.0], [4.0, 6.0, 8.0])
    mask = t([1, 1, 0], [1, 1, 1])
    # (1 + 2 + 4 + 6 + 8) / 5 = 4.2
    assert masked_mean(values, mask).item() == pytest.approx(4.2)
    # row means: (1 + 2) / 2 = 1.5 and (4 + 6 + 8) / 3 = 6
    assert masked_mean(values, mask, axis=1).tolist() == pytest.approx([1.5, 6.0])
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_masked_var_is_bessel_corrected():
    values = t([1.0, 2.0, 3.0, 50.0])
    mask = t([1, 1, 1, 0])
    # mean 2; squared deviations 1, 0, 1 -> sum 2; unbiased 2 / (3 - 1) = 1, biased 2 / 3
    assert masked_var(values, mask).item() == pytest.approx(1.0)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(values, t([0, 1, 0, 0]))


def test_masked_whiten_centres_and_scales_over_the_mask():
    values = t([1.0, 2.0, 3.0, 50.0])
    mask = t([1, 1, 1, 0])
    # mean 2, unbiased std 1 -> (v - 2) / 1
    whitened = masked_whiten(values, mask)
    assert whitened[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    # shift_mean=False keeps the mean: (v - 2) / 1 + 2
    assert masked_whiten(values, mask, shift_mean=False)[:3].tolist() == pytest.approx(
        [1.0, 2.0, 3.0], abs=1e-6
    )


def test_kl_estimators_on_one_token():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # k1 = log 0.5 - log 0.25 = log 2
    assert kl_estimate(logp, ref, estimator="k1").item() == pytest.approx(math.log(2), rel=1e-6)
    # k2 = (log 2)^2 / 2
    assert kl_estimate(logp, ref, estimator="k2").item() == pytest.approx(0.5 * math.log(2) ** 2, rel=1e-6)
    # k3: r = 0.25 / 0.5 = 0.5 -> (0.5 - 1) - log 0.5 = log 2 - 0.5
    assert kl_estimate(logp, ref, estimator="k3").item() == pytest.approx(math.log(2) - 0.5, rel=1e-6)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(logp, ref, estimator="k4")


def test_k1_and_k3_are_unbiased_and_k3_never_negative():
    # p = (0.5, 0.5), q = (0.25, 0.75): KL(p||q) = 0.5 log 2 + 0.5 log(2/3)
    p, q = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64)
    true_kl = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    for name in ("k1", "k3"):
        expectation = (p * KL_ESTIMATORS[name](p.log(), q.log())).sum().item()
        assert expectation == pytest.approx(true_kl, rel=1e-9), name
    # per sample k1 is negative on the second outcome (log(0.5 / 0.75) < 0); k3 is not
    assert KL_ESTIMATORS["k1"](p.log(), q.log())[1] < 0
    assert (KL_ESTIMATORS["k3"](p.log(), q.log()) >= 0).all()


def test_gae_three_steps_by_hand():
    rewards = t([0.0, 0.0, 1.0], [0.0, 2.0, 5.0])
    values = t([0.5, 0.6, 0.7], [1.0, 1.0, 9.0])
    mask = t([1, 1, 1], [1, 1, 0])
    out = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0 (gamma * lam = 0.72):
    #   t=2: delta = 1 + 0.9 * 0 - 0.7 = 0.3                 A2 = 0.3
    #   t=1: delta = 0 + 0.9 * 0.7 - 0.6 = 0.03              A1 = 0.03 + 0.72 * 0.3 = 0.246
    #   t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04              A0 = 0.04 + 0.72 * 0.246 = 0.21712
    # row 1 ends after t=1 (the 5 and 9 are padding):
    #   t=1: delta = 2 + 0 - 1 = 1                           A1 = 1
    #   t=0: delta = 0 + 0.9 * 1 - 1 = -0.1                  A0 = -0.1 + 0.72 * 1 = 0.62
    assert out.advantages.tolist()[0] == pytest.approx([0.21712, 0.246, 0.3])
    assert out.advantages.tolist()[1] == pytest.approx([0.62, 1.0, 0.0])
    # returns = A + V on valid tokens
    assert out.returns.tolist()[0] == pytest.approx([0.71712, 0.846, 1.0])
    assert out.returns.tolist()[1] == pytest.approx([1.62, 2.0, 0.0])


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards, values, mask = t([1.0, -2.0, 3.0]), t([0.1, 0.2, 0.3]), t([1, 1, 1])
    out = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # reward-to-go: 2, 1, 3
    assert out.advantages.tolist() == pytest.approx([2 - 0.1, 1 - 0.2, 3 - 0.3])
    assert out.returns.tolist() == pytest.approx([2.0, 1.0, 3.0])


def test_clipped_policy_loss_by_hand():
    ratios = t([1.5, 0.5, 1.0])
    old = t([-1.0, -2.0, -3.0])
    logps = (old + ratios.log()).requires_grad_(True)
    advantages = t([1.0, 1.0, -1.0])
    out = clipped_policy_loss(logps, old, advantages, torch.ones(3), clip_range=0.2)
    # token 0: r=1.5, A=1:  max(-1.5, -1.2) = -1.2   (clipped term active)
    # token 1: r=0.5, A=1:  max(-0.5, -0.8) = -0.5
    # token 2: r=1,   A=-1: max(1, 1) = 1
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3)
    assert out.clipfrac.item() == pytest.approx(1 / 3)
    assert out.approxkl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)
    assert out.ratio_mean.item() == pytest.approx(1.0)
    out.loss.backward()
    # d/dlogp of -A * r is -A * r; the clipped token has no gradient
    assert logps.grad.tolist() == pytest.approx([0.0, -0.5 / 3, 1.0 / 3])
    assert not out.clipfrac.requires_grad


def test_policy_loss_divides_by_num_items_so_micro_batches_add_up():
    torch.manual_seed(0)
    logps = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    old, adv = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    mask = (torch.rand(4, 5) > 0.3).double()
    whole = clipped_policy_loss(logps, old, adv, mask).loss
    (grad_whole,) = torch.autograd.grad(whole, logps)
    n = mask.sum()
    halves = sum(
        clipped_policy_loss(logps[rows], old[rows], adv[rows], mask[rows], num_items=n).loss
        for rows in (slice(0, 2), slice(2, 4))
    )
    (grad_halves,) = torch.autograd.grad(halves, logps)
    assert halves.item() == pytest.approx(whole.item())
    torch.testing.assert_close(grad_halves, grad_whole)


def test_clipped_value_loss_by_hand():
    values = t([1.0, 0.0, 0.6]).requires_grad_(True)
    old, returns = t([0.5, 0.5, 0.5]), t([2.0, 0.0, 2.0])
    mask = t([1, 1, 0])
    out = clipped_value_loss(values, old, returns, mask, clip_range_value=0.2)
    # token 0: (1 - 2)^2 = 1;  clipped value 0.5 + 0.2 = 0.7 -> (0.7 - 2)^2 = 1.69 -> 1.69 (clipped)
    # token 1: (0 - 0)^2 = 0;  clipped value 0.5 - 0.2 = 0.3 -> 0.09 -> 0.09 (clipped)
    # token 2 is masked
    assert out.loss.item() == pytest.approx(0.5 * (1.69 + 0.09) / 2)
    assert out.clipfrac.item() == pytest.approx(1.0)
    assert out.values_mean.item() == pytest.approx(0.5)
    out.loss.backward()
    # both tokens take the clipped branch, whose value does not depend on `values`
    assert values.grad.tolist() == pytest.approx([0.0, 0.0, 0.0])


def test_unclipped_value_loss_gradient():
    values = t([0.6]).requires_grad_(True)
    out = clipped_value_loss(values, t([0.5]), t([2.0]), t([1]), clip_range_value=0.2)
    # inside the clip range: 0.5 * (0.6 - 2)^2 = 0.98, gradient (0.6 - 2) = -1.4
    assert out.loss.item() == pytest.approx(0.98)
    assert out.clipfrac.item() == 0.0
    out.loss.backward()
    assert values.grad.item() == pytest.approx(-1.4)


def test_entropy_and_logprobs_from_logits():
    uniform = torch.zeros(2, 4)
    assert entropy_from_logits(uniform).tolist() == pytest.approx([math.log(4)] * 2)
    # one-hot-ish logits: all mass on token 1
    peaked = torch.tensor([[0.0, 1e4, 0.0]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]]))
    assert logprobs_from_logits(logits, torch.tensor([2])).item() == pytest.approx(math.log(0.7))
