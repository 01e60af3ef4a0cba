"""RewardTrainer: the reference example, encoder and causal-LM backbones, batching, metrics, errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import preference_cases
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    TrainerCallback,
)

from rlhf_core.data.formats import DataFormatError
from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_sequence_classifier, load_tokenizer
from rlhf_core.trainers.preference.reward import RewardTrainer
from rlhf_core.trainers.preference.reward_config import RewardConfig


def as_strings(dataset: Dataset) -> Dataset:
    """Conversational synthetic pairs as explicit-prompt strings (for a tokenizer without a chat template)."""
    return Dataset.from_dict(
        {key: [row[0]["content"] for row in dataset[key]] for key in ("prompt", "chosen", "rejected")}
    )


def build_bert_reward_model(folder: Path, *, seed: int = 0) -> Path:
    """A tiny BERT sequence classifier (num_labels=1) and a WordPiece tokenizer over the synthetic task's words,
    saved to `folder`. Like every BERT tokenizer it has [CLS]/[SEP]/[PAD] and no eos token."""
    task = SyntheticTask(seed)
    texts = list(task.corpus())
    for row in task.preference_dataset(200):
        texts += [row["prompt"][0]["content"], row["chosen"][0]["content"], row["rejected"][0]["content"]]
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pair_accuracy(trainer: RewardTrainer, dataset: Dataset) -> float:
    """Share of pairs whose chosen reward beats the rejected one, from the trainer's predictions."""
    rewards = torch.as_tensor(trainer.predict(dataset).predictions)
    return (rewards[:, 0] > rewards[:, 1]).float().mean().item()


def quick_config(**overrides) -> RewardConfig:
    return preference_cases.quick_config(
        RewardConfig, **{"per_device_eval_batch_size": 16, "max_length": 96, **overrides}
    )


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return load_tokenizer("rlhf-tiny")


def test_reference_example_with_a_local_encoder_that_has_no_eos(tmp_path):
    model_name = str(build_bert_reward_model(tmp_path / "encoder"))
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    assert tokenizer.eos_token is None  # the case that crashes TRL 1.16's reward trainer
    dataset = as_strings(SyntheticTask(0).preference_dataset(16))

    # ---- the reference document's example; only the model, the dataset and the import changed ----
    from rlhf_core import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(model_name)
    config = RewardConfig(learning_rate=1e-5, num_train_epochs=1, per_device_train_batch_size=4)
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, tokenizer=tokenizer)
    trainer.train()
    trainer.save_model("path/to/reward_model")
    # ------------------------------------------------------------------------------------------------

    assert trainer.state.global_step == 4  # 16 pairs / 4 per step, one epoch
    row = trainer.train_dataset[0]
    ids = torch.tensor([row["prompt_input_ids"] + row["chosen_input_ids"]])
    assert tokenizer.convert_ids_to_tokens(ids[0].tolist())[-1] == "[SEP]"  # the encoder's own end marker
    reloaded = AutoModelForSequenceClassification.from_pretrained("path/to/reward_model").eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


def test_bert_encoder_reward_model_learns_the_synthetic_preference(tmp_path):
    folder = build_bert_reward_model(tmp_path / "encoder")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = as_strings(SyntheticTask(0).preference_dataset(400))
    train, test = data.select(range(300)), data.select(range(300, 400))
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    trainer = RewardTrainer(
        model=model,
        args=quick_config(per_device_train_batch_size=16, max_steps=30, logging_steps=10),
        train_dataset=train,
        processing_class=tokenizer,
    )
    before = pair_accuracy(trainer, test)
    trainer.train()
    after = pair_accuracy(trainer, test)
    assert after >= 0.8 and after > before + 0.2, (before, after)


