"""The full PPO loop: metrics through Trainer.log, one KL tensor, accumulation, checkpoints and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

from rlhf_core import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.models.tiny import TINY_MODEL, tiny_model_path
from rlhf_core.trainers.base import NonFiniteLossError
from rlhf_core.trainers.ppo.metrics import EpisodeProgressCallback

ISSUE_METRICS = ["objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/approxkl",
                 "policy/clipfrac", "loss/policy", "loss/value", "val/clipfrac", "val/mean", "lr", "episode"]  # fmt: skip


class Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def length_reward(prompts, responses):
    return [len(r) / 10 for r in responses]


def config(**kw) -> PPOConfig:
    base = dict(output_dir="out", per_device_train_batch_size=4, num_ppo_epochs=1, response_length=6,
                learning_rate=1e-3, temperature=1.0, logging_steps=1, save_strategy="no", report_to="none",
                seed=0, disable_tqdm=False)  # fmt: skip
    base.update(kw)
    return PPOConfig(**base)


def make_trainer(args, **kw):
    kw.setdefault("reward_fn", length_reward)
    return PPOTrainer(args=args, model=load_causal_lm(TINY_MODEL), ref_model=None,
                      train_dataset=SyntheticTask(0).prompt_dataset(16, "train"),
                      processing_class=load_tokenizer(TINY_MODEL), **kw)  # fmt: skip


def test_metrics_reach_callbacks_with_the_issue_names_and_one_kl_tensor():
    recorder = Recorder()
    trainer = make_trainer(config(max_steps=2, kl_estimator="k3", kl_coef=0.3), callbacks=[recorder])
    out = trainer.train()
    assert out.global_step == 2 and trainer.state.episode == 8
    assert len(recorder.logs) == 2
    for logs in recorder.logs:
        assert set(ISSUE_METRICS) <= set(logs), sorted(set(ISSUE_METRICS) - set(logs))
        # the logged KL is exactly the penalised one: non-score reward = -kl_coef * KL
        assert logs["objective/non_score_reward"] == pytest.approx(-0.3 * logs["objective/kl"], rel=1e-5)
        assert logs["objective/kl"] >= 0  # k3 is never negative
        assert logs["objective/rlhf_reward"] == pytest.approx(
            logs["objective/scores"] + logs["objective/non_score_reward"], rel=1e-5, abs=1e-7
        )
    assert [logs["episode"] for logs in recorder.logs] == [4, 8]
    assert any(isinstance(cb, EpisodeProgressCallback) for cb in trainer.callback_handler.callbacks)
    # first update: the policy equals the reference, so the KL is (numerically) zero
    assert recorder.logs[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)


def test_gradient_accumulation_gives_the_same_update():
    # Plain SGD without clipping: the update is proportional to the gradient, so a normalisation that
    # depended on the micro-batch split would show (Adam's first step and clipping would hide a scale).
    def final_weights(per_device, accumulation):
        trainer = make_trainer(config(max_steps=1, per_device_train_batch_size=per_device, optim="sgd",
                                      learning_rate=0.5, max_grad_norm=0.0,
                                      gradient_accumulation_steps=accumulation))  # fmt: skip
        trainer.train()
        return [p.detach().clone() for p in trainer.model.parameters()]

    start = [p.detach().clone() for p in load_causal_lm(TINY_MODEL).parameters()]
    one_big = final_weights(4, 1)
    four_small = final_weights(1, 4)
    assert any(not torch.allclose(a, b) for a, b in zip(start, one_big))  # the step moved the policy
    for a, b in zip(one_big, four_small):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


def test_checkpoints_load_and_resume_continues_exactly(tmp_path):
    args = dict(max_steps=3, save_strategy="steps", save_steps=1, kl_target=1.0, kl_horizon=8)
    full = make_trainer(config(**args, output_dir=str(tmp_path / "run")))
    full.train()
    ckpt = tmp_path / "run" / "checkpoint-1"
    for name in (
        "model.safetensors",
        "value_head.safetensors",
        "optimizer.pt",
        "trainer_state.json",
        "ppo_state.json",
    ):
        assert (ckpt / name).is_file(), name
    assert AutoModelForCausalLMWithValueHead.from_pretrained(str(ckpt)).v_head.summary.weight.abs().sum() > 0
    kl_after_1 = json.loads((ckpt / "ppo_state.json").read_text())["kl_controller"]["value"]
    assert kl_after_1 != pytest.approx(0.05)  # the adaptive controller moved and was saved

    resumed = make_trainer(config(**args, output_dir=str(tmp_path / "resumed")))
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 3 and resumed.state.episode == 12
    assert resumed.kl_ctl.value == pytest.approx(full.kl_ctl.value)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b)


def test_reward_model_and_separate_value_model(tmp_path):
    path = tiny_model_path()
    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    trainer = PPOTrainer(
        args=config(max_steps=1, missing_eos_penalty=1.0),
        model=AutoModelForCausalLM.from_pretrained(path),
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=SyntheticTask(0).prompt_dataset(8, "train"),
        processing_class=load_tokenizer(TINY_MODEL),
    )
    before = [p.detach().clone() for p in value_model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, value_model.parameters()))  # the critic trained
    assert all(not p.requires_grad for p in reward_model.parameters())
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "value_model" / "model.safetensors").is_file()


def test_missing_eos_penalty_and_non_finite_loss(monkeypatch):
    recorder = Recorder()
    # 2 new tokens from an untrained model: almost never an eos; a zero reward leaves only the penalty
    trainer = make_trainer(config(max_steps=1, response_length=2, missing_eos_penalty=0.5),
                           reward_fn=lambda p, r: [0.0] * len(r), callbacks=[recorder])  # fmt: skip
    trainer.train()
    logs = recorder.logs[0]
    without_eos = 4 - logs["val/num_eos_tokens"]
    assert logs["objective/scores"] == pytest.approx(-0.5 * without_eos / 4)

    import rlhf_core.trainers.ppo.optimisation as opt

    real = opt.clipped_policy_loss
    monkeypatch.setattr(
        opt, "clipped_policy_loss", lambda *a, **k: real(*a, **k)._replace(loss=torch.tensor(math.nan))
    )
    broken = make_trainer(config(max_steps=1))
    with pytest.raises(NonFiniteLossError, match="Non-finite PPO loss .* at update 1"):
        broken.train()


def test_clear_errors():
    with pytest.raises(ValueError, match="reward_model= or reward_fn=, not both"):
        make_trainer(config(), reward_model=object(), reward_fn=length_reward)
    with pytest.raises(ValueError, match="needs reward_model= or reward_fn="):
        make_trainer(config(), reward_fn=None).train()
    with pytest.raises(ValueError, match="fewer than one update needs"):
        make_trainer(config(per_device_train_batch_size=32)).train()


@pytest.mark.slow
def test_mlflow_callback_records_the_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ppo-test")
    trainer = make_trainer(config(max_steps=2, report_to=["mlflow"]))
    trainer.train()
    runs = mlflow.search_runs(experiment_names=["ppo-test"], output_format="list")
    assert len(runs) == 1
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "objective/kl")
    assert [m.step for m in history] == [1, 2]
    assert set(ISSUE_METRICS) <= set(runs[0].data.metrics)


def test_lora_policy_uses_its_base_model_as_reference():
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = make_trainer(config(max_steps=2), peft_config=lora)
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    assert (
        isinstance(policy, peft.PeftModel) and trainer.rollout.ref_model is None
    )  # no second copy in memory
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_B" in n}
    trainer.train()
    for name, param in policy.named_parameters():
        if name in base:
            assert torch.equal(param, base[name]), name  # the frozen base (the reference) did not move
    assert any(not torch.equal(p, lora_before[n]) for n, p in policy.named_parameters() if n in lora_before)


def test_rollout_reuses_sampling_logprobs_and_values_and_they_match_a_fresh_pass():
    trainer = make_trainer(config())
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        model.v_head.summary.weight.normal_()  # a non-trivial value head
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    sampled = trainer.rollout.sample(batch["input_ids"], batch["attention_mask"])
    assert sampled.logprobs is not None and sampled.values is not None  # no policy pass needed in the rollout
    b = sampled.batch
    with torch.no_grad():
        fresh = model(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, temperature=1.0)
    torch.testing.assert_close(sampled.logprobs, fresh.logprobs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sampled.values, fresh.values * b.response_mask, atol=1e-4, rtol=1e-4)
    # opting out recomputes both in a separate pass
    trainer.args.recompute_rollout_logprobs = True
    again = trainer.rollout.sample(batch["input_ids"], batch["attention_mask"])
    assert again.logprobs is None and again.values is None


def _critic_trainer(defer: bool, **kw):
    """A PPO trainer with a separate critic, and the list its body's forward calls are counted in."""
    path = tiny_model_path()
    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    critic = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    trainer = PPOTrainer(args=config(**{"max_steps": 2, **kw}), model=AutoModelForCausalLM.from_pretrained(path),
                         reward_model=reward_model, value_model=critic,
                         train_dataset=SyntheticTask(0).prompt_dataset(8, "train"),
                         processing_class=load_tokenizer(TINY_MODEL))  # fmt: skip
    trainer.rollout.defer_values = defer
    calls = []
    critic.model.register_forward_hook(lambda module, args, out: calls.append(torch.is_grad_enabled()))
    return trainer, critic, calls


