"""The bundled synthetic task: determinism, splits, data shapes, and the judge on hand-worked examples."""

from __future__ import annotations

import pytest

from rlhf_core.data.synthetic import (
    CATEGORIES,
    SyntheticTask,
    judge_responses,
    parse_prompt,
    score_response,
)

FRUITS = "Name two fruits."  # preferred fruits: grape, mango, plum


def _texts(dataset, column="prompt"):
    return [row[column][0]["content"] for row in dataset]


def test_same_seed_same_data_and_calls_do_not_interfere():
    a, b = SyntheticTask(seed=3), SyntheticTask(seed=3)
    a.preference_dataset(5)  # drawing from one generator must not shift another
    assert a.sft_dataset(20)["messages"] == b.sft_dataset(20)["messages"]
    assert a.preference_dataset(20).to_dict() == b.preference_dataset(20).to_dict()
    assert a.prompt_dataset(10).to_dict() == b.prompt_dataset(10).to_dict()
    assert a.sft_dataset(20)["messages"] == a.sft_dataset(20)["messages"]


def test_different_seeds_differ():
    a, b = SyntheticTask(seed=0), SyntheticTask(seed=1)
    assert a.sft_dataset(20)["messages"] != b.sft_dataset(20)["messages"]
    assert set(_texts(a.prompt_dataset(18))) != set(_texts(b.prompt_dataset(18)))


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_heldout_prompts_are_disjoint_from_training_prompts(seed):
    task = SyntheticTask(seed)
    heldout = set(_texts(task.prompt_dataset(18, split="heldout")))
    train = set(_texts(task.prompt_dataset(90, split="train")))
    assert len(heldout) == 18 and len(train) == 90
    assert not heldout & train
    assert not heldout & set(_texts(task.sft_dataset(300), "messages"))
    assert not heldout & set(_texts(task.preference_dataset(300)))
    # Every (category, count) is held out exactly once, so held-out scores cover the whole task.
    assert sorted((parse_prompt(p)[0].plural, parse_prompt(p)[1]) for p in heldout) == sorted(
        (c.plural, k) for c in CATEGORIES for k in (1, 2, 3)
    )


def test_prompt_dataset_cycles_past_the_distinct_prompts():
    prompts = _texts(SyntheticTask().prompt_dataset(40))
    assert len(set(prompts[:18])) == 18 and prompts[18:36] == prompts[:18]
    with pytest.raises(ValueError, match="split must be 'train' or 'heldout', got 'test'"):
        SyntheticTask().prompt_dataset(3, split="test")


def test_dataset_columns_follow_the_contract():
    task = SyntheticTask()
    sft = task.sft_dataset(4)
    assert sft.column_names == ["messages"]
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant"]
    pref = task.preference_dataset(4)
    assert pref.column_names == ["prompt", "chosen", "rejected"]
    assert [m["role"] for m in pref[0]["prompt"]] == ["user"]
    assert [m["role"] for m in pref[0]["chosen"]] == [m["role"] for m in pref[0]["rejected"]] == ["assistant"]
    assert task.prompt_dataset(4).column_names == ["prompt"]


def test_sft_answers_are_well_formed_with_uniform_items():
    rows = SyntheticTask().sft_dataset(600)["messages"]
    scores = [score_response(user["content"], bot["content"]) for user, bot in rows]
    assert all(
        sum(s[k] for k in ("format", "header", "count", "category", "distinct")) == 0.5 for s in scores
    )
    # Items drawn uniformly: about a third preferred (3 of 9 per category), which leaves room for preference training.
    preferred_share = sum(float(s["preferred"]) * 2 for s in scores) / len(scores)
    assert 0.27 < preferred_share < 0.40


def test_generated_answers_list_items_in_alphabetical_order():
    task = SyntheticTask()
    answers = [row[1]["content"] for row in task.sft_dataset(200)["messages"]]
    pref = task.preference_dataset(200)
    answers += [m[0]["content"] for m in pref["chosen"]] + [m[0]["content"] for m in pref["rejected"]]
    for answer in answers:
        items = answer.split(": ", 1)[1].rstrip(".").split(", ")
        assert items == sorted(items), answer


