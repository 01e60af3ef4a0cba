"""PPO really learns: from a briefly SFT'd tiny model, on the bundled synthetic task (fixed seeds)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_core import PPOConfig, PPOTrainer, SyntheticTask
from rlhf_core.data.collators import PromptCollator
from rlhf_core.data.tokenization import tokenize_prompts
from rlhf_core.rollout.generation import generate
from rlhf_core.rollout.sampling import SamplingParams


@pytest.fixture(scope="module")
def sft_folder(tmp_path_factory):
    """rlhf-tiny after 150 SFT steps on the task's answers: it has the format, not the preferred items."""
    from rlhf_core.trainers.sft.config import SFTConfig
    from rlhf_core.trainers.sft.trainer import SFTTrainer

    folder = tmp_path_factory.mktemp("ppo-learning") / "sft"
    torch.manual_seed(0)
    sft = SFTTrainer(
        model="rlhf-tiny",
        args=SFTConfig(
            output_dir=str(folder.parent / "sft-run"),
            max_steps=150,
            per_device_train_batch_size=32,
            learning_rate=3e-3,
            max_length=64,
            save_strategy="no",
            logging_steps=50,
            disable_tqdm=True,
            report_to="none",
            seed=0,
        ),  # fmt: skip
        train_dataset=SyntheticTask(0).sft_dataset(150 * 32),
    )
    sft.train()
    sft.save_model(str(folder))
    return folder


def heldout_judge(model, tokenizer, task: SyntheticTask, *, reps: int = 8, seed: int = 1234) -> float:
    """Mean judge score of sampled answers (temperature 1, 8 per prompt) to the 18 held-out prompts."""
    prompts = tokenize_prompts(task.prompt_dataset(18, "heldout"), tokenizer)
    batch = PromptCollator(tokenizer.pad_token_id)([prompts[i] for i in range(len(prompts))])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = generate(model, batch["input_ids"].repeat(reps, 1), batch["attention_mask"].repeat(reps, 1),
                       max_new_tokens=24, pad_token_id=tokenizer.pad_token_id,
                       stop_token_ids=[tokenizer.eos_token_id], sampling=SamplingParams(temperature=1.0))  # fmt: skip
    texts = tokenizer.batch_decode(out.response_ids, skip_special_tokens=True)
    scores = task.judge_batch(batch["prompt"] * reps, texts)
    return sum(scores) / len(scores)


def ppo_config(**overrides) -> PPOConfig:
    settings = dict(output_dir="ppo", per_device_train_batch_size=16, num_mini_batches=2, num_ppo_epochs=4,
                    response_length=24, temperature=1.0, learning_rate=3e-4, lr_scheduler_type="constant",
                    logging_steps=8, save_strategy="no", report_to="none", disable_tqdm=True, seed=0)  # fmt: skip
    settings.update(overrides)
    return PPOConfig(**settings)


@pytest.mark.slow
def test_judge_reward_raises_the_heldout_judge_score(sft_folder):
    task = SyntheticTask(0)
    model = AutoModelForCausalLM.from_pretrained(sft_folder)
    tokenizer = AutoTokenizer.from_pretrained(sft_folder)
    before = heldout_judge(model, tokenizer, task)
    trainer = PPOTrainer(
        # seeds 0, 1, 2 gave +0.18, +0.22, +0.22 with these settings
        args=ppo_config(total_episodes=1536, kl_coef=0.05),
        model=model,
        reward_fn=task.judge_batch,  # the ground-truth judge as a Python reward function
        train_dataset=task.prompt_dataset(90, "train"),
        processing_class=tokenizer,
    )
    trainer.train()
    after = heldout_judge(model, tokenizer, task)
    assert before >= 0.4, before  # the SFT model already answers in the format
    assert after >= before + 0.1, (before, after)  # held-out prompts: different phrasings than in training


@pytest.mark.slow
def test_reward_model_reward_rises_and_kl_stays_bounded(sft_folder):
    from rlhf_core.models.loading import load_sequence_classifier
    from rlhf_core.trainers.preference.reward import RewardTrainer
    from rlhf_core.trainers.preference.reward_config import RewardConfig

    task = SyntheticTask(0)
    tokenizer = AutoTokenizer.from_pretrained(sft_folder)
    torch.manual_seed(0)
    reward_trainer = RewardTrainer(
        model=load_sequence_classifier(str(sft_folder)),
        args=RewardConfig(
            output_dir="rm",
            per_device_train_batch_size=16,
            max_steps=100,
            learning_rate=3e-3,
            max_length=64,
            save_strategy="no",
            logging_steps=50,
            report_to="none",
            disable_tqdm=True,
            seed=0,
        ),  # fmt: skip
        train_dataset=task.preference_dataset(1600),
        processing_class=tokenizer,
    )
    reward_trainer.train()
    reward_model = reward_trainer.model.eval()

    trainer = PPOTrainer(
        args=ppo_config(total_episodes=768, learning_rate=1e-4, kl_coef=0.5, missing_eos_penalty=1.0),
        model=AutoModelForCausalLM.from_pretrained(sft_folder),
        reward_model=reward_model,
        train_dataset=task.prompt_dataset(90, "train"),
        processing_class=tokenizer,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "objective/scores" in h]
    scores = [h["objective/scores"] for h in logs]
    kls = [h["objective/kl"] for h in logs]
    assert len(logs) == 3  # 768 episodes = 24 updates of 32, logged every 8
    assert scores[-1] >= scores[0] + 1.0, scores  # the reward model's score rises by a clear margin
    assert max(kls) < 5.0, kls  # ... while the policy stays near the reference (nats per response)
