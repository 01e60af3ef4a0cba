"""The classic TRL PPO API, exactly as the issue writes it, on the tiny model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_core import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, create_reference_model
from rlhf_core.core import LengthSampler
from rlhf_core.models.tiny import tiny_model_path

METRICS = ["objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/approxkl",
           "policy/clipfrac", "loss/policy", "loss/value", "val/clipfrac", "val/mean", "lr", "episode"]  # fmt: skip


def test_classic_api_as_written(tmp_path):
    torch.manual_seed(0)
    model_name = str(tiny_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    query = "Name two fruits."
    reward = torch.tensor(1.0)
    # ---- the snippet -----------------------------------------------------------------------------
    model = AutoModelForCausalLM.from_pretrained(
        model_name
    )  # a plain causal LM: the trainer adds the value head
    ref_model = create_reference_model(model)
    ppo_config = PPOConfig(learning_rate=1e-5, batch_size=16, ppo_epochs=4)
    ppo_trainer = PPOTrainer(config=ppo_config, model=model, ref_model=ref_model, tokenizer=tokenizer)
    response_length_sampler = LengthSampler(min_length=32, max_length=128)
    query_tensor = tokenizer(query, return_tensors="pt").input_ids
    response_tensor = ppo_trainer.generate(query_tensor, max_new_tokens=response_length_sampler())
    response = tokenizer.decode(response_tensor[0][query_tensor.shape[1] :])
    stats = ppo_trainer.step(
        [query], [response], [reward]
    )  # strings or token tensors; reward a float or 0-d tensor
    ppo_trainer.save_pretrained("path/to/rlhf_model")
    # ---- what it must have done ------------------------------------------------------------------
    assert torch.equal(response_tensor[0, : query_tensor.shape[1]], query_tensor[0])
    assert 1 <= response_tensor.shape[1] - query_tensor.shape[1] < 128
    assert set(METRICS) <= set(stats) and all(isinstance(v, float) for v in stats.values())
    assert stats["episode"] == 1.0 and stats["objective/scores"] == pytest.approx(1.0)
    # the user's own model object was trained in place (its reference was not)
    changed = [not torch.equal(p, q) for p, q in zip(model.parameters(), ref_model.parameters())]
    assert any(changed)
    saved = tmp_path / "path/to/rlhf_model"
    assert (saved / "value_head.safetensors").is_file() and (saved / "tokenizer.json").is_file()
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(str(saved))
    ids = torch.tensor([[1, 4, 204, 361]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids)[0], model(input_ids=ids).logits)
        assert (
            reloaded.v_head.summary.weight.abs().sum() > 0
        )  # the value head learned something and was saved
    assert AutoModelForCausalLM.from_pretrained(saved).config.vocab_size == model.config.vocab_size


@pytest.fixture(scope="module")
def trainer():
    model_name = str(tiny_model_path())
    tok = AutoTokenizer.from_pretrained(model_name)
    model = AutoModelForCausalLM.from_pretrained(model_name)
    config = PPOConfig(learning_rate=1e-4, batch_size=4, mini_batch_size=2, ppo_epochs=1, temperature=1.0,
                       output_dir="unused", report_to="none")  # fmt: skip
    return PPOTrainer(config, model, create_reference_model(model), tok)  # TRL's positional order


def test_list_queries_token_responses_and_several_episodes(trainer):
    tok = trainer.tokenizer
    queries = [tok(q, return_tensors="pt").input_ids[0] for q in ("Name two fruits.", "Hi", "List one tool.")]
    responses = trainer.generate(queries, max_new_tokens=6, return_prompt=False, batch_size=2)
    assert isinstance(responses, list) and len(responses) == 3
    assert all(1 <= len(r) <= 6 for r in responses)
    # padding is removed and nothing follows an eos
    for r in responses:
        assert tok.pad_token_id not in r.tolist()
        if tok.eos_token_id in r.tolist():
            assert r.tolist().index(tok.eos_token_id) == len(r) - 1
    stats = trainer.step(queries, responses, [0.0, 1.0, 2])
    assert stats["objective/scores"] == pytest.approx(1.0)
    assert stats["episode"] == 3.0
    one = trainer.generate(queries[0], max_new_tokens=3)
    assert one.dim() == 2 and one.shape[0] == 1 and torch.equal(one[0, : len(queries[0])], queries[0])


def test_step_errors_name_the_problem(trainer):
    with pytest.raises(ValueError, match="as many queries, responses and scores"):
        trainer.step(["a", "b"], ["x"], [1.0])
    with pytest.raises(ValueError, match=r"scores\[0\] is not finite"):
        trainer.step(["Hi"], ["there"], [float("nan")])
    with pytest.raises(ValueError, match=r"responses\[0\] is empty"):
        trainer.step(["Hi"], [torch.tensor([], dtype=torch.long)], [1.0])
    with pytest.raises(ValueError, match="needs train_dataset"):
        trainer.train()
