"""The packing test on flex_attention, the third attention implementation that runs on this CPU.

flex_attention goes through torch.compile (inductor, C++ codegen): about a minute on 2 busy cores, hence slow and
in its own file. The eager/sdpa versions are in test_packing_attention.py; the measurement is in conftest.py.
"""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_flex_attention_packed_equals_padded(load_tiny_model, per_document_losses):
    expected = per_document_losses.padded(load_tiny_model("eager"))
    got = per_document_losses.packed(load_tiny_model("flex_attention"))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)
