"""create_reference_model: a frozen copy, with shared bottom layers when asked."""

from __future__ import annotations

import pytest
import torch

from rlhf_core import AutoModelForCausalLMWithValueHead, create_reference_model
from rlhf_core.models.loading import load_causal_lm
from rlhf_core.models.reference import decoder_layers
from rlhf_core.models.tiny import TINY_MODEL


def _same_outputs(a, b):
    ids = torch.tensor([[1, 4, 204, 361, 320, 342]])
    with torch.no_grad():
        return torch.allclose(a(input_ids=ids).logits, b(input_ids=ids).logits)


def test_full_copy_is_frozen_independent_and_equal():
    model = load_causal_lm(TINY_MODEL)
    ref = create_reference_model(model)
    assert ref is not model and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the policy is untouched
    assert _same_outputs(model, ref)
    assert not any(p is q for p in model.parameters() for q in ref.parameters())
    # training the policy leaves the reference where it was
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    assert not _same_outputs(model, ref)


def test_shared_layers_are_the_same_objects_and_frozen_in_both():
    model = load_causal_lm(TINY_MODEL)
    ref = create_reference_model(model, num_shared_layers=1)
    policy_layers, ref_layers = decoder_layers(model), decoder_layers(ref)
    assert ref_layers[0] is policy_layers[0]
    assert ref.get_input_embeddings() is model.get_input_embeddings()
    assert ref_layers[1] is not policy_layers[1]
    shared_ids = {id(p) for p in policy_layers[0].parameters()} | {id(model.get_input_embeddings().weight)}
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in shared_ids)
    assert all(not p.requires_grad for p in ref.parameters())
    # memory is really shared: one storage for the shared weights
    assert (
        ref_layers[0].self_attn.q_proj.weight.data_ptr()
        == policy_layers[0].self_attn.q_proj.weight.data_ptr()
    )
    assert _same_outputs(model, ref)


def test_value_head_model_and_bad_layer_count():
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(TINY_MODEL))
    ref = create_reference_model(model, num_shared_layers=2)
    assert isinstance(ref, AutoModelForCausalLMWithValueHead)
    assert decoder_layers(ref)[1] is decoder_layers(model)[1]
    with pytest.raises(ValueError, match="has 2 decoder layers"):
        create_reference_model(model, num_shared_layers=3)
