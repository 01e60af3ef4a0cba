import pytest

from rlhf_core.losses.dpo import DPO_LOSSES
from rlhf_core.losses.kto import KTO_LOSSES
from rlhf_core.losses.registry import LossRegistry


def test_a_taken_name_keeps_its_first_function_and_families_stay_apart():
    registry = LossRegistry("Test")

    @registry.register("a")
    def first(x):
        return x

    with pytest.raises(ValueError, match="Test loss 'a' is already registered"):
        registry.register("a")(lambda x: -x)
    assert registry["a"] is first and sorted(registry) == ["a"]
    # the DPO and KTO tables are separate registries: "sigmoid" is DPO's alone
    assert "sigmoid" in DPO_LOSSES and "sigmoid" not in KTO_LOSSES
