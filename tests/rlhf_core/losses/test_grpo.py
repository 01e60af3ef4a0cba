"""GRPO / RLOO advantages and losses against numbers worked out by hand (the working is in each test)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.losses.grpo import (
    GRPO_LOSS_TYPES,
    group_advantages,
    grpo_policy_loss,
    importance_log_weights,
    register_grpo_loss_type,
    rloo_advantages,
    rloo_policy_loss,
    weighted_rewards,
)

NAN = float("nan")


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_group_advantages_divide_by_the_group_std_the_batch_std_or_nothing():
    rewards = t([[1.0], [3.0], [2.0], [2.0]])  # groups of 2: (1, 3) and (2, 2)
    weights = torch.ones(1)
    group = group_advantages(rewards, weights, num_generations=2, scale_rewards="group")
    # group (1, 3): mean 2, std sqrt((1 + 1) / 1) = sqrt(2); group (2, 2): std 0 -> advantages 0
    a = 1 / (math.sqrt(2) + 1e-4)
    assert group.advantages.tolist() == pytest.approx([-a, a, 0.0, 0.0])
    assert group.zero_std.tolist() == [False, False, True, True]
    batch = group_advantages(rewards, weights, num_generations=2, scale_rewards="batch")
    # batch: mean 2, var (1 + 1 + 0 + 0) / 3 = 2/3
    b = 1 / (math.sqrt(2 / 3) + 1e-4)
    assert batch.advantages.tolist() == pytest.approx([-b, b, 0.0, 0.0])
    none = group_advantages(rewards, weights, num_generations=2, scale_rewards="none")
    assert none.advantages.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])


def test_abstaining_functions_are_skipped_and_unscorable_completions_get_zero():
    rewards = t([[1.0, NAN], [NAN, NAN], [3.0, 1.0], [1.0, NAN]])
    weights = torch.tensor([1.0, 2.0])
    # weighted sums: 1, unscorable, 3 + 2 * 1 = 5, 1
    assert weighted_rewards(rewards, weights)[[0, 2, 3]].tolist() == [1.0, 5.0, 1.0]
    assert math.isnan(weighted_rewards(rewards, weights)[1])
    out = group_advantages(rewards, weights, num_generations=2)
    # group (1, unscorable): one value, no std -> 0; group (5, 1): mean 3, std sqrt(8)
    a = 2 / (math.sqrt(8) + 1e-4)
    assert out.advantages.tolist() == pytest.approx([0.0, 0.0, a, -a])


def test_normalize_then_sum_normalises_each_function_within_its_group_first():
    rewards = t([[1.0, 10.0], [3.0, 10.0], [0.0, 0.0], [0.0, 4.0]])
    out = group_advantages(rewards, torch.ones(2), num_generations=2, aggregation="normalize_then_sum")
    z = 1 / (math.sqrt(2) + 1e-4)  # f0 in group 0: -z, +z; f1 in group 0: 0, 0; f0 group 1: 0, 0
    w = 2 / (math.sqrt(8) + 1e-4)  # f1 in group 1: (0, 4) -> -w, +w
    summed = torch.tensor([-z, z, -w, w], dtype=torch.float64)  # mean 0, std over the batch
    std = summed.std().item()
    assert out.advantages.tolist() == pytest.approx((summed / (std + 1e-4)).tolist())


def test_rloo_baseline_is_the_mean_of_the_other_completions():
    # groups (1, 3) and (2, 6): baseline of each is its sibling
    assert rloo_advantages(t([1.0, 3.0, 2.0, 6.0]), num_generations=2).tolist() == [-2.0, 2.0, -4.0, 4.0]
    # one group of 4 with an unscorable completion: scorable sum 9, k = 3
    # b0 = (9 - 1) / 2 = 4, b1 = (9 - 2) / 2 = 3.5, b3 = (9 - 6) / 2 = 1.5
    out = rloo_advantages(t([1.0, 2.0, NAN, 6.0]), num_generations=4)
    assert out.tolist() == pytest.approx([-3.0, -1.5, 0.0, 4.5])
    normalised = rloo_advantages(t([1.0, 3.0, 2.0, 6.0]), num_generations=2, normalize=True)
    raw = t([-2.0, 2.0, -4.0, 4.0])
    assert normalised.tolist() == pytest.approx((raw / (raw.std() + 1e-4)).tolist())


def _batch():
    # row 0: token ratios 0.5 / 0.4 = 1.25 and 1; row 1: ratio 1 and a padding token
    logps = t([[math.log(0.5), math.log(0.25)], [math.log(0.5), 0.0]]).requires_grad_()
    old = t([[math.log(0.4), math.log(0.25)], [math.log(0.5), 0.0]])
    return logps, old, t([1.0, -1.0]), t([[1, 1], [1, 0]])


def test_grpo_loss_types_differ_only_in_how_they_normalise():
    logps, old, adv, mask = _batch()
    # per token: row 0: -min(1.25, 1.2) * 1 = -1.2 (clipped), -1; row 1: -min(-1, -1) = 1
    expected = {
        "grpo": ((-1.2 - 1.0) / 2 + 1.0) / 2,  # mean over rows of token means = -0.05
        "bnpo": (-1.2 - 1.0 + 1.0) / 3,  # token mean = -0.4
        "dr_grpo": (-1.2 - 1.0 + 1.0) / (2 * 4),  # rows x max_completion_length 4 = -0.15
        "dapo": (-1.2 - 1.0 + 1.0) / 6,  # tokens of the accumulation window, 6 = -0.2
    }
    for loss_type, value in expected.items():
        out = grpo_policy_loss(
            logps, old, adv, mask, loss_type=loss_type, max_completion_length=4, num_items=6
        )
        assert out.loss.item() == pytest.approx(value), loss_type
    out = grpo_policy_loss(logps, old, adv, mask, loss_type="bnpo")
    assert out.clip_high.item() == pytest.approx(1 / 3) and out.clip_low.item() == 0.0
    out.loss.backward()
    # the clipped token has no gradient; d(-ratio * A)/d logp = -ratio * A = -1 (row 0) and +1 (row 1), / 3 tokens
    assert logps.grad.flatten().tolist() == pytest.approx([0.0, -1 / 3, 1 / 3, 0.0])


def test_gradient_accumulation_divides_all_but_dapo():
    logps, old, adv, mask = _batch()
    assert grpo_policy_loss(
        logps, old, adv, mask, loss_type="bnpo", gradient_accumulation_steps=2
    ).loss.item() == (pytest.approx(-0.2))
    # dapo without num_items: this micro-batch's 3 tokens x 2 accumulation steps
    assert grpo_policy_loss(
        logps, old, adv, mask, loss_type="dapo", gradient_accumulation_steps=2
    ).loss.item() == (pytest.approx(-1.2 / 6))


def test_k3_kl_term_and_its_bias_correction():
    logps, old, adv, mask = _batch()
    ref = logps.detach().clone()
    ref[0, 1] = math.log(0.5)  # log(pi_ref / pi) = log 2 there: k3 = (2 - 1) - log 2
    k3 = 1 - math.log(2)
    out = grpo_policy_loss(logps, old, adv, mask, loss_type="bnpo", beta=0.1, ref_logps=ref)
    assert out.loss.item() == pytest.approx(-0.4 + 0.1 * k3 / 3)
    assert out.kl.item() == pytest.approx(k3 / 3)
    ref[0, 0] = math.log(0.25)  # now a token with ratio 1.25: its KL is weighted by the ratio
    k3_first = (0.5 - 1) - math.log(0.5)  # r = 0.25 / 0.5
    out = grpo_policy_loss(logps, old, adv, mask, loss_type="bnpo", beta=1.0, ref_logps=ref)
    assert out.kl.item() == pytest.approx((1.25 * k3_first + k3) / 3)
    plain = grpo_policy_loss(
        logps, old, adv, mask, loss_type="bnpo", beta=1.0, ref_logps=ref, bias_corrected_kl=False
    )
    assert plain.kl.item() == pytest.approx((k3_first + k3) / 3)


def test_sequence_level_importance_ratio_gspo():
    logps, old, adv, mask = _batch()
    log_w = importance_log_weights(logps, old, mask, level="sequence")
    # row 0: (log 1.25 + 0) / 2 tokens; row 1: 0
    assert log_w.squeeze(-1).tolist() == pytest.approx([math.log(1.25) / 2, 0.0])
    out = grpo_policy_loss(logps, old, adv, mask, loss_type="grpo", importance_sampling_level="sequence")
    # row 0: w = sqrt(1.25) = 1.118 inside the clip range -> -1.118 per token; row 1: +1
    assert out.loss.item() == pytest.approx((-math.sqrt(1.25) + 1.0) / 2)


def test_clip_higher_and_two_sided_delta():
    logps, old, adv, mask = _batch()
    out = grpo_policy_loss(logps, old, adv, mask, loss_type="bnpo", epsilon_high=0.28)
    assert out.loss.item() == pytest.approx((-1.25 - 1.0 + 1.0) / 3)  # 1.25 < 1.28: not clipped
    logps = t([[math.log(0.9)]]).requires_grad_()
    old, neg, one = t([[math.log(0.3)]]), t([-1.0]), t([[1]])
    # ratio 3 with A = -1: -min(-3, -1.2) = 3; with delta = 2 the unclipped ratio is capped: 2
    assert grpo_policy_loss(logps, old, neg, one, loss_type="bnpo").loss.item() == pytest.approx(3.0)
    assert grpo_policy_loss(logps, old, neg, one, loss_type="bnpo", delta=2.0).loss.item() == pytest.approx(
        2.0
    )


def test_rloo_loss_clips_the_summed_sequence_ratio():
    logps, old, adv, mask = _batch()
    out = rloo_policy_loss(logps, old, adv, mask)
    # row 0: ratio 1.25 * 1 = 1.25, A = 1 -> -1.2; row 1: ratio 1, A = -1 -> 1; mean over rows
    assert out.loss.item() == pytest.approx(-0.1)
    assert out.clip_high.item() == pytest.approx(0.5)


def test_loss_type_registry():
    assert set(GRPO_LOSS_TYPES) >= {"grpo", "bnpo", "dr_grpo", "dapo"}
    with pytest.raises(ValueError, match="loss_type='nope'"):
        grpo_policy_loss(*_batch(), loss_type="nope")
    register_grpo_loss_type("sum", lambda per_token, mask, **_: (per_token * mask).sum())
    try:
        assert grpo_policy_loss(*_batch(), loss_type="sum").loss.item() == pytest.approx(-1.2)
    finally:
        GRPO_LOSS_TYPES.pop("sum")
