"""Reward-model scores at the last non-pad token; reward-function checks."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf_core.models.tiny import tiny_model_path
from rlhf_core.rollout.logprobs import ResponseBatch
from rlhf_core.rollout.scoring import last_token_index, reward_function_scores, reward_model_scores


def test_last_token_index_with_both_paddings():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [4, 5, 1]


def test_reward_model_score_is_the_unpadded_sequence_score(tiny):
    _, tok = tiny
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_path(), num_labels=1).eval()
    torch.nn.init.normal_(rm.score.weight)
    seqs = [([1, 4, 204, 361], [10, 11, 2]), ([1, 4], [13, 14, 15, 16, 2])]
    batch = ResponseBatch(
        torch.tensor([[1, 4, 204, 361], [0, 0, 1, 4]]), torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]),
        torch.tensor([[10, 11, 2, 0, 0], [13, 14, 15, 16, 2]]), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    )  # fmt: skip
    scores = reward_model_scores(rm, batch, micro_batch_size=1)
    for i, (p, r) in enumerate(seqs):
        with torch.no_grad():
            expected = rm(input_ids=torch.tensor([p + r])).logits[0, 0]
        assert scores[i].item() == pytest.approx(expected.item(), abs=1e-5)


def test_reward_function_results_are_checked():
    assert reward_function_scores(lambda p, r: [1, 2.5], ["a", "b"], ["x", "y"]).tolist() == [1.0, 2.5]
    assert reward_function_scores(lambda p, r: torch.tensor([0.5]), ["a"], ["x"]).tolist() == [0.5]

    def short(p, r):
        return [1.0]

    with pytest.raises(ValueError, match="returned 1 scores for 2 responses"):
        reward_function_scores(short, ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match=r"non-finite scores at rows \[1\]"):
        reward_function_scores(lambda p, r: [0.0, math.nan], ["a", "b"], ["x", "y"])
    with pytest.raises(TypeError, match="list of numbers"):
        reward_function_scores(lambda p, r: ["good", "bad"], ["a", "b"], ["x", "y"])
