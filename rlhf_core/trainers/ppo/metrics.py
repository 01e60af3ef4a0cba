"""What a PPO update reports: rollout metrics (TRL's names), averaging between log calls, an episode progress bar."""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers.trainer_callback import ProgressCallback
from transformers.utils import logging as hf_logging

from rlhf_core.trainers.ppo.experience import Experience

__all__ = ["EpisodeProgressCallback", "MetricsWindow", "rollout_metrics"]


@torch.no_grad()
def rollout_metrics(exp: Experience, *, kl_coef: float, stop_ids: list[int]) -> dict[str, float]:
    """Sequence-level statistics of one batch of experience.

    ``objective/kl`` is the mean over episodes of the summed per-token KL estimate, the very tensor whose
    ``-kl_coef`` multiple was added to the rewards; ``objective/entropy`` is the mean summed ``-log p`` of the
    sampled tokens (a one-sample estimate of the sequence entropy).
    """
    mask = exp.mask.to(exp.kl.dtype)
    non_score = (-kl_coef * exp.kl * mask).sum(-1)
    metrics = {
        "objective/kl": (exp.kl * mask).sum(-1).mean(),
        "objective/entropy": (-exp.logprobs * mask).sum(-1).mean(),
        "objective/non_score_reward": non_score.mean(),
        "objective/scores": exp.scores.float().mean(),
        "objective/rlhf_reward": (non_score + exp.scores.float()).mean(),
        "objective/kl_coef": torch.tensor(kl_coef),
        "val/response_length": mask.sum(-1).mean(),
    }
    if stop_ids:
        stops = torch.as_tensor(stop_ids, device=exp.batch.response_ids.device)
        hits = torch.isin(exp.batch.response_ids, stops) & (exp.mask == 1)
        metrics["val/num_eos_tokens"] = hits.sum().to(torch.float32)
    return {key: float(value) for key, value in metrics.items()}


class MetricsWindow:
    """Averages each metric over the updates since the last log (``logging_steps`` > 1)."""

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = defaultdict(list)

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._values[key].append(float(value))

    def pop(self) -> dict[str, float]:
        out = {key: sum(vals) / len(vals) for key, vals in self._values.items() if vals}
        self._values.clear()
        return out


class EpisodeProgressCallback(ProgressCallback):
    """transformers' progress bar, counted in episodes (prompts answered) rather than optimizer steps."""

    def __init__(self, total_episodes: int, max_str_len: int = 100) -> None:
        super().__init__(max_str_len=max_str_len)
        self.total_episodes = total_episodes
        self.current_episode = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = hf_logging.tqdm(
                total=self.total_episodes, unit="episode", desc="PPO", dynamic_ncols=True
            )
            self.current_episode = int(getattr(state, "episode", 0))
            self.training_bar.update(self.current_episode)
        self.current_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        episode = int(getattr(state, "episode", 0))
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.update(episode - self.current_episode)
        self.current_episode = episode
        self.current_step = state.global_step