def test_loss_equals_per_sequence_scores_with_margin_and_centering(tiny_tokenizer):
    # Implicit-prompt (Anthropic HH style) strings with a per-pair margin.
    rows = {
        "chosen": [
            "\n\nHuman: Name two fruits.\n\nAssistant: Two fruits: mango, plum.",
            "\n\nHuman: Tell me one animal.\n\nAssistant: One animal: fox.",
            "\n\nHuman: Hi\n\nAssistant: Hello! How can I help you today with anything?",
        ],
        "rejected": [
            "\n\nHuman: Name two fruits.\n\nAssistant: Two fruits: pear, lemon.",
            "\n\nHuman: Tell me one animal.\n\nAssistant: One animal: cat.",
            "\n\nHuman: Hi\n\nAssistant: Go away.",
        ],
        "margin": [0.5, 0.0, 2.0],
    }
    torch.manual_seed(0)
    model = load_sequence_classifier("rlhf-tiny")
    coef = 0.1
    trainer = RewardTrainer(
        model=model,
        args=quick_config(center_rewards_coefficient=coef),
        train_dataset=Dataset.from_dict(rows),
        tokenizer=tiny_tokenizer,
    )
    features = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(features)
    assert batch["input_ids"].shape[0] == 6 and batch["margin"].tolist() == [0.5, 0.0, 2.0]
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)

        def alone(ids):  # each sequence scored on its own, without padding
            return model(input_ids=torch.tensor([ids])).logits[0, 0]

        chosen = torch.stack([alone(f["prompt_input_ids"] + f["chosen_input_ids"]) for f in features])
        rejected = torch.stack([alone(f["prompt_input_ids"] + f["rejected_input_ids"]) for f in features])
    margin = torch.tensor(rows["margin"])
    expected = -F.logsigmoid(chosen - rejected - margin).mean() + coef * ((chosen + rejected) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    # the prompt was extracted: both completions start right after the shared "Assistant:"
    prompt = tiny_tokenizer.decode(features[0]["prompt_input_ids"])
    assert prompt.rstrip().endswith("Assistant:") and "mango" not in prompt


def test_padding_free_rewards_equal_padded_rewards_and_encoders_stay_padded(tiny_tokenizer, tmp_path):
    # lengths that vary (as in real data), so that merging the rows computes less than padding them
    prompts = ["Name one fruit.", "Tell me about the river and the old stone bridge in the morning. " * 4]
    data = Dataset.from_dict(
        {
            "prompt": [prompts[i % 2] for i in range(8)],
            "chosen": ["Mango." if i % 3 else "The water ran quickly under it. " * 3 for i in range(8)],
            "rejected": ["Pear." if i % 2 else "Two children threw pebbles. " * 2 for i in range(8)],
        }
    )
    torch.manual_seed(0)
    model = load_sequence_classifier("rlhf-tiny")
    merged = RewardTrainer(model=model, args=quick_config(), train_dataset=data, tokenizer=tiny_tokenizer)
    padded = RewardTrainer(
        model=model, args=quick_config(padding_free=False), train_dataset=data, tokenizer=tiny_tokenizer
    )
    batch = merged.data_collator([merged.train_dataset[i] for i in range(2)])
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert merged._cost_model is not None and merged._cost_model.should_merge(lengths)
    assert padded._cost_model is None
    chosen_m, rejected_m = merged.pair_rewards(model, batch)
    chosen_p, rejected_p = padded.pair_rewards(model, batch)
    assert torch.allclose(chosen_m, chosen_p, atol=1e-5) and torch.allclose(rejected_m, rejected_p, atol=1e-5)
    # a bidirectional encoder would let merged rows see each other: the probe notices and keeps it padded
    folder = build_bert_reward_model(tmp_path / "encoder")
    bert = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(folder),
        args=quick_config(),
        train_dataset=data,
        tokenizer=AutoTokenizer.from_pretrained(folder),
    )
    assert bert._cost_model is None
    with pytest.raises(ValueError, match="padding_free=True"):
        RewardTrainer(
            model=AutoModelForSequenceClassification.from_pretrained(folder),
            args=quick_config(padding_free=True),
            train_dataset=data,
            tokenizer=AutoTokenizer.from_pretrained(folder),
        )


def test_batch_8x1_equals_1x8_gradient_accumulation(tiny_tokenizer):
    data = SyntheticTask(0).preference_dataset(16)

    def run(batch_size, accumulation):
        torch.manual_seed(0)
        trainer = RewardTrainer(
            model=load_sequence_classifier("rlhf-tiny"),
            # plain SGD: Adam's g / sqrt(v) would amplify float noise on near-zero gradients into the weights
            args=quick_config(
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accumulation,
                max_steps=2,
                optim="sgd",
                learning_rate=0.5,
            ),
            train_dataset=data,
            tokenizer=tiny_tokenizer,
        )
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        return losses, torch.nn.utils.parameters_to_vector(trainer.model.parameters()).detach()

    losses_a, weights_a = run(8, 1)
    losses_b, weights_b = run(1, 8)
    assert len(losses_a) == 2
    assert losses_a == pytest.approx(losses_b, abs=1e-5)
    assert losses_a[1] != pytest.approx(losses_a[0], abs=1e-4)  # the first update did change the model
    assert torch.allclose(weights_a, weights_b, atol=1e-5)


