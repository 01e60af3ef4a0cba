"""KTOTrainer: fused log-probs, the loss against a by-hand computation, reference handling (copy, PEFT, precompute),
the mismatched-pair KL estimate, gradient accumulation, metrics and errors."""

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
from rlhf_core.models.loading import load_causal_lm
from rlhf_core.trainers.preference.kto import KTOTrainer
from rlhf_core.trainers.preference.kto_config import KTOConfig
from rlhf_core.trainers.preference.logprobs import completion_logprobs


def config(**overrides) -> KTOConfig:
    return quick_config(KTOConfig, **overrides)


def naive_logps(model, ids, mask, labels) -> torch.Tensor:
    """Summed completion log-probs from the model's full logits (log_softmax + gather): the reference."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    target = labels[:, 1:]
    keep = target != -100
    token = logits[:, :-1].log_softmax(-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token * keep).sum(1)


def first_batch(trainer: KTOTrainer, n: int = 4) -> dict:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def perturbed(model):
    """`model` with fixed noise on its weights (against the original, its mismatched log-ratios average > 0)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_fused_logprobs_match_full_logits_for_both_row_sets(tokenizer, pairs):
    torch.manual_seed(0)
    model = load_causal_lm("rlhf-tiny")
    trainer = KTOTrainer(model=model, args=config(), train_dataset=pairs, tokenizer=tokenizer)
    batch = first_batch(trainer)
    for prefix in ("", "KL_"):
        ids, mask, labels = (batch[f"{prefix}{k}"] for k in ("input_ids", "attention_mask", "labels"))
        fused = completion_logprobs(model, ids, mask, labels).logps
        with torch.no_grad():
            assert torch.allclose(fused, naive_logps(model, ids, mask, labels), atol=1e-4, rtol=1e-5)