def test_separate_critic_gets_its_old_values_from_the_first_training_forward():
    runs = {}
    for defer in (True, False):
        trainer, critic, calls = _critic_trainer(defer)
        recorder = Recorder()
        trainer.add_callback(recorder)
        trainer.train()
        runs[defer] = (trainer, critic, calls, recorder.logs)
    # deferred: one critic forward per update (the training one); otherwise a no-grad rollout pass before it
    assert runs[True][2] == [True, True] and runs[False][2] == [False, True, False, True]
    # the same update (measured: every weight bit-identical on the development CPU)
    for name in ("model", "critic"):
        ours, plain = (runs[d][0].model.policy if name == "model" else runs[d][1] for d in (True, False))
        for (key, a), b in zip(ours.named_parameters(), plain.parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=f"{name} {key}")
    for a, b in zip(runs[True][3], runs[False][3]):
        assert a.keys() == b.keys()
        for key in (
            "loss/value",
            "loss/policy",
            "val/mean",
            "val/clipfrac",
            "objective/kl",
            "objective/scores",
        ):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_critic_values_are_not_deferred_when_the_first_forward_cannot_give_them():
    # two micro-batches per mini-batch: the first forward sees half of the batch
    trainer, _, calls = _critic_trainer(True, gradient_accumulation_steps=2, max_steps=1)
    trainer.train()
    assert calls == [False, True, True]
    # dropout active in training mode: the training forward computes another function than the rollout's
    trainer, critic, _ = _critic_trainer(True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    sampled = trainer.rollout.sample(batch["input_ids"], batch["attention_mask"])
    assert trainer.rollout.defers_values(sampled)
    critic.model.layers[0].self_attn.attention_dropout = 0.1
    assert not trainer.rollout.defers_values(sampled)