def test_metrics_reach_callbacks_through_trainer_log(tiny_tokenizer):
    seen: list[dict] = []

    class Capture(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    data = SyntheticTask(0).preference_dataset(24)
    trainer = RewardTrainer(
        model=load_sequence_classifier("rlhf-tiny"),
        args=quick_config(max_steps=2, eval_strategy="steps", eval_steps=2),
        train_dataset=data.select(range(16)),
        eval_dataset=data.select(range(16, 24)),
        tokenizer=tiny_tokenizer,
        callbacks=[Capture()],
    )
    trainer.train()
    train_logs = [log for log in seen if "loss" in log]
    eval_logs = [log for log in seen if "eval_loss" in log]
    for key in ("accuracy", "margin", "mean_reward", "min_reward", "max_reward"):
        assert all(key in log for log in train_logs), key
        assert f"eval_{key}" in eval_logs[-1], key
    log = train_logs[0]
    assert log["min_reward"] <= log["mean_reward"] <= log["max_reward"]
    assert 0.0 <= log["accuracy"] <= 1.0
    assert math.isfinite(log["loss"])


def test_clear_errors(tiny_tokenizer):
    two_labels = load_sequence_classifier("rlhf-tiny", num_labels=2)
    data = SyntheticTask(0).preference_dataset(4)
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardTrainer(model=two_labels, args=quick_config(), train_dataset=data, tokenizer=tiny_tokenizer)
    bad = Dataset.from_dict(
        {"prompt": ["Hi.", "Hello."], "chosen": ["Fine.", None], "rejected": ["No.", "Bad."]}
    )
    with pytest.raises(DataFormatError, match=r"row 1.*chosen"):
        RewardTrainer(
            model=load_sequence_classifier("rlhf-tiny"),
            args=quick_config(),
            train_dataset=bad,
            tokenizer=tiny_tokenizer,
        )
    with pytest.raises(ValueError, match="overlong"):
        RewardConfig(output_dir="out", overlong="cut")


@pytest.mark.slow
def test_tiny_reward_model_reaches_high_heldout_pair_accuracy(tiny_tokenizer):
    data = SyntheticTask(0).preference_dataset(500)
    train = data.select(range(400))
    seen = {(str(r["prompt"]), str(r["chosen"]), str(r["rejected"])) for r in train}
    test = data.select(
        [
            i
            for i in range(400, 500)
            if (str(data[i]["prompt"]), str(data[i]["chosen"]), str(data[i]["rejected"])) not in seen
        ]
    )
    assert len(test) >= 50
    torch.manual_seed(0)
    trainer = RewardTrainer(
        model=load_sequence_classifier("rlhf-tiny"),
        args=quick_config(per_device_train_batch_size=16, max_steps=40, logging_steps=10),
        train_dataset=train,
        tokenizer=tiny_tokenizer,
    )
    before = pair_accuracy(trainer, test)
    trainer.train()
    after = pair_accuracy(trainer, test)
    assert after >= 0.9 and after > before + 0.3, (before, after)


@pytest.mark.slow
def test_hh_rlhf_slice_beats_chance_on_heldout_pairs(tiny_tokenizer):
    from rlhf_core.data.hh_rlhf import default_hh_rlhf_path, load_hh_rlhf

    if not default_hh_rlhf_path().exists():
        pytest.skip(f"HH-RLHF data not found at {default_hh_rlhf_path()} (set RLHF_HH_RLHF_PATH)")
    pairs = load_hh_rlhf().shuffle(seed=0)
    train, test = pairs.select(range(1500)), pairs.select(range(1500, len(pairs)))
    assert len(test) >= 800
    torch.manual_seed(0)
    trainer = RewardTrainer(
        model=load_sequence_classifier("rlhf-tiny"),
        # Short pairs (the prompt's last 16 tokens, then the completions' openings) for one epoch: what a
        # 0.2M-parameter model can learn in seconds; it scores about 0.6 here (0.63 on the 80/20 benchmark).
        args=quick_config(
            per_device_train_batch_size=16,
            per_device_eval_batch_size=64,
            num_train_epochs=1,
            lr_scheduler_type="cosine",
            warmup_steps=5,
            max_length=96,
            max_prompt_length=16,
            logging_steps=50,
        ),
        train_dataset=train,
        tokenizer=tiny_tokenizer,
    )
    trainer.train()
    accuracy = pair_accuracy(trainer, test)
    # chance is 0.5 with a standard error of 0.018 on 808 pairs: 0.55 is ~2.8 standard errors above it
    print(f"HH-RLHF held-out pair accuracy {accuracy:.4f} on {len(test)} pairs")
    assert accuracy > 0.55, accuracy
