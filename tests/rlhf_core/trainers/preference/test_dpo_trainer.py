"""DPOTrainer: fused log-probs, reference handling (copy, PEFT, precompute), loss variants, metrics, errors."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from datasets import Dataset
from preference_cases import quick_config
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from rlhf_core.data.formats import DataFormatError
from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.losses.dpo import DPO_LOSSES
from rlhf_core.models.loading import load_causal_lm
from rlhf_core.trainers.padding_free import (
    NO_ATTENTION_COST,
    BatchCostModel,
    RowLayout,
    plan_layout,
    supports_padding_free,
)
from rlhf_core.trainers.preference import reference as reference_module
from rlhf_core.trainers.preference.dpo import DPOTrainer
from rlhf_core.trainers.preference.dpo_config import DPOConfig
from rlhf_core.trainers.preference.logprobs import completion_logprobs

BETA = 0.1


def config(**overrides) -> DPOConfig:
    return quick_config(DPOConfig, **{"beta": BETA, **overrides})


def naive_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs from the model's full logits (log_softmax + gather): the reference."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    token = logits[:, :-1].log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token * mask).sum(1), mask.sum(1)


def first_batch(trainer: DPOTrainer, n: int = 4) -> dict:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def test_fused_sequence_logprobs_match_full_logits_and_never_build_them(tokenizer, pairs):
    torch.manual_seed(0)
    model = load_causal_lm("rlhf-tiny")
    trainer = DPOTrainer(model=model, args=config(), train_dataset=pairs, tokenizer=tokenizer)
    batch = first_batch(trainer)
    projected: list[tuple[int, ...]] = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: projected.append(tuple(o.shape)))
    try:
        fused = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    finally:
        hook.remove()
    assert projected == [(8, 0, model.config.vocab_size)]  # the LM head ran on no position at all
    expected, lengths = naive_logps(model, batch)
    assert torch.allclose(fused.logps, expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(fused.num_tokens, lengths)
    # gradients agree too
    fused.logps.sum().backward()
    grad_fused = model.lm_head.weight.grad.clone()
    model.zero_grad()
    naive_logps(model, batch)[0].sum().backward()
    assert torch.allclose(grad_fused, model.lm_head.weight.grad, atol=1e-5, rtol=5e-4)


def test_plan_layout_packs_rows_where_that_computes_least():
    mask = torch.zeros(4, 10, dtype=torch.long)
    for row, length in enumerate([10, 9, 2, 1]):
        mask[row, :length] = 1
    # cost k * (W + 0.05 W^2): padded 4 * 15 = 60; one row of 22: 46.2; two rows of 11: 34.1; three of 10: 45
    layout = plan_layout(mask, BatchCostModel(dense_per_token=1.0, attention_per_pair=0.05))
    assert layout.merged and layout.width == 11
    assert layout.bins == (0, 1, 1, 0) and layout.offsets == (0, 0, 9, 10)
    inputs = layout.model_inputs(torch.arange(1, 41).reshape(4, 10), mask)
    assert inputs["input_ids"][0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 31]
    assert inputs["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert inputs["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1]
    full = torch.ones(4, 10, dtype=torch.long)  # nothing to save: rows without padding stay as they are
    assert not plan_layout(full, BatchCostModel(dense_per_token=1.0, attention_per_pair=0.05)).merged
    assert not plan_layout(mask, None).merged


@pytest.mark.parametrize("packed_rows", [1, 2])
def test_padding_free_rows_give_the_padded_log_probs_and_gradients(tokenizer, pairs, packed_rows):
    torch.manual_seed(0)
    model = load_causal_lm("rlhf-tiny")
    trainer = DPOTrainer(model=model, args=config(), train_dataset=pairs, tokenizer=tokenizer)
    batch = first_batch(trainer)
    assert supports_padding_free(model)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    bins = tuple(r % packed_rows for r in range(len(lengths)))
    offsets = tuple(sum(lengths[q] for q in range(r) if bins[q] == bins[r]) for r in range(len(lengths)))
    width = max(sum(n for n, b in zip(lengths, bins) if b == k) for k in range(packed_rows)) + 3  # + filler
    merged = RowLayout(merged=True, bins=bins, offsets=offsets, width=width)
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    padded_out = completion_logprobs(model, *args)
    padded_out.logps.sum().backward()
    padded_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    merged_out = completion_logprobs(model, *args, layout=merged)
    merged_out.logps.sum().backward()
    assert torch.allclose(merged_out.logps, padded_out.logps, atol=1e-4, rtol=1e-5)
    for a, p in zip(padded_grads, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5, rtol=1e-3)
    # the trainer's loss through merged rows equals its loss with padding_free=False
    trainer._cost_models[id(model)] = NO_ATTENTION_COST
    unmerged = DPOTrainer(
        model=model, args=config(padding_free=False), train_dataset=pairs, tokenizer=tokenizer
    )
    assert unmerged._cost_model(model) is None
    with torch.no_grad():
        assert trainer.compute_loss(model, batch).item() == pytest.approx(
            unmerged.compute_loss(model, batch).item(), abs=1e-6
        )


def test_first_step_loss_is_ln2_with_an_in_memory_model_and_its_frozen_copy(tokenizer, pairs):
    torch.manual_seed(0)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(llama)  # built in memory: no name or path to reload from
    assert not model.config._name_or_path
    trainer = DPOTrainer(model=model, args=config(max_steps=3), train_dataset=pairs, tokenizer=tokenizer)
    ref = trainer.ref_model
    assert ref is not None and ref is not model
    assert all(not p.requires_grad for p in ref.parameters()) and not ref.training
    with torch.no_grad():
        loss, out = trainer.compute_loss(model, first_batch(trainer), return_outputs=True)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.allclose(out.chosen_rewards, torch.zeros(4), atol=1e-6)

    initial = [p.detach().clone() for p in ref.parameters()]
    trainer.train()
    assert all(torch.equal(a, p) for a, p in zip(initial, ref.parameters()))  # the reference stayed frozen
    assert any(not torch.equal(a, p) for a, p in zip(initial, model.parameters()))  # the policy moved


def test_peft_reference_is_the_policy_with_its_adapter_disabled(tokenizer, pairs):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base_copy = load_causal_lm("rlhf-tiny")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = DPOTrainer(
        model=load_causal_lm("rlhf-tiny"),
        args=config(max_steps=3, learning_rate=1e-2),
        train_dataset=pairs,
        tokenizer=tokenizer,
        peft_config=lora,
    )
    assert trainer.ref_model is None  # no copy of the model
    trainer.train()
    batch = first_batch(trainer)
    base_copy.eval()
    with torch.no_grad():
        reference = trainer._reference_logps(batch).logps
        policy = completion_logprobs(
            trainer.model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
        base, _ = naive_logps(base_copy, batch)
    assert torch.allclose(reference, base, atol=1e-4)  # adapter off == the untouched base model
    assert not torch.allclose(policy.logps, base, atol=1e-3)  # adapter on: the trained policy differs


def test_precompute_keeps_no_reference_model(tokenizer, pairs, monkeypatch):
    torch.manual_seed(0)
    initial = load_causal_lm("rlhf-tiny")
    explicit_ref = load_causal_lm("rlhf-tiny")
    ref_alive = weakref.ref(explicit_ref)
    trainer = DPOTrainer(
        model=initial,
        ref_model=explicit_ref,
        args=config(precompute_ref_log_probs=True, max_steps=2),
        train_dataset=pairs,
        eval_dataset=pairs.select(range(4)),
        tokenizer=tokenizer,
    )
    del explicit_ref
    gc.collect()
    assert trainer.ref_model is None and ref_alive() is None  # nothing holds the reference model any more
    for dataset in (trainer.train_dataset, trainer.eval_dataset):
        assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(dataset.column_names)
    # the stored values are the reference's log-probs (here the reference equals the initial policy)
    batch = first_batch(trainer)
    with torch.no_grad():
        expected, _ = naive_logps(initial.eval(), batch)
    assert torch.allclose(batch["ref_chosen_logps"], expected[:4], atol=1e-4)
    assert torch.allclose(batch["ref_rejected_logps"], expected[4:], atol=1e-4)
    trainer.train()
    assert "eval_loss" in trainer.evaluate()

    # ref_model=None with precompute: the initial policy scores the pairs, and no copy is ever made
    def no_copy(model):
        raise AssertionError("precompute_ref_log_probs=True must not copy the model")

    monkeypatch.setattr(reference_module, "frozen_copy", no_copy)
    trainer = DPOTrainer(
        model=load_causal_lm("rlhf-tiny"),
        args=config(precompute_ref_log_probs=True),
        train_dataset=pairs,
        tokenizer=tokenizer,
    )
    assert trainer.ref_model is None
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


def test_implicit_prompt_strings_anthropic_hh_style(tokenizer):
    rows = {
        "chosen": [
            "\n\nHuman: Name two fruits.\n\nAssistant: Two fruits: mango, plum.",
            "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name one tool.\n\nAssistant: One tool: rake.",
        ],
        "rejected": [
            "\n\nHuman: Name two fruits.\n\nAssistant: Two fruits: pear, lemon.",
            "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name one tool.\n\nAssistant: One tool: saw.",
        ],
    }
    trainer = DPOTrainer(
        model=load_causal_lm("rlhf-tiny"),
        args=config(),
        train_dataset=Dataset.from_dict(rows),
        tokenizer=tokenizer,
    )
    row = trainer.train_dataset[1]
    prompt, chosen = tokenizer.decode(row["prompt_input_ids"]), tokenizer.decode(row["chosen_input_ids"])
    assert prompt.rstrip().endswith("Assistant:") and "Hello!" in prompt  # the shared turns are the prompt
    assert "rake" in chosen and "Hello" not in chosen
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, first_batch(trainer, 2))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


# loss of each variant at policy == reference (every log-ratio 0), by hand, beta = 0.1, label_smoothing = 0
AT_ZERO = {
    "sigmoid": math.log(2),
    "robust": math.log(2),
    "hinge": 1.0,
    "ipo": (1 / (2 * BETA)) ** 2,
    "exo_pair": 0.5 * (math.log(0.5) - math.log(1 - 1e-3)) + 0.5 * (math.log(0.5) - math.log(1e-3)),
    "nca_pair": 2 * math.log(2),
    "bco_pair": 2 * math.log(2),
    "sppo_hard": 2 * (1 / (2 * BETA)) ** 2,
    "apo_zero": 1.0,
    "apo_down": 1.0,
}


@pytest.mark.parametrize("loss_type", sorted(AT_ZERO))
def test_every_loss_type_is_wired_through_the_config(tokenizer, pairs, loss_type):
    trainer = DPOTrainer(
        model=load_causal_lm("rlhf-tiny"),
        args=config(loss_type=loss_type),
        train_dataset=pairs,
        tokenizer=tokenizer,
    )
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, first_batch(trainer))
    assert loss.item() == pytest.approx(AT_ZERO[loss_type], rel=1e-5)


def test_rpo_combination_and_metrics_reach_callbacks(tokenizer, pairs):
    assert set(AT_ZERO) | {"sft"} <= set(DPO_LOSSES)
    seen: list[dict] = []

    class Capture(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    model = load_causal_lm("rlhf-tiny")
    trainer = DPOTrainer(
        model="rlhf-tiny",  # by name: model and tokenizer are loaded
        args=config(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], max_steps=2),
        train_dataset=pairs,
        callbacks=[Capture()],
    )
    batch = first_batch(trainer)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        chosen, lengths = naive_logps(model, batch)  # the same weights, loaded separately
    per_token_nll = (-chosen[:4] / lengths[:4]).mean()
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * per_token_nll.item(), rel=1e-5)

    trainer.train()
    train_logs = [log for log in seen if "loss" in log]
    names = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"]
    names += ["logps/chosen", "logps/rejected", "loss/sigmoid", "loss/sft"]
    for name in names:
        assert all(name in log for log in train_logs), name
    log = train_logs[-1]
    assert log["rewards/margins"] == pytest.approx(log["rewards/chosen"] - log["rewards/rejected"], abs=1e-6)
    assert log["logps/chosen"] < 0 and 0 <= log["rewards/accuracies"] <= 1


def test_batch_4x1_equals_1x4_gradient_accumulation(tokenizer, pairs):
    def run(batch_size, accumulation):
        torch.manual_seed(0)
        trainer = DPOTrainer(
            model=load_causal_lm("rlhf-tiny"),
            args=config(
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accumulation,
                max_steps=2,
                optim="sgd",
                learning_rate=1.0,
            ),
            train_dataset=pairs,
            tokenizer=tokenizer,
        )
        trainer.train()
        return [log["loss"] for log in trainer.state.log_history if "loss" in log]

    one_batch, accumulated = run(4, 1), run(1, 4)
    assert len(one_batch) == 2 and one_batch[1] != pytest.approx(math.log(2), abs=1e-4)
    assert one_batch == pytest.approx(accumulated, abs=1e-5)


def test_bad_rows_and_arguments_get_clear_errors(tokenizer):
    def turn(role, text):
        return [{"role": role, "content": text}]

    bad = Dataset.from_dict(
        {
            "prompt": [turn("user", "Hi."), turn("user", "Hello.")],
            "chosen": [turn("assistant", "Fine."), turn("assistant", "Good.")],
            "rejected": [turn("assistant", "No."), turn("bot", "Bad.")],
        }
    )
    with pytest.raises(DataFormatError, match=r"row 1.*rejected.*role"):
        DPOTrainer(model=load_causal_lm("rlhf-tiny"), args=config(), train_dataset=bad, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="unknown"):
        config(loss_type=["sigmoid", "dpo_typo"])
    with pytest.raises(ValueError, match="loss_weights"):
        config(loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="label_smoothing"):
        config(label_smoothing=0.7)
    model = load_causal_lm("rlhf-tiny")
    with pytest.raises(ValueError, match="ref_model is the policy"):
        DPOTrainer(model=model, ref_model=model, args=config(), train_dataset=SyntheticTask(0).preference_dataset(2),
                   tokenizer=tokenizer)  # fmt: skip


@torch.no_grad()
def heldout_judge_score(model, tokenizer, task: SyntheticTask) -> float:
    """Mean ground-truth judge score of greedy answers to the 18 held-out prompts."""
    prompts = task.prompt_dataset(18, split="heldout")["prompt"]
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = "right"
    model.eval()
    out = model.generate(
        **enc,
        max_new_tokens=20,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    responses = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    scores = task.judge_batch(prompts, responses)
    return sum(scores) / len(scores)


@pytest.mark.slow
def test_dpo_from_the_sft_model_raises_the_judge_score_and_reward_accuracy(tokenizer):
    from rlhf_core.trainers.sft.config import SFTConfig
    from rlhf_core.trainers.sft.trainer import SFTTrainer

    task = SyntheticTask(0)
    torch.manual_seed(0)
    sft = SFTTrainer(
        model="rlhf-tiny",
        args=SFTConfig(
            output_dir="sft",
            max_steps=150,
            per_device_train_batch_size=32,
            learning_rate=3e-3,
            max_length=64,
            save_strategy="no",
            logging_steps=50,
            disable_tqdm=True,
            seed=0,
        ),
        train_dataset=task.sft_dataset(150 * 32),
        processing_class=tokenizer,
    )
    sft.train()
    model = sft.model
    before = heldout_judge_score(model, tokenizer, task)

    data = task.preference_dataset(60 * 16 + 200)
    train = data.select(range(60 * 16))
    seen = {(str(r["prompt"]), str(r["chosen"]), str(r["rejected"])) for r in train}
    test = data.select(
        [
            i
            for i in range(len(train), len(data))
            if (str(data[i]["prompt"]), str(data[i]["chosen"]), str(data[i]["rejected"])) not in seen
        ]
    )
    assert len(test) >= 100
    trainer = DPOTrainer(
        model=model,
        args=config(per_device_train_batch_size=16, max_steps=60, learning_rate=1e-4, logging_steps=20),
        train_dataset=train,
        tokenizer=tokenizer,
    )
    trainer.train()
    after = heldout_judge_score(model, tokenizer, task)
    rewards = torch.as_tensor(trainer.predict(test).predictions)  # implicit rewards (chosen, rejected)
    accuracy = (rewards[:, 0] > rewards[:, 1]).float().mean().item()
    print(f"judge {before:.3f} -> {after:.3f}, held-out implicit reward accuracy {accuracy:.3f}")
    assert before >= 0.3, before  # the SFT model answers in the format
    assert after >= before + 0.15, (before, after)
    assert accuracy >= 0.7, accuracy  # chance is 0.5 (standard error ~0.04 on these ~170 pairs)
