"""Every trainer's data preparation takes all 2,312 pairs of the shared HH-RLHF file with default settings.

The file holds 4 pairs whose preferred answer is empty (rows 86, 516, 925, 1103): they are valid, the completion
is the end-of-text token alone. Skips only when the file is absent (CI has it at ../shared/data/hh-rlhf/).
"""

from __future__ import annotations

import gzip
import json

import pytest
from datasets import Dataset

from rlhf_core import (
    DPOConfig,
    DPOTrainer,
    PPOConfig,
    PPOTrainer,
    RewardConfig,
    RewardTrainer,
    SFTConfig,
    SFTTrainer,
)
from rlhf_core.data.hh_rlhf import default_hh_rlhf_path, load_hh_rlhf
from rlhf_core.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer

HH = default_hh_rlhf_path()
pytestmark = pytest.mark.skipif(not HH.is_file(), reason=f"HH-RLHF file not found at {HH}")
ROWS = 2312
EMPTY_ANSWER_ROWS = [86, 516, 925, 1103]


@pytest.fixture(scope="module")
def raw_pairs():
    with gzip.open(HH, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == ROWS
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("rlhf-tiny")


def _check_pairs(dataset, tokenizer):
    assert len(dataset) == ROWS
    for i in EMPTY_ANSWER_ROWS:
        assert dataset[i]["chosen_input_ids"] == [tokenizer.eos_token_id]


@pytest.mark.parametrize("trainer", ["reward", "dpo"])
def test_pairwise_trainers_take_the_whole_file(trainer, raw_pairs, tokenizer, tmp_path):
    if trainer == "reward":
        built = RewardTrainer(
            model=load_sequence_classifier("rlhf-tiny"),
            args=RewardConfig(output_dir=str(tmp_path)),
            train_dataset=raw_pairs,
            processing_class=tokenizer,
        )
    else:
        built = DPOTrainer(
            model=load_causal_lm("rlhf-tiny"),
            args=DPOConfig(output_dir=str(tmp_path)),
            train_dataset=raw_pairs,
            processing_class=tokenizer,
        )
    _check_pairs(built.train_dataset, tokenizer)


def test_sft_takes_the_whole_file_as_prompt_completion_and_as_text(raw_pairs, tokenizer, tmp_path):
    explicit = load_hh_rlhf(explicit_prompt=True, skip_invalid=False)
    rows = Dataset.from_dict({"prompt": explicit["prompt"], "completion": explicit["chosen"]})
    model = load_causal_lm("rlhf-tiny")
    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path)), train_dataset=rows,
                         processing_class=tokenizer)  # fmt: skip
    data = trainer.train_dataset
    # default policy: a row keeps its first max_length tokens; one whose prompt alone fills them has no loss token
    # left and is dropped (counted and logged), never an error
    prompt_only = sum(len(tokenizer(p)["input_ids"]) >= trainer.args.max_length for p in explicit["prompt"])
    assert len(data) == ROWS - prompt_only and prompt_only < 20
    data = data.add_column("row", [i for i, p in enumerate(explicit["prompt"])
                                   if len(tokenizer(p)["input_ids"]) < trainer.args.max_length])  # fmt: skip
    data = {row["row"]: row for row in data if row["row"] in EMPTY_ANSWER_ROWS}
    for i in EMPTY_ANSWER_ROWS:  # an empty answer: the loss is on the end-of-text token alone
        mask, ids = data[i]["completion_mask"], data[i]["input_ids"]
        assert sum(mask) == 1 and ids[mask.index(1)] == tokenizer.eos_token_id
    text = Dataset.from_dict({"text": raw_pairs["chosen"]})
    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path)), train_dataset=text,
                         processing_class=tokenizer)  # fmt: skip
    assert len(trainer.train_dataset) == ROWS


def test_ppo_takes_the_prompts_of_the_whole_file(raw_pairs, tokenizer, tmp_path):
    trainer = PPOTrainer(
        args=PPOConfig(output_dir=str(tmp_path)),
        processing_class=tokenizer,
        model=load_causal_lm("rlhf-tiny"),
        reward_model=load_sequence_classifier("rlhf-tiny"),
        train_dataset=raw_pairs,  # implicit-prompt pairs: the prompt both answers share
    )
    prompts = trainer.train_dataset
    assert len(prompts) == ROWS
    explicit = load_hh_rlhf(explicit_prompt=True, skip_invalid=False)
    assert (
        tokenizer.decode(prompts[EMPTY_ANSWER_ROWS[0]]["input_ids"])
        == explicit[EMPTY_ANSWER_ROWS[0]]["prompt"]
    )


@pytest.mark.parametrize("name", ["GRPOTrainer", "RLOOTrainer"])
def test_online_trainers_take_the_prompts_of_the_whole_file(name, tokenizer, tmp_path):
    import rlhf_core

    trainer_class, config_class = (
        getattr(rlhf_core, name),
        getattr(rlhf_core, name.replace("Trainer", "Config")),
    )
    explicit = load_hh_rlhf(explicit_prompt=True, skip_invalid=False)  # prompt + the answers as extra columns
    trainer = trainer_class(model=load_causal_lm("rlhf-tiny"), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                            args=config_class(output_dir=str(tmp_path)), train_dataset=explicit,
                            processing_class=tokenizer)  # fmt: skip
    assert len(trainer.train_dataset) == ROWS


def test_kto_takes_the_whole_file_as_unpaired_rows(raw_pairs, tokenizer, tmp_path):
    from rlhf_core import KTOConfig, KTOTrainer

    trainer = KTOTrainer(model=load_causal_lm("rlhf-tiny"), args=KTOConfig(output_dir=str(tmp_path)),
                         train_dataset=raw_pairs, processing_class=tokenizer)  # fmt: skip
    assert len(trainer.train_dataset) == 2 * ROWS  # each pair: a desirable and an undesirable row


def test_trl_reward_example_on_the_whole_file(raw_pairs, tmp_path):
    """TRL's reward-model example with only the import changed (and a tiny model, few steps) on all 2,312 pairs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_core.models.tiny import tiny_model_path

    model_name, dataset = str(tiny_model_path()), raw_pairs
    # ---- the reference document's example; only the import changed (max_steps: a few steps in CI) ----
    from rlhf_core import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    config = RewardConfig(learning_rate=1e-5, num_train_epochs=1, per_device_train_batch_size=4, max_steps=3)
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, tokenizer=tokenizer)
    trainer.train()
    trainer.save_model("path/to/reward_model")
    # ---------------------------------------------------------------------------------------------------
    assert trainer.state.global_step == 3 and len(trainer.train_dataset) == ROWS
    rewards = torch.as_tensor(trainer.predict(dataset.select(EMPTY_ANSWER_ROWS)).predictions)
    assert rewards.shape == (4, 2) and torch.isfinite(rewards).all()  # the empty answers are scored like any
    reloaded = AutoModelForSequenceClassification.from_pretrained("path/to/reward_model")
    assert reloaded.config.num_labels == 1
