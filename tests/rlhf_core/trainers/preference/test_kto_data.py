"""KTO data preparation: TRL's dataset formats, unpairing, mismatched completions, the length policy, the collator and
the whole shared HH-RLHF file (TRL 1.16 KTOConfig field parity: tests/rlhf_core/trainers/test_trl_field_parity.py)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from rlhf_core.data.hh_rlhf import default_hh_rlhf_path, load_hh_rlhf
from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.trainers.preference.kto_data import UnpairedCollator, prepare_kto_dataset


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def rows(dataset) -> list[tuple]:
    return [(tuple(r["prompt_ids"]), tuple(r["completion_ids"]), r["label"]) for r in dataset]


def test_unpaired_strings_end_with_eos_and_keep_their_labels(tokenizer):
    data = Dataset.from_dict(
        {
            "prompt": ["The sky is", "The sun is"],
            "completion": [" blue.", " in the sea."],
            "label": [True, False],
        }
    )
    out = prepare_kto_dataset(data, tokenizer, max_length=64)
    eos = tokenizer.eos_token_id
    assert rows(out) == [
        (tuple(ids(tokenizer, "The sky is")), (*ids(tokenizer, " blue."), eos), True),
        (tuple(ids(tokenizer, "The sun is")), (*ids(tokenizer, " in the sea."), eos), False),
    ]
    assert "KL_completion_ids" not in out.column_names  # kl_block=None: no mismatched completions


def test_paired_and_trl_unpaired_conversations_give_the_same_examples(tokenizer):
    trl_data_utils = pytest.importorskip("trl.data_utils")
    pairs = SyntheticTask(0).preference_dataset(6)  # prompt/chosen/rejected message lists
    unpaired = trl_data_utils.unpair_preference_dataset(pairs)  # TRL's own unpairing: prompt/completion/label
    assert set(unpaired.column_names) == {"prompt", "completion", "label"}
    from_pairs = prepare_kto_dataset(pairs, tokenizer, max_length=128)
    from_unpaired = prepare_kto_dataset(unpaired, tokenizer, max_length=128)
    assert sorted(rows(from_pairs)) == sorted(rows(from_unpaired))
    first = pairs[0]
    prompt = tokenizer.apply_chat_template(first["prompt"], add_generation_prompt=True, return_dict=True)
    full = tokenizer.apply_chat_template(first["prompt"] + first["chosen"], return_dict=True)["input_ids"]
    example = from_pairs[0]
    assert example["prompt_ids"] == prompt["input_ids"] and example["label"] is True
    # the completion is the template's rendering of the answer, cut after its eos (the template's newline dropped)
    assert example["completion_ids"][-1] == tokenizer.eos_token_id
    assert (
        full[: len(example["prompt_ids"]) + len(example["completion_ids"])]
        == example["prompt_ids"] + example["completion_ids"]
    )


def test_implicit_prompt_pairs_anthropic_hh_style(tokenizer):
    data = Dataset.from_dict(
        {
            "chosen": ["\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"],
            "rejected": ["\n\nHuman: Hi there\n\nAssistant: Go away."],
        }
    )
    out = prepare_kto_dataset(data, tokenizer, max_length=64)
    assert [tokenizer.decode(r["prompt_ids"]) for r in out] == ["\n\nHuman: Hi there\n\nAssistant:"] * 2
    texts = [tokenizer.decode(r["completion_ids"], skip_special_tokens=True) for r in out]
    assert texts == [" Hello! How can I help?", " Go away."] and out["label"] == [True, False]


def test_unpairing_order_and_mismatched_completions_by_hand(tokenizer):
    # 4 pairs, batches of 4 examples -> blocks of 2 pairs: c0 c1 r0 r1 | c2 c3 r2 r3; in each block of 4,
    # example i gets the completion of example i-1 (the first gets the last)
    data = Dataset.from_dict(
        {"prompt": [f"q{i}" for i in range(4)], "chosen": [f" good{i}" for i in range(4)],
         "rejected": [f" bad{i}" for i in range(4)]}
    )  # fmt: skip
    out = prepare_kto_dataset(data, tokenizer, max_length=64, kl_block=4)

    def text(values):
        return [tokenizer.decode(v, skip_special_tokens=True).strip() for v in values]

    assert text(out["completion_ids"]) == ["good0", "good1", "bad0", "bad1", "good2", "good3", "bad2", "bad3"]
    assert out["label"] == [True, True, False, False] * 2
    assert text(out["KL_completion_ids"]) == [
        "bad1",
        "good0",
        "good1",
        "bad0",
        "bad3",
        "good2",
        "good3",
        "bad2",
    ]
    assert text(out["prompt_ids"]) == ["q0", "q1", "q0", "q1", "q2", "q3", "q2", "q3"]  # never its own pair


def test_length_policy_truncates_or_drops_and_keeps_the_prompt_end(tokenizer):
    long_prompt = " ".join(f"word{i}" for i in range(40))
    data = Dataset.from_dict(
        {"prompt": [long_prompt, "short"], "completion": [" answer " * 20, " fine"], "label": [True, False]}
    )
    truncated = prepare_kto_dataset(data, tokenizer, max_length=32)
    assert len(truncated) == 2
    first = truncated[0]
    assert len(first["prompt_ids"]) + len(first["completion_ids"]) == 32
    assert len(first["prompt_ids"]) == 16  # the prompt gives up tokens first, down to half of max_length
    assert first["prompt_ids"][-3:] == ids(tokenizer, long_prompt)[-3:]  # ... keeping its end
    assert truncated[1] == prepare_kto_dataset(data, tokenizer, max_length=None)[1]
    dropped = prepare_kto_dataset(data, tokenizer, max_length=32, overlong="drop")
    assert dropped["label"] == [False]
    short_prompts = prepare_kto_dataset(data, tokenizer, max_length=None, max_prompt_length=5)
    assert short_prompts[0]["prompt_ids"] == ids(tokenizer, long_prompt)[-5:]  # rlhf-tiny strings have no bos
    assert short_prompts[1]["prompt_ids"] == ids(tokenizer, "short")


def test_tokenised_datasets_pass_through_and_get_mismatched_completions(tokenizer):
    data = Dataset.from_dict(
        {
            "prompt_ids": [[1, 2], [3], [4, 5]],
            "completion_ids": [[6], [7, 8], [9]],
            "label": [True, False, True],
        }
    )
    out = prepare_kto_dataset(data, None, max_length=64, kl_block=2)
    assert out["completion_ids"] == data["completion_ids"]
    assert out["KL_completion_ids"] == [
        [7, 8],
        [6],
        [9],
    ]  # blocks of 2: rotated; the last block alone keeps its own
    kept = out.map(lambda r: {"KL_completion_ids": [0]})
    assert prepare_kto_dataset(kept, None, max_length=64, kl_block=2)["KL_completion_ids"] == [[0]] * 3


def test_collator_by_hand():
    features = [
        {"prompt_ids": [1, 2, 3], "completion_ids": [4, 5], "KL_completion_ids": [6], "label": True, "ref_logps": -1.5},
        {"prompt_ids": [7, 8], "completion_ids": [9], "KL_completion_ids": [10, 11, 12], "label": False, "ref_logps": -2.0},
    ]  # fmt: skip
    batch = UnpairedCollator(0, max_length=4)(features)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [7, 8, 9, 0]]  # cut to max_length, right padded
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 4], [-100, -100, 9, -100]]
    assert batch["KL_input_ids"].tolist() == [[1, 2, 3, 6], [7, 8, 10, 11]]
    assert batch["KL_labels"].tolist() == [[-100, -100, -100, 6], [-100, -100, 10, 11]]
    assert batch["label"].tolist() == [True, False] and batch["label"].dtype == torch.bool
    assert batch["ref_logps"].tolist() == [-1.5, -2.0]


@pytest.mark.slow
@pytest.mark.skipif(
    not default_hh_rlhf_path().is_file(), reason=f"HH-RLHF file not found at {default_hh_rlhf_path()}"
)
def test_the_whole_hh_rlhf_file_through_kto_preparation(tokenizer):
    pairs = load_hh_rlhf()  # implicit prompt, every valid pair of the shared file
    out = prepare_kto_dataset(pairs, tokenizer, max_length=512, kl_block=8)
    assert len(out) == 2 * len(pairs) and sum(out["label"]) == len(pairs)
    assistant = ids(tokenizer, "\n\nAssistant:")
    lengths = [len(p) + len(c) for p, c in zip(out["prompt_ids"], out["completion_ids"])]
    assert max(lengths) <= 512 and min(len(c) for c in out["completion_ids"]) >= 1
    eos = tokenizer.eos_token_id
    untruncated = [c for c, n in zip(out["completion_ids"], lengths) if n < 512]
    assert all(c[-1] == eos for c in untruncated)
    assert sum(p[-len(assistant) :] == assistant for p in out["prompt_ids"]) >= 0.99 * len(out)
    labels = out["label"]
    for block in range(0, len(out) - 8, 8):  # every batch of 8 holds 4 desirable and 4 undesirable examples
        assert sum(labels[block : block + 8]) == 4
    prompts, kl_from = out["prompt_ids"], out["KL_completion_ids"]
    same_prompt = sum(kl_from[i] == out["completion_ids"][j] and prompts[i] == prompts[j]
                      for i in range(len(out)) for j in (i - 4, i + 4) if 0 <= j < len(out))  # fmt: skip
    assert same_prompt == 0  # no mismatched completion is the other answer of its own pair
