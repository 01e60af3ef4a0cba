"""DPO-family losses against hand-worked numbers (expected values written out with `math`, never the code under
test)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.losses.dpo import DPO_LOSSES, dpo_loss, register_dpo_loss

# Two pairs, beta = 0.5.
# pair A: logpi_w=-1, logpi_l=-3, ref_w=-2, ref_l=-2.5 -> rho_w=1,  rho_l=-0.5, d=1.5, beta*d=0.75
# pair B: logpi_w=-4, logpi_l=-2, ref_w=-3, ref_l=-3   -> rho_w=-1, rho_l=1,    d=-2,  beta*d=-1
BETA = 0.5
POLICY_CHOSEN = [-1.0, -4.0]
POLICY_REJECTED = [-3.0, -2.0]
REF_CHOSEN = [-2.0, -3.0]
REF_REJECTED = [-2.5, -3.0]
RHO_W = [1.0, -1.0]
RHO_L = [-0.5, 1.0]
Z = [0.75, -1.0]  # beta * d


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def run(loss_type, **kw):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return dpo_loss(
        t(POLICY_CHOSEN),
        t(POLICY_REJECTED),
        t(REF_CHOSEN),
        t(REF_REJECTED),
        beta=BETA,
        loss_type=loss_type,
        **kw,
    )


def close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.tolist() == pytest.approx(expected, abs=1e-12, rel=1e-10)


def test_registry_has_every_variant_of_the_issue():
    expected = {
        "sigmoid",
        "robust",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "bco_pair",
        "sppo_hard",
        "apo_zero",
    }
    assert expected | {"apo_down", "sft"} <= set(DPO_LOSSES)


def test_sigmoid():
    # -logsigmoid(0.75) = log(1 + e^-0.75) = 0.38687..., -logsigmoid(-1) = log(1 + e) = 1.31326...
    assert run("sigmoid").losses.tolist() == pytest.approx([0.386871006, 1.313261687], abs=1e-9)
    close(run("sigmoid").losses, [-logsig(0.75), -logsig(-1.0)])


def test_sigmoid_with_label_smoothing_is_conservative_dpo():
    e = 0.1
    close(run("sigmoid", label_smoothing=e).losses, [-(1 - e) * logsig(z) - e * logsig(-z) for z in Z])


def test_robust():
    e = 0.1
    expected = [(-(1 - e) * logsig(z) + e * logsig(-z)) / (1 - 2 * e) for z in Z]
    close(run("robust", label_smoothing=e).losses, expected)
    # without noise rDPO is plain DPO
    close(run("robust").losses, [-logsig(z) for z in Z])


def test_hinge():
    # relu(1 - 0.75) = 0.25, relu(1 + 1) = 2
    close(run("hinge").losses, [0.25, 2.0])


def test_ipo_sequence_and_per_token():
    # 1/(2 beta) = 1: (1.5 - 1)^2 = 0.25, (-2 - 1)^2 = 9
    close(run("ipo").losses, [0.25, 9.0])
    # per-token: A: 1/3 - (-0.5)/1 = 5/6 -> (5/6 - 1)^2 = 1/36; B: -1/2 - 1/4 = -3/4 -> (-7/4)^2 = 49/16
    out = run("ipo", chosen_lengths=torch.tensor([3.0, 2.0]), rejected_lengths=torch.tensor([1.0, 4.0]))
    close(out.losses, [1 / 36, 49 / 16])


def test_exo_pair():
    e = 0.2
    expected = [sig(z) * (logsig(z) - math.log(1 - e)) + sig(-z) * (logsig(-z) - math.log(e)) for z in Z]
    close(run("exo_pair", label_smoothing=e).losses, expected)
    # label_smoothing=0 would put log(0) in the loss: the documented 1e-3 stands in
    e = 1e-3
    expected = [sig(z) * (logsig(z) - math.log(1 - e)) + sig(-z) * (logsig(-z) - math.log(e)) for z in Z]
    close(run("exo_pair").losses, expected)


def test_nca_pair():
    rw = [BETA * r for r in RHO_W]
    rl = [BETA * r for r in RHO_L]
    expected = [-logsig(w) - 0.5 * logsig(-w) - 0.5 * logsig(-lo) for w, lo in zip(rw, rl)]
    close(run("nca_pair").losses, expected)


def test_bco_pair():
    # A: -logsig(0.5) - logsig(0.25); B: -logsig(-0.5) - logsig(-0.5)
    close(run("bco_pair").losses, [-logsig(0.5) - logsig(0.25), -2 * logsig(-0.5)])


def test_sppo_hard():
    # 1/(2 beta) = 1: A: (1-1)^2 + (-0.5+1)^2 = 0.25; B: (-1-1)^2 + (1+1)^2 = 8
    close(run("sppo_hard").losses, [0.25, 8.0])


def test_apo_zero_and_down():
    close(run("apo_zero").losses, [1 - sig(0.5) + sig(-0.25), 1 - sig(-0.5) + sig(0.5)])
    close(run("apo_down").losses, [sig(0.5) + 1 - sig(0.75), sig(-0.5) + 1 - sig(-1.0)])


def test_sft_term():
    close(run("sft").losses, [1.0, 4.0])  # -logpi(y_w)
    close(run("sft", chosen_lengths=torch.tensor([4.0, 2.0])).losses, [0.25, 2.0])  # per token


def test_weighted_combination_rpo():
    out = run(["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    close(out.losses, [-logsig(0.75) + 0.5 * 1.0, -logsig(-1.0) + 0.5 * 4.0])
    assert set(out.terms) == {"sigmoid", "sft"}
    assert out.terms["sft"].item() == pytest.approx(2.5)  # unweighted mean of [1, 4]
    out = run(["hinge", "ipo"])  # default weights 1
    close(out.losses, [0.25 + 0.25, 2.0 + 9.0])


def test_implicit_rewards_are_detached_beta_log_ratios():
    pc = torch.tensor(POLICY_CHOSEN, requires_grad=True)
    pr = torch.tensor(POLICY_REJECTED, requires_grad=True)
    out = dpo_loss(pc, pr, torch.tensor(REF_CHOSEN), torch.tensor(REF_REJECTED), beta=BETA)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, -0.5])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.25, 0.5])
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    # d/dlogpi_w of -logsigmoid(beta (rho_w - rho_l)) = -beta * sigmoid(-beta d)
    out.losses.sum().backward()
    assert pc.grad.tolist() == pytest.approx([-BETA * sig(-z) for z in Z], rel=1e-6)
    assert pr.grad.tolist() == pytest.approx([BETA * sig(-z) for z in Z], rel=1e-6)


@pytest.mark.parametrize("beta", [0.01, 0.1, 2.0])
def test_sigmoid_is_ln2_when_policy_equals_reference(beta):
    logps = -torch.rand(8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50
    other = -torch.rand(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 50
    out = dpo_loss(logps, other, logps.clone(), other.clone(), beta=beta)
    assert torch.equal(out.losses, torch.full((8,), math.log(2), dtype=torch.float64))
    assert torch.equal(out.chosen_rewards, torch.zeros(8, dtype=torch.float64))


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match="unknown DPO loss_type.*'nope'"):
        run("nope")
    with pytest.raises(ValueError, match="loss_weights has 1 entries for 2"):
        run(["sigmoid", "sft"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(*(torch.zeros(2) for _ in range(4)), beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        run("robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="same shape"):
        dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))


def test_a_new_variant_is_a_registered_function():
    name = "test_only_squared_margin"

    @register_dpo_loss(name)
    def squared_margin(p):
        return (p.beta * p.delta) ** 2

    try:
        close(run(name).losses, [0.75**2, 1.0])
        with pytest.raises(ValueError, match="already registered"):
            register_dpo_loss(name)(squared_margin)
    finally:
        DPO_LOSSES.pop(name)


# ---- f-DPO (arXiv:2309.16240): f'(u) in place of log u, u = pi / pi_ref ------------------------------------


@pytest.mark.parametrize(
    ("divergence", "alpha", "f_prime"),
    [
        ("forward_kl", 0.5, lambda u: 1 - 1 / u),
        ("js_divergence", 0.5, lambda u: math.log(2 * u / (1 + u))),
        ("alpha_divergence", 0.5, lambda u: (u**-0.5 - 1) / -0.5),
        ("alpha_divergence", 0.3, lambda u: (u**-0.7 - 1) / -0.7),
        ("alpha_divergence", 1.0, math.log),  # the limit alpha -> 1 is reverse KL
        ("reverse_kl", 0.5, math.log),
    ],
)
def test_f_divergence_sigmoid_loss(divergence, alpha, f_prime):
    out = run("sigmoid", f_divergence_type=divergence, f_alpha_divergence_coef=alpha)
    for b in range(2):
        scores = f_prime(math.exp(RHO_W[b])) - f_prime(math.exp(RHO_L[b]))
        assert out.losses[b].item() == pytest.approx(-logsig(BETA * scores))
    # the reported implicit rewards stay beta * log-ratio whatever the divergence
    assert out.chosen_rewards.tolist() == pytest.approx([BETA * r for r in RHO_W])
    assert out.rejected_rewards.tolist() == pytest.approx([BETA * r for r in RHO_L])


def test_f_divergence_hand_worked_pair_and_scope():
    # pair A: rho_w = 1, rho_l = -0.5; forward KL f'(u) = 1 - 1/u: 1 - e^-1 = 0.632121, 1 - e^0.5 = -0.648721
    out = run("hinge", f_divergence_type="forward_kl")
    assert out.losses[0].item() == pytest.approx(max(0.0, 1 - BETA * (0.6321206 + 0.6487213)), abs=1e-6)
    with pytest.raises(ValueError, match="applies to the losses"):
        run("nca_pair", f_divergence_type="js_divergence")
    with pytest.raises(ValueError, match="unknown f_divergence_type"):
        run("sigmoid", f_divergence_type="chi2")


# ---- LD-DPO (arXiv:2409.06411) and WPO (arXiv:2406.11827) -------------------------------------------------


def test_ld_token_weights_count_the_verbose_tail_alpha():
    from rlhf_core.losses.dpo import ld_token_weights

    # B = 2 pairs: chosen lengths [2, 3], rejected [4, 1] -> shared lengths [2, 1]
    num_tokens = torch.tensor([2, 3, 4, 1])
    rows = torch.repeat_interleave(torch.arange(4), num_tokens)
    weights = ld_token_weights(rows, num_tokens, 0.25)
    assert weights.tolist() == [1, 1, 1, 0.25, 0.25, 1, 1, 0.25, 0.25, 1]
    assert ld_token_weights(rows, num_tokens, 1.0).tolist() == [1.0] * 10


def test_wpo_pair_weights_hand_worked():
    from rlhf_core.losses.dpo import wpo_pair_weights

    # one pair: chosen tokens (logp, log sum p^2) = (-1, -0.5), (-2, -1); rejected (-3, -2)
    token_logps = torch.tensor([-1.0, -2.0, -3.0])
    log_sum_sq = torch.tensor([-0.5, -1.0, -2.0])
    rows, num_tokens = torch.tensor([0, 0, 1]), torch.tensor([2, 1])
    # w_chosen = exp(((-1 + 0.5) + (-2 + 1)) / 2) = exp(-0.75); w_rejected = exp(-1)
    expected = math.exp(-0.75) * math.exp(-1.0)
    assert wpo_pair_weights(token_logps, log_sum_sq, rows, num_tokens).tolist() == pytest.approx([expected])
    out = run("sigmoid", pair_weights=torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert out.losses.tolist() == pytest.approx([-0.5 * logsig(Z[0]), -2.0 * logsig(Z[1])])
