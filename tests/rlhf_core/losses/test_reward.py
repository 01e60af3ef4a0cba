"""Bradley-Terry reward loss against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.losses.reward import reward_loss

# r_c - r_r = [1, -1, 0]
CHOSEN = [2.0, 0.5, -1.0]
REJECTED = [1.0, 1.5, -1.0]


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_bradley_terry_loss_and_stats():
    out = reward_loss(t(CHOSEN), t(REJECTED))
    # log(1+e^-1) = 0.3132617, log(1+e) = 1.3132617, ln 2 = 0.6931472
    per_pair = [0.313261687518, 1.313261687518, math.log(2)]
    assert out.losses.tolist() == pytest.approx(per_pair, rel=1e-10)
    assert out.loss.item() == pytest.approx(sum(per_pair) / 3, rel=1e-10)
    assert out.accuracy.item() == pytest.approx(1 / 3)  # the tie counts as wrong
    assert out.margin.item() == pytest.approx(0.0)
    assert out.reward_mean.item() == pytest.approx(0.5)  # (2 + .5 - 1 + 1 + 1.5 - 1) / 6
    assert out.reward_min.item() == -1.0
    assert out.reward_max.item() == 2.0


def test_margin_is_subtracted_from_the_difference():
    out = reward_loss(t(CHOSEN), t(REJECTED), margin=t([0.5, 0.0, 1.0]))
    # diffs [0.5, -1, -1]
    expected = [math.log1p(math.exp(-0.5)), math.log1p(math.e), math.log1p(math.e)]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-10)
    assert out.margin.item() == pytest.approx(0.0)  # the logged margin is r_c - r_r, not the target


def test_centering_penalty():
    coef = 0.01
    out = reward_loss(t(CHOSEN), t(REJECTED), center_rewards_coefficient=coef)
    bt = (0.313261687518 + 1.313261687518 + math.log(2)) / 3
    # (r_c + r_r)^2 = [9, 4, 4] -> mean 17/3
    assert out.loss.item() == pytest.approx(bt + coef * 17 / 3, rel=1e-10)


def test_num_items_divides_the_sum_for_gradient_accumulation():
    whole = reward_loss(t(CHOSEN), t(REJECTED)).loss
    first = reward_loss(t(CHOSEN[:2]), t(REJECTED[:2]), num_items=3).loss
    second = reward_loss(t(CHOSEN[2:]), t(REJECTED[2:]), num_items=3).loss
    assert (first + second).item() == pytest.approx(whole.item(), rel=1e-12)


def test_gradient_and_classifier_shape():
    chosen = t([[0.0], [1.0]]).requires_grad_()
    out = reward_loss(chosen, t([[0.0], [0.0]]))
    out.loss.backward()
    # d/dr_c of mean(-logsigmoid(r_c - r_r)) = -sigmoid(-(r_c - r_r)) / B
    assert chosen.grad[:, 0].tolist() == pytest.approx([-0.5 / 2, -1 / (1 + math.e) / 2])
    assert not out.accuracy.requires_grad and not out.losses.requires_grad


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="same shape"):
        reward_loss(t([1.0, 2.0]), t([1.0]))
    with pytest.raises(ValueError, match="chosen_rewards must have shape"):
        reward_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="margin must have shape"):
        reward_loss(t([1.0, 2.0]), t([1.0, 0.0]), margin=t([1.0]))
