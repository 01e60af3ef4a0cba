"""AutoModelForCausalLMWithValueHead: wrapping, forward, save/load round trip."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_core import AutoModelForCausalLMWithValueHead
from rlhf_core.models.loading import load_causal_lm
from rlhf_core.models.tiny import TINY_MODEL
from rlhf_core.models.value_head import VALUE_HEAD_FILE, backbone


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm(TINY_MODEL)


def test_wraps_a_plain_model_object_and_returns_logits_and_values(lm):
    model = AutoModelForCausalLMWithValueHead.from_pretrained(lm)
    assert model.pretrained_model is lm
    ids = torch.tensor([[1, 4, 204, 361], [1, 4, 320, 342]])
    logits, loss, values = model(input_ids=ids)
    assert logits.shape == (2, 4, lm.config.vocab_size) and values.shape == (2, 4)
    assert loss is None
    # the head starts at zero, and the logits are the language model's own
    assert torch.count_nonzero(values) == 0
    torch.testing.assert_close(logits, lm(input_ids=ids).logits)
    # a value is a linear function of the last hidden state, which the body returns without projection
    with torch.no_grad():
        model.v_head.summary.weight.normal_()
        hidden = model.hidden_states(ids)
        torch.testing.assert_close(model(input_ids=ids)[2], hidden @ model.v_head.summary.weight[0])
        torch.testing.assert_close(hidden, backbone(lm)(input_ids=ids).last_hidden_state)


def test_save_and_load_round_trip_keeps_the_head_and_stays_a_plain_lm_checkpoint(lm, tmp_path):
    model = AutoModelForCausalLMWithValueHead(lm)
    with torch.no_grad():
        model.v_head.summary.weight.normal_()
        model.v_head.summary.bias.fill_(0.25)
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / VALUE_HEAD_FILE).is_file()

    again = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "ckpt"))
    ids = torch.tensor([[1, 4, 204, 361, 320]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids)[2], model(input_ids=ids)[2])
        assert again.v_head.summary.bias.item() == pytest.approx(0.25)
        # the same folder loads as a plain causal LM with identical logits
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
        torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids)[0])


def test_loads_by_name_and_head_starts_at_zero_without_a_saved_head():
    model = AutoModelForCausalLMWithValueHead.from_pretrained(TINY_MODEL)
    assert torch.count_nonzero(model.v_head.summary.weight) == 0
    assert model.config.vocab_size > 0 and model.device.type == "cpu"


def test_reads_an_old_trl_checkpoint_with_the_head_inside_the_weights(lm, tmp_path):
    from safetensors.torch import load_file, save_file

    lm.save_pretrained(tmp_path / "old")
    weights = tmp_path / "old" / "model.safetensors"
    state = load_file(weights)
    state["v_head.summary.weight"] = torch.full((1, lm.config.hidden_size), 0.5)
    state["v_head.summary.bias"] = torch.tensor([-1.0])
    save_file(state, weights, metadata={"format": "pt"})
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "old"))
    assert model.v_head.summary.bias.item() == -1.0
    assert torch.all(model.v_head.summary.weight == 0.5)


def test_rejects_double_wrapping(lm):
    wrapped = AutoModelForCausalLMWithValueHead(lm)
    assert AutoModelForCausalLMWithValueHead.from_pretrained(wrapped) is wrapped
    with pytest.raises(TypeError, match="already has a value head"):
        AutoModelForCausalLMWithValueHead(wrapped)
