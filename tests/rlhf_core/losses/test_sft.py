"""sft_loss on hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.losses import sft_loss


def test_token_mean_by_default():
    logps = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -8.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = sft_loss(logps, mask)
    # (1 + 2 + 0.5) / 3 tokens
    assert out.loss.item() == pytest.approx(3.5 / 3)
    assert out.num_tokens.item() == 3 and not out.num_tokens.requires_grad
    out.loss.backward()
    expected = -mask.float() / 3
    torch.testing.assert_close(logps.grad, expected)


def test_num_items_normalises_over_the_accumulated_batch():
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    mask = torch.tensor([[1, 1], [0, 1]], dtype=torch.bool)
    # 3 tokens here, 10 in the whole accumulated batch: summed NLL 7 / 10
    assert sft_loss(logps, mask, num_items=10).loss.item() == pytest.approx(0.7)


def test_masked_positions_are_ignored_even_when_non_finite():
    logps = torch.tensor([[-1.0, -math.inf, math.nan]])
    mask = torch.tensor([[1, 0, 0]])
    assert sft_loss(logps, mask).loss.item() == pytest.approx(1.0)


def test_no_loss_token_gives_zero_not_nan():
    out = sft_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    assert out.loss.item() == 0.0 and out.num_tokens.item() == 0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ"):
        sft_loss(torch.zeros(2, 3), torch.ones(3, 2))


def test_dft_weights_each_token_by_its_detached_probability():
    # DFT (arXiv:2508.05629): loss = -sum(sg(p) * log p) / N; gradient d/dlogp = -p (not -1 as for NLL)
    logps = torch.tensor([[math.log(0.5), math.log(0.25), -1.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    out = sft_loss(logps, mask, loss_type="dft")
    expected = (0.5 * math.log(2) + 0.25 * math.log(4)) / 2  # = 0.6931 / 2
    assert out.loss.item() == pytest.approx(expected)
    out.loss.backward()
    assert logps.grad[0].tolist() == pytest.approx([-0.5 / 2, -0.25 / 2, 0.0])
    assert sft_loss(logps, mask, loss_type="nll").loss.item() == pytest.approx(
        (math.log(2) + math.log(4)) / 2
    )
    with pytest.raises(ValueError, match="unknown SFT loss_type"):
        sft_loss(logps, mask, loss_type="focal")