def test_loss_and_reference_point_against_a_by_hand_computation(tokenizer, pairs):
    policy = perturbed(load_causal_lm("rlhf-tiny"))  # policy != reference: log-ratios and z0 are not zero
    reference = load_causal_lm("rlhf-tiny")
    args = config(beta=0.5, desirable_weight=1.3, undesirable_weight=0.7)
    trainer = KTOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=pairs, tokenizer=tokenizer
    )
    batch = first_batch(trainer)
    with torch.no_grad():
        loss = trainer.compute_loss(policy, batch).item()
        main = [
            naive_logps(m, batch["input_ids"], batch["attention_mask"], batch["labels"])
            for m in (policy, reference)
        ]
        kl = [naive_logps(m, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_labels"]) for m in (policy, reference)]  # fmt: skip
    z0 = max(0.0, sum((kl[0] - kl[1]).tolist()) / 4)
    expected = 0.0
    for r, label in zip((main[0] - main[1]).tolist(), batch["label"].tolist()):
        expected += 1.3 * (1 - sig(0.5 * (r - z0))) if label else 0.7 * (1 - sig(0.5 * (z0 - r)))
    assert loss == pytest.approx(expected / 4, rel=1e-4)
    mode = "train" if policy.training else "eval"
    assert trainer._metrics[mode]["kl"][-1] == pytest.approx(z0, rel=1e-4, abs=1e-6)
    assert z0 > 0.01  # the test exercises a non-trivial reference point


def test_at_the_start_the_loss_is_half_the_mean_weight_with_an_in_memory_model(tokenizer, pairs):
    torch.manual_seed(0)
    llama = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = LlamaForCausalLM(llama)  # built in memory: no name or path to reload from
    args = config(max_steps=3, desirable_weight=2.0, undesirable_weight=1.0)
    trainer = KTOTrainer(model=model, args=args, train_dataset=pairs, tokenizer=tokenizer)
    ref = trainer.ref_model
    assert ref is not None and ref is not model and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    batch = first_batch(trainer)
    n_desirable = int(batch["label"].sum())
    assert 0 < n_desirable < 4  # unpaired in blocks of half a batch: both labels in every batch
    with torch.no_grad():
        loss, out = trainer.compute_loss(model, batch, return_outputs=True)
    assert loss.item() == pytest.approx((2.0 * 0.5 * n_desirable + 0.5 * (4 - n_desirable)) / 4, abs=1e-6)
    assert float(out.z0) == 0.0 and torch.allclose(out.rewards, torch.zeros(4), atol=1e-6)
    initial = [p.detach().clone() for p in ref.parameters()]
    trainer.train()
    assert all(torch.equal(a, p) for a, p in zip(initial, ref.parameters()))  # the reference stayed frozen
    assert any(not torch.equal(a, p) for a, p in zip(initial, model.parameters()))  # the policy moved


def test_peft_reference_is_the_policy_with_its_adapter_disabled(tokenizer, pairs):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base_copy = load_causal_lm("rlhf-tiny").eval()
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = KTOTrainer(model=load_causal_lm("rlhf-tiny"), args=config(max_steps=3, learning_rate=1e-2),
                         train_dataset=pairs, tokenizer=tokenizer, peft_config=lora)  # fmt: skip
    assert trainer.ref_model is None  # no copy of the model
    trainer.train()
    batch = first_batch(trainer)
    with torch.no_grad():
        reference, reference_kl = trainer._reference_logps(batch)
        base = naive_logps(base_copy, batch["input_ids"], batch["attention_mask"], batch["labels"])
        base_kl = naive_logps(
            base_copy, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_labels"]
        )
        policy = completion_logprobs(
            trainer.model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
    assert torch.allclose(reference, base, atol=1e-4) and torch.allclose(reference_kl, base_kl, atol=1e-4)
    assert not torch.allclose(policy.logps, base, atol=1e-3)  # adapter on: the trained policy differs


def test_precompute_keeps_no_reference_model_and_gives_the_live_loss(tokenizer, pairs, monkeypatch):
    policy = perturbed(load_causal_lm("rlhf-tiny"))
    explicit_ref = load_causal_lm("rlhf-tiny")
    live = KTOTrainer(
        model=policy, ref_model=explicit_ref, args=config(), train_dataset=pairs, tokenizer=tokenizer
    )
    with torch.no_grad():
        live_loss = live.compute_loss(policy, first_batch(live)).item()
    ref_alive = weakref.ref(explicit_ref)
    trainer = KTOTrainer(model=policy, ref_model=explicit_ref, args=config(precompute_ref_log_probs=True, max_steps=2),
                         train_dataset=pairs, eval_dataset=pairs.select(range(4)), tokenizer=tokenizer)  # fmt: skip
    del explicit_ref, live
    gc.collect()
    assert trainer.ref_model is None and ref_alive() is None  # nothing holds the reference model any more
    for dataset in (trainer.train_dataset, trainer.eval_dataset):
        assert {"ref_logps", "ref_KL_logps"} <= set(dataset.column_names)
    with torch.no_grad():
        assert trainer.compute_loss(policy, first_batch(trainer)).item() == pytest.approx(live_loss, rel=1e-5)
    trainer.train()
    assert "eval_loss" in trainer.evaluate()
    with pytest.raises(ValueError, match="keeps no reference model"):
        trainer.evaluate(pairs.select(range(4)))  # a new dataset after training: no reference to score it

    def no_copy(model):
        raise AssertionError("precompute_ref_log_probs=True must not copy the model")

    monkeypatch.setattr("rlhf_core.trainers.preference.reference.frozen_copy", no_copy)
    trainer = KTOTrainer(model=load_causal_lm("rlhf-tiny"), args=config(precompute_ref_log_probs=True),
                         train_dataset=pairs, tokenizer=tokenizer)  # fmt: skip
    assert trainer.ref_model is None
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, first_batch(trainer)).item() == pytest.approx(
            0.5, abs=1e-5
        )


def test_sync_ref_model_moves_the_reference_to_the_policy(tokenizer, pairs):
    torch.manual_seed(0)
    args = config(max_steps=2, sync_ref_model=True, ref_model_mixup_alpha=1.0, ref_model_sync_steps=2)
    trainer = KTOTrainer(
        model=load_causal_lm("rlhf-tiny"), args=args, train_dataset=pairs, tokenizer=tokenizer
    )
    initial = [p.detach().clone() for p in trainer.ref_model.parameters()]
    trainer.train()
    policy, reference = list(trainer.model.parameters()), list(trainer.ref_model.parameters())
    assert any(
        not torch.equal(a, p) for a, p in zip(initial, reference)
    )  # alpha = 1 at step 2: a hard update
    assert all(torch.equal(p, r) for p, r in zip(policy, reference))
    with pytest.raises(ValueError, match="cannot be used with precompute_ref_log_probs"):
        KTOTrainer(model=load_causal_lm("rlhf-tiny"), args=config(sync_ref_model=True, precompute_ref_log_probs=True),
                   train_dataset=pairs, tokenizer=tokenizer)  # fmt: skip


def test_apo_zero_unpaired_needs_no_mismatched_completions(tokenizer, pairs):
    torch.manual_seed(0)
    trainer = KTOTrainer(model=load_causal_lm("rlhf-tiny"), args=config(loss_type="apo_zero_unpaired",
                         per_device_train_batch_size=1, train_sampling_strategy="random", max_steps=2),
                         train_dataset=pairs, tokenizer=tokenizer)  # fmt: skip
    assert "KL_completion_ids" not in trainer.train_dataset.column_names
    batch = first_batch(trainer, 2)
    assert "KL_input_ids" not in batch
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(0.5, abs=1e-6)
    trainer.train()
    assert all(h.get("kl", 0.0) == 0.0 for h in trainer.state.log_history)


def test_batch_4x1_equals_2x2_gradient_accumulation(tokenizer, pairs):
    # At the first step the policy is the reference, so z0 = 0 in every micro-batch and the two runs are the same
    # computation: a loss normalised per micro-batch instead of per accumulated batch would differ (4 vs 2 rows).
    params = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        model = load_causal_lm("rlhf-tiny")
        args = config(per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, max_steps=1,
                      optim="sgd", learning_rate=1.0, desirable_weight=3.0)  # fmt: skip
        dataset = KTOTrainer(
            model=model, args=config(), train_dataset=pairs, tokenizer=tokenizer
        ).train_dataset
        KTOTrainer(model=model, args=args, train_dataset=dataset, tokenizer=tokenizer).train()
        params.append([p.detach().clone() for p in model.parameters()])
    initial = [p.detach() for p in load_causal_lm("rlhf-tiny").parameters()]
    assert any(
        not torch.allclose(a, b, atol=1e-4) for a, b in zip(initial, params[0])
    )  # the step moved weights
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*params))


