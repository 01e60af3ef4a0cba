"""The defaults every trainer config shares (rlhf_core.trainers.config_defaults)."""

from __future__ import annotations

import warnings

import pytest

from rlhf_core import GRPOConfig, PPOConfig, SFTConfig


@pytest.mark.parametrize("config_class", [GRPOConfig, SFTConfig, PPOConfig])
@pytest.mark.parametrize("value", [True, False])
def test_trls_gradient_checkpointing_name_is_accepted_without_a_warning(config_class, value, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5 warns on the old name
        config = config_class(output_dir=str(tmp_path), gradient_checkpointing=value)
    assert config.gradient_checkpointing is value and config.activation_checkpointing is value


def test_grpo_keeps_trls_checkpointing_default_quietly(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        config = GRPOConfig(output_dir=str(tmp_path))
    assert config.gradient_checkpointing is True and config.activation_checkpointing is True
