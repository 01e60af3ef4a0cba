"""PPOConfig batch arithmetic and aliases; the KL controllers by hand."""

from __future__ import annotations

import pytest

from rlhf_core import PPOConfig
from rlhf_core.trainers.ppo.kl_control import AdaptiveKLController, FixedKLController, build_kl_controller


def cfg(**kw) -> PPOConfig:
    return PPOConfig(output_dir="out", report_to="none", **kw)


def test_modern_batch_shape_is_the_product():
    c = cfg(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=2)
    assert (c.batch_size, c.mini_batch_size, c.num_mini_batches) == (16, 8, 2)
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps) == (4, 2)


def test_classic_batch_size_and_ppo_epochs():
    c = cfg(learning_rate=1e-5, batch_size=16, ppo_epochs=4)
    assert c.num_ppo_epochs == 4 and c.learning_rate == 1e-5
    # one mini-batch of 16 per epoch, micro-batches of 8 (the TrainingArguments default), so 2 accumulation steps
    assert (c.batch_size, c.mini_batch_size, c.num_mini_batches) == (16, 16, 1)
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps) == (8, 2)
    c = cfg(batch_size=16, mini_batch_size=4)
    assert (c.num_mini_batches, c.per_device_train_batch_size, c.gradient_accumulation_steps) == (4, 4, 1)


def test_classic_kl_aliases():
    c = cfg(init_kl_coef=0.2, adap_kl_ctrl=True)
    assert c.kl_coef == 0.2 and c.kl_target == 6.0
    c = cfg(adap_kl_ctrl=True, target=3.0, horizon=500)
    assert (c.kl_target, c.kl_horizon) == (3.0, 500)
    assert cfg().kl_target is None  # fixed coefficient by default


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 10, "mini_batch_size": 4}, "not a multiple of mini_batch_size=4"),
        ({"batch_size": 16, "gradient_accumulation_steps": 3}, "gradient_accumulation_steps=3 contradicts"),
        ({"kl_estimator": "k4"}, "kl_estimator='k4'"),
        ({"stop_token": "newline"}, "stop_token='newline'"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"num_ppo_epochs": 0}, "num_ppo_epochs must be >= 1"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cfg(**kwargs)


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 9 > target: error 9/6 - 1 = 0.5, clipped to 0.2; 100 episodes -> x (1 + 0.2 * 100 / 10000) = x 1.002
    ctl.update(9.0, n_steps=100)
    assert ctl.value == pytest.approx(0.1002)
    # KL 5.4: error -0.1 -> x (1 - 0.1 * 100 / 10000) = x 0.999
    ctl.update(5.4, n_steps=100)
    assert ctl.value == pytest.approx(0.1002 * 0.999)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, n_steps=100)
    assert fixed.value == 0.05
    assert isinstance(build_kl_controller(0.05, None, 10), FixedKLController)
    restored = build_kl_controller(0.5, 6.0, 10)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
