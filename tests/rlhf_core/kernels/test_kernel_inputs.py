"""Clear errors for bad inputs, backend dispatch and the default chunk size."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.kernels import (
    BACKEND_ENV,
    default_chunk_size,
    fused_linear_cross_entropy,
    fused_linear_logprobs,
    select_backend,
)
from rlhf_core.kernels._triton_row_softmax import triton_available


@pytest.fixture
def tensors():
    return torch.randn(6, 4), torch.randn(10, 4), torch.randint(0, 10, (6,))


def test_labels_must_be_long(tensors):
    hidden, weight, labels = tensors
    with pytest.raises(TypeError, match=r"labels must be token ids of dtype torch.long .*torch.int32"):
        fused_linear_logprobs(hidden, weight, labels.int())


def test_hidden_size_mismatch_names_both_shapes(tensors):
    hidden, weight, labels = tensors
    with pytest.raises(
        ValueError, match=r"hidden size mismatch: hidden is \(6, 5\) \(H=5\) but weight is \[V=10, H=4\]"
    ):
        fused_linear_logprobs(torch.randn(6, 5), weight, labels)


def test_token_count_mismatch(tensors):
    hidden, weight, labels = tensors
    with pytest.raises(
        ValueError, match=r"token count mismatch: labels has shape \(5,\) but hidden has \(6,\)"
    ):
        fused_linear_cross_entropy(hidden, weight, labels[:5])


def test_label_outside_vocabulary_is_named(tensors):
    hidden, weight, labels = tensors
    labels = labels.clone()
    labels[3] = 10
    with pytest.raises(ValueError, match=r"labels\[3\] = 10 is outside the vocabulary \[0, 10\)"):
        fused_linear_logprobs(hidden, weight, labels)
    labels[3] = -100  # the ignore index is fine
    fused_linear_logprobs(hidden, weight, labels)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"bias": torch.randn(9)}, ValueError, r"bias must be \[V=10\]"),
        ({"bias": torch.randn(10, dtype=torch.float64)}, TypeError, "bias dtype"),
        ({"temperature": 0.0}, ValueError, "temperature must be a finite number > 0"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
        ({"backend": "cuda-magic"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_options(tensors, kwargs, error, pattern):
    hidden, weight, labels = tensors
    with pytest.raises(error, match=pattern):
        fused_linear_logprobs(hidden, weight, labels, **kwargs)


def test_dtype_mismatch_and_bad_reduction(tensors):
    hidden, weight, labels = tensors
    with pytest.raises(TypeError, match="share one floating dtype"):
        fused_linear_logprobs(hidden.double(), weight, labels)
    with pytest.raises(ValueError, match="reduction must be one of"):
        fused_linear_cross_entropy(hidden, weight, labels, reduction="avg")


def test_cpu_tensors_use_the_torch_backend(tensors, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert select_backend(tensors[0]) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert select_backend(tensors[0]) == "triton"
    monkeypatch.setenv(BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match=r"\$RLHF_KERNEL_BACKEND must be one of"):
        select_backend(tensors[0])


@pytest.mark.skipif(not triton_available(), reason="triton cannot be imported here")
def test_forcing_triton_on_cpu_without_interpreter_is_a_clear_error(tensors, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="Triton backend runs on CUDA tensors"):
        fused_linear_logprobs(*tensors, backend="triton")


def test_default_chunk_size_keeps_a_chunk_of_logits_bounded():
    rows = default_chunk_size(4096, 32000)
    assert rows % 16 == 0 and rows * 32000 * 4 <= 64 * 2**20
    assert default_chunk_size(4096, 152064) >= 16  # huge vocabularies still get a usable GEMM
    assert default_chunk_size(10, 32000) == 10  # never more rows than there are
    assert default_chunk_size(10**6, 32000, "cuda") > rows
