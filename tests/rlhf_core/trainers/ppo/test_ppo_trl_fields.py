"""TRL 1.12 PPOConfig fields implemented here: sft_model_path / reward_model_path (the models loaded when none is
passed) and num_sample_generations (sample completions recorded that many times over train())."""

from __future__ import annotations

import torch

from rlhf_core import PPOConfig, PPOTrainer
from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_tokenizer
from rlhf_core.models.tiny import TINY_MODEL
from rlhf_core.trainers.ppo.samples import is_sample_update


def test_sample_schedule_spreads_n_records_over_the_updates():
    assert [u for u in range(1, 101) if is_sample_update(u, 100, 10)] == list(range(1, 101, 10))  # TRL's
    assert [u for u in range(1, 4) if is_sample_update(u, 3, 2)] == [1, 3]  # never more than n
    assert [u for u in range(1, 4) if is_sample_update(u, 3, 10)] == [1, 2, 3]
    assert not any(is_sample_update(u, 5, 0) for u in range(1, 6))


def test_model_paths_and_sample_generations():
    torch.manual_seed(0)
    args = PPOConfig(output_dir="out", per_device_train_batch_size=2, num_ppo_epochs=1, response_length=4,
                     max_steps=3, num_sample_generations=2, save_strategy="no", report_to="none",
                     sft_model_path=TINY_MODEL, reward_model_path=TINY_MODEL)  # fmt: skip
    trainer = PPOTrainer(args=args, processing_class=load_tokenizer(TINY_MODEL),
                         train_dataset=SyntheticTask(0).prompt_dataset(8, "train"))  # fmt: skip
    assert trainer.rollout.reward_model is not None  # loaded from reward_model_path
    trainer.train()
    records = trainer.sample_generations
    assert [r["update"] for r in records] == [1, 1, 3, 3]  # 2 records of the batch's 2 episodes
    assert all(
        isinstance(r["prompt"], str) and r["prompt"] and isinstance(r["score"], float) for r in records
    )


def test_adapter_names_pick_the_trained_adapter_and_the_reference_adapter():
    import pytest

    peft = pytest.importorskip("peft")
    from rlhf_core.models.loading import load_causal_lm
    from rlhf_core.rollout.logprobs import ResponseBatch
    from rlhf_core.trainers.ppo.experience import reference_logprobs, response_logprobs

    torch.manual_seed(0)
    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    policy = peft.get_peft_model(load_causal_lm(TINY_MODEL), peft.LoraConfig(**lora), adapter_name="policy")
    policy.add_adapter("ref", peft.LoraConfig(init_lora_weights=False, **lora))  # not the identity
    args = PPOConfig(output_dir="out", per_device_train_batch_size=2, num_ppo_epochs=1, response_length=4,
                     max_steps=1, save_strategy="no", report_to="none", num_sample_generations=0,
                     model_adapter_name="policy", ref_adapter_name="ref")  # fmt: skip
    trainer = PPOTrainer(args=args, model=policy, processing_class=load_tokenizer(TINY_MODEL),
                         reward_fn=lambda prompts, responses: [1.0] * len(responses),
                         train_dataset=SyntheticTask(0).prompt_dataset(4, "train"))  # fmt: skip
    policy = trainer.rollout.model().policy
    assert trainer.rollout.ref_model is None and policy.active_adapter == "policy"
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    batch = ResponseBatch(
        ids[:, :3], torch.ones(1, 3, dtype=torch.long), ids[:, 3:], torch.ones(1, 3, dtype=torch.long)
    )
    got = reference_logprobs(batch, ref_model=None, policy=policy, temperature=1.0, micro_batch_size=4,
                             ref_adapter="ref", model_adapter="policy")  # fmt: skip
    assert policy.active_adapter == "policy"  # switched back after the reference pass
    policy.set_adapter("ref")
    with torch.no_grad():
        expected = response_logprobs(policy.eval(), batch, temperature=1.0, micro_batch_size=4)
    policy.set_adapter("policy")
    with torch.no_grad(), policy.disable_adapter():
        base = response_logprobs(policy, batch, temperature=1.0, micro_batch_size=4)
    assert torch.allclose(got, expected) and not torch.allclose(got, base)
    ref_before = {n: p.detach().clone() for n, p in policy.named_parameters() if ".ref." in n}
    trainer.train()
    assert all(torch.equal(p, ref_before[n]) for n, p in policy.named_parameters() if n in ref_before)
