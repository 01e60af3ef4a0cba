"""A briefly SFT'd tiny policy for the online learning tests, and the held-out judge score they compare."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.evaluation.sampling import judge_scores, sample_responses


@pytest.fixture(scope="session")
def online_sft_folder(tmp_path_factory):
    """rlhf-tiny after 150 SFT steps on the task's answers (the recipe of the PPO learning test): it has the
    answer format, not the preferred items."""
    from rlhf_core.trainers.sft.config import SFTConfig
    from rlhf_core.trainers.sft.trainer import SFTTrainer

    folder = tmp_path_factory.mktemp("online-learning") / "sft"
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


def heldout_judge(model_path, *, reps: int = 8, seed: int = 1234) -> float:
    """Mean judge score of sampled answers (temperature 1, ``reps`` per prompt) to the 18 held-out prompts."""
    prompts = list(SyntheticTask(0).prompt_dataset(18, "heldout")["prompt"]) * reps
    samples = sample_responses(str(model_path), prompts, max_new_tokens=24, temperature=1.0, seed=seed)
    scores = judge_scores(samples.prompts, samples.responses)
    return sum(scores) / len(scores)
