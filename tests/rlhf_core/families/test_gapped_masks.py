"""Classic ``step(..., response_masks=...)`` with a gap in the mask (a tool output inside the response).

The score lands on the last unmasked token, the masked tokens stay attended context (no real token trimmed), and
GAE runs across the gap as TRL's classic PPOTrainer computed it (values and rewards zeroed under the mask, the
recursion not cut).
"""

from __future__ import annotations

import pytest
import torch
from family_cases import QUIET

from rlhf_core import PPOConfig, PPOTrainer, create_reference_model
from rlhf_core.losses.ppo import gae
from rlhf_core.models.families import family_model_path
from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.trainers.ppo.experience import Experience


def test_gae_carries_the_advantage_across_a_gap():
    # Worked by hand with TRL's loop, gamma = lam = 1, values and rewards zeroed under the mask:
    # t=3: delta = 1 - .4 = .6 -> A=.6; t=2: .4 - .3 = .1 -> .7; t=1 (masked): .3 - 0 -> 1.0; t=0: -.5 -> .5
    rewards, values = torch.tensor([[0.0, 0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.3, 0.4]])
    out = gae(rewards, values, torch.tensor([[1, 0, 1, 1]]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.5, 0.0, 0.7, 0.6]]))
    torch.testing.assert_close(out.returns, torch.tensor([[1.0, 0.0, 1.0, 1.0]]))
    # A prefix mask (right padding) still ends the episode at its last token.
    out = gae(rewards[:, [0, 1, 3, 2]], values, torch.tensor([[1, 1, 1, 0]]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.5, 0.8, 0.7, 0.0]]))


@pytest.fixture(scope="module")
def llama_trainer(tmp_path_factory):
    path = family_model_path("llama")
    model = load_causal_lm(path)
    args = PPOConfig(output_dir=str(tmp_path_factory.mktemp("ppo")), batch_size=2, mini_batch_size=2,
                     ppo_epochs=1, learning_rate=1e-3, whiten_advantages=False, kl_coef=0.0, **QUIET)  # fmt: skip
    return PPOTrainer(args, model, create_reference_model(model), load_tokenizer(path))


def test_step_with_gapped_masks_scores_last_unmasked_token_and_keeps_every_token(llama_trainer):
    trainer, tok = llama_trainer, llama_trainer.tokenizer
    queries = [
        tok("Name two fruits.", return_tensors="pt").input_ids[0],
        tok("Hi", return_tensors="pt").input_ids[0],
    ]
    responses = [torch.tensor([40, 41, 42, 43, 44, 45, 46]), torch.tensor([50, 51, 52, 53])]
    masks = [torch.tensor([1, 1, 0, 0, 0, 1, 1]), torch.tensor([1, 0, 1, 0])]  # the second ends in a gap
    batch = trainer._episode_batch(queries, responses, masks)
    assert batch.response_mask.sum(-1).tolist() == [7, 4]  # every real token attended: none trimmed
    exp = trainer.rollout.add_advantages(Experience(batch, scores=torch.tensor([1.0, 2.0])), kl_coef=0.0)
    assert exp.rewards.tolist() == [[0, 0, 0, 0, 0, 0, 1.0], [0, 0, 2.0, 0, 0, 0, 0]]
    assert (exp.advantages[0, :2] != 0).all() and (exp.advantages[0, 2:5] == 0).all()  # across the gap

    # The old log-probs after the gap are those of the whole text, gap tokens included, unpadded.
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    for row, (query, response) in enumerate(zip(queries, responses)):
        with torch.no_grad():
            logits = policy(input_ids=torch.cat([query, response])[None]).logits[0, len(query) - 1 : -1]
        plain = (logits / trainer.args.temperature).log_softmax(-1).gather(-1, response[:, None])[
            :, 0
        ] * masks[row]
        torch.testing.assert_close(exp.logprobs[row, : len(response)], plain, atol=1e-5, rtol=1e-4)

    before = [p.detach().clone() for p in policy.parameters()]
    stats = trainer.step(queries, responses, [1.0, 2.0], response_masks=masks)
    assert stats["objective/scores"] == pytest.approx(1.5)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
