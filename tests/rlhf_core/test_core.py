"""rlhf_core.core: the classic trl.core names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_core.core import (
    LengthSampler,
    clip_by_value,
    flatten_dict,
    set_seed,
    stack_dicts,
    top_k_top_p_filtering,
    whiten,
)


def test_length_sampler_stays_in_half_open_range_and_covers_it():
    sampler = LengthSampler(min_length=3, max_length=6, seed=0)
    draws = {sampler() for _ in range(200)}
    assert draws == {3, 4, 5}
    assert all(isinstance(d, int) for d in draws)


def test_length_sampler_classic_forms_and_global_seed():
    # TRL's positional and min_value/max_value forms
    assert LengthSampler(4, 5)() == 4
    assert LengthSampler(min_value=7, max_value=8)() == 7
    set_seed(123)
    first = [LengthSampler(32, 128)() for _ in range(5)]
    set_seed(123)
    assert [LengthSampler(32, 128)() for _ in range(5)] == first


def test_length_sampler_rejects_empty_range():
    with pytest.raises(ValueError, match="min_length < max_length"):
        LengthSampler(5, 5)
    with pytest.raises(TypeError):
        LengthSampler()


def test_whiten_and_clip_by_value():
    x = torch.tensor([1.0, 2.0, 3.0])
    # mean 2, unbiased std 1
    assert whiten(x).tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert clip_by_value(x, torch.tensor(1.5), 2.5).tolist() == [1.5, 2.0, 2.5]


def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top2 = top_k_top_p_filtering(logits, top_k=2)
    assert torch.isinf(top2[0, 2:]).all() and torch.isfinite(top2[0, :2]).all()
    # nucleus 0.7: 0.5 alone is short of 0.7, 0.5 + 0.3 reaches it -> keep two tokens
    nucleus = top_k_top_p_filtering(logits, top_p=0.7)
    assert torch.isfinite(nucleus).tolist() == [[True, True, False, False]]
    # nucleus 0.5 is reached by the first token alone
    assert torch.isfinite(top_k_top_p_filtering(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    # order inside the row does not matter
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_k_top_p_filtering(shuffled, top_p=0.7)).tolist() == [[False, True, False, True]]


def test_flatten_and_stack_dicts():
    assert flatten_dict({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a/b": 1, "a/c/d": 2, "e": 3}
    stacked = stack_dicts([{"x": torch.tensor(1.0)}, {"x": torch.tensor(2.0)}])
    assert np.allclose(stacked["x"].numpy(), [1.0, 2.0])