def test_metrics_reach_callbacks_with_trl_names(tokenizer, pairs):
    seen: list[dict] = []

    class Capture(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    torch.manual_seed(0)
    trainer = KTOTrainer(model=load_causal_lm("rlhf-tiny"), args=config(max_steps=2, eval_strategy="steps", eval_steps=2),
                         train_dataset=pairs, eval_dataset=pairs.select(range(4)), tokenizer=tokenizer,
                         callbacks=[Capture()])  # fmt: skip
    trainer.train()
    names = ["kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"]
    train_logs = [log for log in seen if "loss" in log]
    assert train_logs and all(name in train_logs[0] for name in names)
    eval_logs = [log for log in seen if "eval_loss" in log]
    assert eval_logs and all(f"eval_{name}" in eval_logs[0] for name in names)
    last = train_logs[-1]
    assert last["rewards/margins"] == pytest.approx(
        last["rewards/chosen"] - last["rewards/rejected"], rel=1e-6
    )
    prediction = trainer.predict(pairs.select(range(2)))  # raw pairs: unpaired, implied rewards per example
    assert prediction.predictions.shape == (4,) and sorted(prediction.label_ids.tolist()) == [0, 0, 1, 1]


def test_bad_rows_and_arguments_get_clear_errors(tokenizer):
    bad = Dataset.from_dict({"prompt": ["a", "b"], "completion": [" x", " y"], "label": [1, 0]})
    with pytest.raises(DataFormatError, match="row 0, field 'label': expected a boolean"):
        KTOTrainer(model=load_causal_lm("rlhf-tiny"), args=config(), train_dataset=bad, tokenizer=tokenizer)
    with pytest.raises(DataFormatError, match="KTO takes unpaired data"):
        no_label = Dataset.from_dict({"prompt": ["a"], "completion": [" x"]})
        KTOTrainer(
            model=load_causal_lm("rlhf-tiny"), args=config(), train_dataset=no_label, tokenizer=tokenizer
        )
    with pytest.raises(ValueError, match="train_sampling_strategy='sequential'"):
        config(train_sampling_strategy="random")
    with pytest.raises(ValueError, match="per_device_train_batch_size >= 2"):
        config(per_device_train_batch_size=1)
    with pytest.raises(ValueError, match="loss_type 'bco' is unknown"):
        config(loss_type="bco")
    with pytest.raises(ValueError, match="beta must be > 0"):
        config(beta=0.0)
    with pytest.raises(NotImplementedError, match="KTOConfig.router_aux_loss_coef=0.01 is not implemented"):
        config(router_aux_loss_coef=0.01)
    with pytest.raises(NotImplementedError, match="quantization_config"):
        KTOTrainer(model="rlhf-tiny", args=config(), train_dataset=bad, quantization_config=object())
    model = load_causal_lm("rlhf-tiny")
    with pytest.raises(ValueError, match="ref_model is the policy"):
        KTOTrainer(model=model, ref_model=model, args=config(), train_dataset=bad, tokenizer=tokenizer)


def test_a_bf16_step_on_the_cpu_gives_a_finite_loss(tokenizer, pairs):
    model = load_causal_lm("rlhf-tiny").to(torch.bfloat16)  # bf16 weights under CPU bf16 autocast
    args = config(max_steps=1, bf16=True, use_cpu=True, report_to="none")
    assert args.bf16  # use_cpu=True keeps CPU bf16 autocast (else it falls back to fp32 with a warning)
    trainer = KTOTrainer(model=model, args=args, train_dataset=pairs, tokenizer=tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert math.isfinite(log["loss"]) and math.isfinite(log["grad_norm"]) and log["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
