import dataclasses

import pytest

from rlhf_core.trainers.preference.config_fields import PreferenceDataFields, ReferenceModelFields
from rlhf_core.trainers.preference.dpo_config import DPOConfig
from rlhf_core.trainers.preference.kto_config import KTOConfig
from rlhf_core.trainers.preference.reward_config import RewardConfig

CONFIGS = [RewardConfig, DPOConfig, KTOConfig]


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__name__)
def test_every_preference_config_checks_its_length_policy(config_class):
    with pytest.raises(ValueError, match="overlong must be one of"):
        config_class(output_dir="out", overlong="cut")
    with pytest.raises(ValueError, match=r"max_prompt_length \(64\) must be smaller than max_length \(64\)"):
        config_class(output_dir="out", max_length=64, max_prompt_length=64)
    config = config_class(output_dir="out", max_length=64, max_prompt_length=16, overlong="drop")
    assert (config.max_length, config.max_prompt_length, config.overlong) == (64, 16, "drop")


def test_shared_fields_are_declared_once_with_trls_defaults():
    names = {f.name for f in dataclasses.fields(PreferenceDataFields)}
    reference = {f.name for f in dataclasses.fields(ReferenceModelFields)}
    for config_class in CONFIGS:
        assert names <= {f.name for f in dataclasses.fields(config_class)}
    assert reference <= {f.name for f in dataclasses.fields(DPOConfig)}
    assert reference <= {f.name for f in dataclasses.fields(KTOConfig)}
    assert not reference & {
        f.name for f in dataclasses.fields(RewardConfig)
    }  # a reward model has no reference
    config = DPOConfig(output_dir="out")
    assert (config.max_length, config.padding_free, config.disable_dropout) == (1024, None, True)
    assert (config.ref_model_mixup_alpha, config.ref_model_sync_steps) == (0.6, 512)
