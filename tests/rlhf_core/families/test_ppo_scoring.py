"""PPO's reward-model scoring of prompt + response equals plain inference of the same text, in every family.

The rollout lays a batch out as left-padded prompts then right-padded responses. A causal reward model must read
its score where transformers pools the unpadded text (with pad == eos: before the final eos); an encoder (BERT,
ModernBERT) pools its first token, so it must get the text right padded, not left padded.
"""

from __future__ import annotations

import pytest
import torch
from family_cases import ALL_FAMILIES, plain_scores, reward_model, string_pairs

from rlhf_core.rollout.logprobs import ResponseBatch
from rlhf_core.rollout.scoring import reward_model_scores


def _pad(rows: list[list[int]], pad_id: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids, mask = torch.full((len(rows), width), pad_id), torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_rollout_layout_scores_equal_plain_inference(family, tmp_path):
    model, tok = reward_model(family)
    model.save_pretrained(tmp_path), tok.save_pretrained(tmp_path)
    pairs = string_pairs(5)
    prompts = [tok(p)["input_ids"] for p in pairs["prompt"]]  # with the family's own prefix/suffix tokens
    end = [tok.eos_token_id] if tok.eos_token_id is not None else []
    responses = [tok(" " + c, add_special_tokens=False)["input_ids"][: 3 + 2 * i] + end
                 for i, c in enumerate(pairs["chosen"])]  # fmt: skip
    batch = ResponseBatch(
        *_pad(prompts, tok.pad_token_id, left=True), *_pad(responses, tok.pad_token_id, left=False)
    )
    scores = reward_model_scores(model.eval(), batch, micro_batch_size=3)
    expected = plain_scores(tmp_path, [p + r for p, r in zip(prompts, responses)])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_online_reward_model_scores_equal_plain_inference(family, tmp_path):
    """GRPO/RLOO score string prompt + completion with the reward model's own tokenizer: ``tokenizer(text)`` with its
    special tokens (BERT's [CLS]/[SEP], Llama's bos), right padded, read where plain inference reads."""
    from rlhf_core.trainers.online.reward_functions import RewardFunctions, RewardSource

    model, tok = reward_model(family)
    model.save_pretrained(tmp_path), tok.save_pretrained(tmp_path)
    pairs = string_pairs(5)
    prompts, completions = (
        list(pairs["prompt"]),
        [" " + c[: 10 + 7 * i] for i, c in enumerate(pairs["chosen"])],
    )
    source = RewardSource(name="rm", model=model.eval(), tokenizer=tok)
    scores = RewardFunctions._model_scores(source, prompts, completions, torch.device("cpu"), 2)
    expected = plain_scores(tmp_path, [tok(p + c)["input_ids"] for p, c in zip(prompts, completions)])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)
