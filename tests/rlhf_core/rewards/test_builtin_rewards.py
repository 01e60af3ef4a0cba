"""The bundled reward functions: format, exact match, length target, repetition penalty (hand-worked numbers)."""

from __future__ import annotations

import pytest

from rlhf_core.rewards import (
    completion_text,
    exact_match_reward,
    format_reward,
    length_reward,
    repetition_penalty_reward,
)
from rlhf_core.rewards.repetition import repeated_ngram_fraction


def chat(text):
    return [{"role": "assistant", "content": text}]


def test_completion_text_of_strings_and_messages():
    assert completion_text("hi") == "hi"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert completion_text([]) == ""
    with pytest.raises(TypeError, match="string or a list of messages"):
        completion_text(3)


def test_format_reward_full_match_or_search():
    fn = format_reward(r"<think>.*?</think><answer>.*?</answer>")
    good = "<think>a\nb</think><answer>4</answer>"  # DOTALL: the thought spans lines
    assert fn([good, "<answer>4</answer>", chat(good)]) == [1.0, 0.0, 1.0]
    anywhere = format_reward(r"\d+", full_match=False, reward=0.5, penalty=-1.0)
    assert anywhere(["it is 42.", "none"], prompts=["p", "p"]) == [0.5, -1.0]  # extra kwargs are ignored
    assert fn.__name__ == "format_reward"  # the name the trainer logs under


def test_exact_match_against_a_dataset_column():
    fn = exact_match_reward("solution")
    assert fn(["  Paris. ", "paris", "Lyon"], solution=["paris", "Paris", "Paris"]) == [1.0, 1.0, 0.0]
    extract = exact_match_reward("answer", extract=r"<answer>(.*?)</answer>", penalty=-0.5)
    out = extract(["<answer>7</answer>", "7", chat("x <answer> 8 </answer>")], answer=[7, 7, None])
    assert out == [1.0, -0.5, None]  # no tag found: penalty; no reference: the function does not apply
    with pytest.raises(KeyError, match="'answer'.*\\['solution'\\]"):
        extract(["7"], solution=["7"], trainer_state=None)


def test_length_reward_in_characters_or_tokens():
    quickstart = length_reward(20, scale=1)  # TRL's quickstart: -abs(20 - len(completion))
    assert quickstart(["x" * 20, "x" * 25, ""]) == [0.0, -5.0, -20.0]
    relative = length_reward(10)
    assert relative([chat("x" * 15)]) == [-0.5]
    tokens = length_reward(4, unit="tokens")
    assert tokens(["a", "b"], completion_ids=[[1, 2, 3, 4], [1, 2]]) == [0.0, -0.5]
    with pytest.raises(ValueError, match="completion_ids"):
        tokens(["a"])


def test_repetition_penalty():
    # "a b a b a b": bigrams ab ba ab ba ab -> 2 distinct of 5 -> 1 - 2/5 = 0.6
    assert repeated_ngram_fraction("a b a b a b", 2) == pytest.approx(0.6)
    assert repeated_ngram_fraction("one two", 3) == 0.0
    fn = repetition_penalty_reward(ngram_size=2, max_penalty=-0.5)
    assert fn(["a b a b a b", "the cat sat"]) == pytest.approx([-0.3, 0.0])
    with pytest.raises(ValueError, match="max_penalty"):
        repetition_penalty_reward(max_penalty=1.0)
