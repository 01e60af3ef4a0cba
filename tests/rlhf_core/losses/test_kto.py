"""KTO losses against hand-worked numbers (expected values written out with `math`, never the code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.losses.kto import KTO_LOSSES, kto_loss, kto_reference_point, register_kto_loss

# Three examples, beta = 0.5, z0 = 0.4.
#   a: desirable,   logpi=-1, ref=-2   -> r=1,    beta*(r - z0) = 0.3
#   b: undesirable, logpi=-3, ref=-2.5 -> r=-0.5, beta*(z0 - r) = 0.45
#   c: undesirable, logpi=-1, ref=-3   -> r=2,    beta*(z0 - r) = -0.8
BETA = 0.5
Z0 = 0.4
POLICY = [-1.0, -3.0, -1.0]
REF = [-2.0, -2.5, -3.0]
LABELS = [True, False, False]


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def run(**kw):
    return kto_loss(t(POLICY), t(REF), torch.tensor(LABELS), beta=BETA, **kw)


def test_registry_holds_the_trl_loss_types():
    assert set(KTO_LOSSES) == {"kto", "apo_zero_unpaired"}


def test_kto_loss_by_hand_with_weights():
    out = run(z0=Z0, desirable_weight=1.5, undesirable_weight=0.5)
    expected = [1.5 * (1 - sig(0.3)), 0.5 * (1 - sig(0.45)), 0.5 * (1 - sig(-0.8))]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert out.rewards.tolist() == pytest.approx([0.5, -0.25, 1.0], rel=1e-12)
    assert float(out.z0) == pytest.approx(Z0)


def test_apo_zero_unpaired_by_hand_ignores_the_reference_point():
    out = run(z0=Z0, loss_type="apo_zero_unpaired")
    # desirable: 1 - sigmoid(beta r); undesirable: sigmoid(beta r)
    expected = [1 - sig(0.5), sig(-0.25), sig(1.0)]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert run(z0=0.0, loss_type="apo_zero_unpaired").losses.tolist() == pytest.approx(expected, rel=1e-12)


def test_at_policy_equal_reference_every_example_costs_half_its_weight():
    policy = t([-3.0, -7.0, -1.5, -2.0])
    labels = torch.tensor([True, True, False, False])
    out = kto_loss(
        policy, policy.clone(), labels, z0=0.0, beta=0.1, desirable_weight=2.0, undesirable_weight=1.0
    )
    assert out.losses.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5], rel=1e-12)
    assert out.rewards.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_gradient_by_hand_and_none_through_the_reference_point():
    # d/d logpi of 1 - sigmoid(beta*s*(r - z0)) = -beta * s * sigmoid'(.)  with s = +1 (desirable), -1 (undesirable)
    policy = t(POLICY).requires_grad_(True)
    z0 = torch.tensor(Z0, dtype=torch.float64, requires_grad=True)
    out = kto_loss(policy, t(REF), torch.tensor(LABELS), z0=z0, beta=BETA)
    out.losses.sum().backward()

    def dsig(x):
        return sig(x) * (1 - sig(x))

    expected = [-BETA * dsig(0.3), BETA * dsig(0.45), BETA * dsig(-0.8)]
    assert policy.grad.tolist() == pytest.approx(expected, rel=1e-10)
    assert z0.grad is None


def test_reference_point_is_the_clamped_mean_without_gradient():
    logratios = t([0.6, -0.2, 0.5]).requires_grad_(True)
    z0 = kto_reference_point(logratios.sum(), 3)
    assert float(z0) == pytest.approx(0.3, rel=1e-12)
    assert not z0.requires_grad
    assert float(kto_reference_point(t([-1.0, 0.2]).sum(), 2)) == 0.0  # a negative KL estimate is clamped
    assert float(kto_reference_point(t(0.0), 0)) == 0.0  # no pair at all


def test_unknown_loss_type_and_duplicate_registration_are_refused():
    with pytest.raises(ValueError, match="unknown KTO loss_type 'bco'"):
        run(loss_type="bco")
    with pytest.raises(ValueError, match="already registered"):
        register_kto_loss("kto")(lambda *a: a[0])
