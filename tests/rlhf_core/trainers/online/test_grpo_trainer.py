"""GRPOTrainer / RLOOTrainer with TRL 1.16's API on the tiny model: scripts, rewards, errors naming their source."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from rlhf_core import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer, SyntheticTask
from rlhf_core.models.loading import load_causal_lm, load_tokenizer


def reward_len(completions, **kwargs):  # TRL's quickstart reward
    return [-abs(20 - len(completion)) for completion in completions]


def config(cls=GRPOConfig, **overrides):
    settings = dict(output_dir="out", per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                    max_steps=2, logging_steps=1, learning_rate=1e-3, gradient_checkpointing=False,
                    save_strategy="no", disable_tqdm=True, seed=0)  # fmt: skip
    settings.update(overrides)
    return cls(**settings)


@pytest.fixture(scope="module")
def text_prompts():
    return Dataset.from_dict({"prompt": ["The sky is", "Name a fruit:", "Two plus two is", "Hello"] * 2})


def test_trl_quickstart_script_runs_and_logs_trl_metric_names(text_prompts):
    trainer = GRPOTrainer(
        model="rlhf-tiny", reward_funcs=reward_len, args=config(), train_dataset=text_prompts
    )
    assert trainer.ref_model is None  # beta = 0 (TRL's default) keeps no reference model
    out = trainer.train()
    assert out.global_step == 2
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2
    for key in ("reward", "reward_std", "rewards/reward_len/mean", "rewards/reward_len/std", "entropy",
                "completions/mean_length", "completions/min_length", "completions/max_length",
                "completions/clipped_ratio", "clip_ratio/region_mean", "clip_ratio/low_mean",
                "clip_ratio/high_mean", "frac_reward_zero_std", "learning_rate", "loss", "grad_norm"):  # fmt: skip
        assert key in logs[0], key
    assert "kl" not in logs[0]  # no reference, no KL
    assert logs[0]["completions/max_length"] <= 8


def test_conversational_prompts_columns_weights_and_abstaining_functions():
    seen = {}

    def spy(prompts, completions, completion_ids, **columns):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, columns=columns)
        return [1.0] * len(prompts)

    def abstains(completions, **_):
        return [None] * len(completions)

    data = SyntheticTask(0).prompt_dataset(4, "train").add_column("answer", ["a", "b", "c", "d"])
    trainer = GRPOTrainer(model="rlhf-tiny", reward_funcs=[spy, abstains], args=config(max_steps=1, reward_weights=[2.0, 1.0]),
                          train_dataset=data)  # fmt: skip
    trainer.train()
    assert seen["prompts"][0][0]["role"] == "user"
    assert seen["completions"][0][0]["role"] == "assistant"  # completions are messages too
    assert sorted(seen["columns"]) == ["answer", "log_extra", "log_metric", "trainer_state"]
    assert len(seen["columns"]["answer"]) == 4 and isinstance(seen["ids"][0], list)
    log = trainer.state.log_history[0]
    assert (
        log["reward"] == 2.0 and log["rewards/spy/mean"] == 1.0
    )  # weight 2, the abstaining function skipped
    assert "rewards/abstains/mean" not in log  # all None: not logged (TRL logs None)


def test_reward_model_by_path_and_beta_keeps_a_frozen_reference(tmp_path, text_prompts):
    from rlhf_core.models.loading import load_sequence_classifier

    path = tmp_path / "rm"
    load_sequence_classifier("rlhf-tiny").save_pretrained(path)
    load_tokenizer("rlhf-tiny").save_pretrained(path)
    trainer = RLOOTrainer(model="rlhf-tiny", reward_funcs=str(path), args=config(RLOOConfig, num_generations=2),
                          train_dataset=text_prompts)  # fmt: skip
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    before = [p.clone() for p in trainer.ref_model.parameters()]
    trainer.train()
    log = trainer.state.log_history[-1]
    assert "rewards/rm/mean" in log and "kl" in log
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.ref_model.parameters()))


def test_reward_model_with_two_labels_is_rejected(text_prompts):
    from transformers import AutoModelForSequenceClassification

    cfg = load_causal_lm("rlhf-tiny").config
    cfg.num_labels = 2
    two = AutoModelForSequenceClassification.from_config(cfg)
    with pytest.raises(ValueError, match="has 2 labels"):
        GRPOTrainer(model="rlhf-tiny", reward_funcs=two, args=config(), train_dataset=text_prompts)


@pytest.mark.parametrize(
    ("reward", "error", "message"),
    [
        (lambda completions, **_: 1 / 0, RuntimeError, "reward function '<lambda>' raised ZeroDivisionError"),
        (lambda completions, **_: [1.0], ValueError, "returned 1 rewards for 4 completions"),
        (
            lambda completions, **_: ["good"] * len(completions),
            TypeError,
            "returned 'good' \\(str\\) for completion 0",
        ),
        (lambda completions, **_: [float("inf")] * len(completions), ValueError, "must be finite"),
    ],
)
def test_bad_reward_functions_get_errors_naming_them(text_prompts, reward, error, message):
    trainer = GRPOTrainer(
        model="rlhf-tiny", reward_funcs=reward, args=config(max_steps=1), train_dataset=text_prompts
    )
    with pytest.raises(error, match=message):
        trainer.train()


def test_dataset_and_batch_shape_errors(text_prompts):
    with pytest.raises(ValueError, match="no 'prompt' column.*\\['text'\\]"):
        GRPOTrainer(model="rlhf-tiny", reward_funcs=reward_len, args=config(),
                    train_dataset=Dataset.from_dict({"text": ["a"]}))  # fmt: skip
    with pytest.raises(ValueError, match="num_generations=3 does not divide the generation batch of 4"):
        config(num_generations=3)
    with pytest.raises(ValueError, match="at least 2 completions"):
        config(num_generations=1, per_device_train_batch_size=1)


def test_trl_fields_are_all_accepted_and_unimplemented_ones_name_themselves():
    import dataclasses

    trl = pytest.importorskip("trl")  # the compatibility check reads TRL's own configs
    for ours, theirs in ((GRPOConfig, trl.GRPOConfig), (RLOOConfig, trl.RLOOConfig)):
        missing = {f.name for f in dataclasses.fields(theirs)} - {f.name for f in dataclasses.fields(ours)}
        assert not missing, (ours.__name__, missing)
    for field, value in (("use_vllm", True), ("min_p", 0.1), ("entropy_coef", 0.01), ("loss_type", "sapo")):
        with pytest.raises(NotImplementedError, match=f"GRPOConfig.{field}=.*is not implemented"):
            config(**{field: value})
    assert config(vllm_server_port=1234).vllm_server_port == 1234  # read only by vLLM, which raises


def test_several_iterations_keep_the_sampling_log_probs_as_pi_old(text_prompts):
    trainer = GRPOTrainer(model="rlhf-tiny", reward_funcs=reward_len, train_dataset=text_prompts,
                          args=config(num_iterations=2, max_steps=2, learning_rate=1e-2, loss_type="grpo"))  # fmt: skip
    seen = []
    original = trainer._loss
    trainer._loss = lambda logps, old, *rest: (
        seen.append((logps.detach(), old)) or original(logps, old, *rest)
    )
    trainer.train()
    (first, old_first), (second, old_second) = seen  # one generation, two optimizer steps on it
    assert torch.equal(old_first, old_second)  # pi_old is kept for the second pass
    torch.testing.assert_close(first, old_first, atol=1e-4, rtol=0)  # sampling log-probs = the policy's
    assert (second - old_second).abs().max() > 1e-3  # the policy moved after the first step


def test_mask_truncated_completions_leaves_them_out_of_the_loss(text_prompts):
    trainer = GRPOTrainer(model="rlhf-tiny", reward_funcs=reward_len, train_dataset=text_prompts,
                          args=config(max_completion_length=1, max_steps=1, mask_truncated_completions=True))  # fmt: skip
    params = [p.clone() for p in trainer.model.parameters()]
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["completions/clipped_ratio"] == 1.0  # (seed 0) no one-token completion is the eos token
    assert all(torch.equal(a, b) for a, b in zip(params, trainer.model.parameters()))
    assert log["loss"] == 0.0


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_micro_batches_cut_by_prompt_give_the_shuffled_update(text_prompts, loss_type):
    """One optimizer step per generation: the rows are cut by prompt (each micro-batch one group here, its prompt
    run once) instead of shuffled, and the update is the same; "bnpo" normalises per micro-batch and stays shuffled."""
    weights, cuts = [], []
    for shuffled in (True, False):
        torch.manual_seed(0)
        trainer = GRPOTrainer(model="rlhf-tiny", reward_funcs=reward_len, train_dataset=text_prompts,
                              args=config(max_steps=1, gradient_accumulation_steps=2, loss_type=loss_type, optim="sgd",
                                          learning_rate=1e-2))  # fmt: skip
        if shuffled:
            trainer._loss_ignores_micro_batching = lambda: False
        batches = trainer._optimizer_step_batches
        trainer._optimizer_step_batches = lambda rollout, batches=batches: (
            cuts.append(list(batches(rollout))) or iter(cuts[-1])
        )
        trainer.train()
        weights.append([p.detach().clone() for p in trainer.model.parameters()])
    for got, want in zip(*weights):  # SGD: the update is the gradient itself (Adam's first step is its sign)
        torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-5)
    assert (
        max(
            float((a - b).abs().max())
            for a, b in zip(
                weights[1],
                GRPOTrainer(
                    model="rlhf-tiny", reward_funcs=reward_len, train_dataset=text_prompts, args=config()
                ).model.parameters(),
            )
        )
        > 1e-4
    )
    assert [sorted(rows.tolist()) for rows in cuts[1][0]] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
    ]  # prompt-major groups
    assert [sorted(rows.tolist()) for rows in cuts[0][0]] != [[0, 1, 2, 3], [4, 5, 6, 7]]
    bnpo = GRPOTrainer(model="rlhf-tiny", reward_funcs=reward_len, train_dataset=text_prompts,
                       args=config(loss_type="bnpo"))  # fmt: skip
    assert not bnpo._loss_ignores_micro_batching()


def test_eval_dataset_is_answered_scored_and_logged_with_the_eval_prefix(text_prompts):
    seen = []

    def spy(prompts, completions, **_):
        seen.append(list(prompts))
        return [float(len(c)) for c in completions]

    eval_prompts = Dataset.from_dict({"prompt": ["Count to three:", "Say hi", "Pick a colour:"]})
    trainer = GRPOTrainer(model="rlhf-tiny", reward_funcs=spy, train_dataset=text_prompts, eval_dataset=eval_prompts,
                          args=config(eval_strategy="steps", eval_steps=1, num_generations_eval=2,
                                      per_device_eval_batch_size=4))  # fmt: skip
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_reward" in h]
    assert [h["step"] for h in evals] == [1, 2]
    assert {"eval_rewards/spy/mean", "eval_completions/mean_length", "eval_reward_std"} <= set(evals[0])
    seen.clear()
    params = [p.clone() for p in trainer.model.parameters()]
    metrics = trainer.evaluate()
    # 3 prompts x 2 completions, 2 prompts (4 completions) per batch: every eval prompt, each answered twice
    assert seen == [["Count to three:"] * 2 + ["Say hi"] * 2, ["Pick a colour:"] * 2]
    assert metrics["eval_completions/max_length"] <= 8 and metrics["eval_reward"] >= 0
    assert all(torch.equal(a, b) for a, b in zip(params, trainer.model.parameters()))  # no update
    with pytest.raises(ValueError, match="eval_dataset has no 'prompt' column"):
        GRPOTrainer(model="rlhf-tiny", reward_funcs=spy, train_dataset=text_prompts,
                    eval_dataset=Dataset.from_dict({"text": ["x"]}), args=config())  # fmt: skip


def test_the_completions_table_holds_the_latest_generation():
    from types import SimpleNamespace

    from rlhf_core.trainers.online.metrics import CompletionLog

    log = CompletionLog()
    for step, text in ((1, "old"), (2, "new")):
        group = SimpleNamespace(prompts=["p", "q"], completions=[text, text])
        log.add(step, group, torch.tensor([[1.0], [0.0]]), torch.tensor([0.5, -0.5]), ["r"])
    rows = log.pop()
    assert [(r["step"], r["prompt"], r["completion"], r["r"], r["advantage"]) for r in rows] == [
        (2, "p", "new", 1.0, 0.5),
        (2, "q", "new", 0.0, -0.5),
    ]