def test_preference_pairs_are_both_well_formed_and_chosen_is_preferred():
    task = SyntheticTask()
    for row in task.preference_dataset(300):
        prompt, chosen, rejected = row["prompt"], row["chosen"][0]["content"], row["rejected"][0]["content"]
        c, r = score_response(prompt, chosen), score_response(prompt, rejected)
        assert c["format"] + c["header"] + c["count"] + c["category"] + c["distinct"] == 0.5
        assert r["format"] + r["header"] + r["count"] + r["category"] + r["distinct"] == 0.5
        assert c["preferred"] > r["preferred"]
        assert task.judge(prompt, chosen) > task.judge(prompt, rejected)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Two fruits: mango, plum.", 1.0),  # all checks + 2/2 preferred
        ("Two fruits: plum, grape.<|end|>", 1.0),  # any order
        ("  two FRUITS:   Mango,  plum. <|end|><|pad|><|pad|>", 1.0),  # case, whitespace, trailing tokens
        ("2 fruits: mango, plum.", 1.0),  # digits accepted for the count
        ("Two fruits: apple, mango.", 0.75),  # 0.5 + 0.5 * 1/2
        ("Two fruits: apple, cherry.", 0.5),  # well formed, nothing preferred
        ("Two fruits: mango, mango.", 0.65),  # repeated: no distinct credit, 1 distinct preferred of 2
        ("Two fruits: carrot, mango.", 0.65),  # a vegetable: no category credit
        ("Three fruits: grape, mango, plum.", 0.8),  # wrong header and count; preferred 3 / max(2, 3)
        ("One fruit: mango.", 0.55),  # header and count wrong; preferred 1/2
        ("Two animals: mango, plum.", 0.9),  # header names the wrong category
        ("Two fruits: mango, plum", 0.0),  # no full stop: not parseable
        ("mango and plum", 0.0),
        ("", 0.0),
        ("<|end|>Two fruits: mango, plum.", 0.0),  # nothing before the end of turn
    ],
)
def test_judge_hand_worked_examples(response, expected):
    assert SyntheticTask().judge(FRUITS, response) == pytest.approx(expected, abs=1e-12)


def test_judge_accepts_message_lists_and_rendered_prompts():
    task = SyntheticTask()
    rendered = "<|bos|><|user|>\nList three colours, please.<|end|>\n<|assistant|>\n"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "List three colours, please."},
    ]
    answer = "Three colors: green, red, purple."  # American spelling accepted
    assert task.judge(rendered, answer) == task.judge(messages, answer) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_judge_rejects_prompts_not_from_the_task():
    with pytest.raises(ValueError, match="does not name exactly one category"):
        SyntheticTask().judge("What is the capital of France?", "Paris.")
    with pytest.raises(ValueError, match="no user message"):
        SyntheticTask().judge([{"role": "system", "content": "hi"}], "x")


def test_judge_batch_and_module_level_reward_fn():
    prompts = [FRUITS, "Can you give me one animal?", "Tell me three sports."]
    responses = ["Two fruits: mango, plum.", "One animal: cat.", "garbage"]
    scores = SyntheticTask().judge_batch(prompts, responses)
    assert scores == pytest.approx([1.0, 0.5, 0.0])
    assert judge_responses(prompts, responses) == scores
    assert all(isinstance(s, float) for s in scores)
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        judge_responses(prompts, responses[:2])


def test_answers_listing_only_preferred_items_score_one():
    task = SyntheticTask()
    prompts = task.prompt_dataset(18)["prompt"]
    perfect = []
    for prompt in prompts:
        cat, k = parse_prompt(prompt)
        items = sorted(cat.preferred)[:k]
        perfect.append(
            f"{['One', 'Two', 'Three'][k - 1]} {cat.singular if k == 1 else cat.plural}: {', '.join(items)}."
        )
    assert task.judge_batch(prompts, perfect) == [1.0] * 18


def test_corpus_is_seed_independent_and_covers_every_item():
    corpus = SyntheticTask(0).corpus()
    assert corpus == SyntheticTask(7).corpus()
    text = "\n".join(corpus)
    assert all(item in text for cat in CATEGORIES for item in cat.items)
    assert "The quick brown fox jumps over the lazy dog." in corpus  # the bundled general English
