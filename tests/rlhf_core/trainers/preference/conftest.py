"""Fixtures of the preference trainer tests: the tiny model's tokenizer and 8 synthetic pairs (built once per
module), and the quick settings every test config starts from (`preference_cases.quick_config`)."""

from __future__ import annotations

import pytest

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("rlhf-tiny")


@pytest.fixture(scope="module")
def pairs():
    return SyntheticTask(0).preference_dataset(8)
