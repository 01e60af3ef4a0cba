"""Checkpoints of a PPO run and resuming from them, plus the deterministic stream of prompt batches.

A checkpoint is the Trainer's (``checkpoint-<update>/``: weights, optimizer, scheduler, RNG states, trainer
state) with the policy saved as a loadable model, its value head (or value model) beside it, and
``ppo_state.json`` holding the KL controller. Prompt order is a function of (seed, epoch), and every other
random draw (sampling, mini-batch shuffles) uses torch's global generator, which the checkpoint's RNG state
restores: a resumed run continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import torch
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rlhf_core.trainers.base import last_checkpoint

__all__ = ["PPOCheckpointMixin", "prompt_batches"]

PPO_STATE_NAME = "ppo_state.json"


def prompt_batches(
    dataset: Any, collator: Any, args: Any, accelerator: Any, *, skip: int = 0
) -> Iterator[dict]:
    """Endless batches of ``args.batch_size`` prompts for this process, reshuffled each epoch from the seed.

    The first ``skip`` batches are passed over without collating (resuming). Each process takes its own slice
    of a global batch of ``batch_size x num_processes`` rows; a last incomplete global batch is dropped.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    per_update = args.batch_size * world
    per_epoch = len(dataset) // per_update
    index, epoch = 0, 0
    while True:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed + epoch))
        for start in range(0, per_epoch * per_update, per_update):
            if index >= skip:
                rows = order[start : start + per_update][
                    rank * args.batch_size : (rank + 1) * args.batch_size
                ]
                yield collator([dataset[int(i)] for i in rows])
            index += 1
        epoch += 1


class PPOCheckpointMixin:
    """Saving the trained parts of a PPO run the way Trainer saves a model, and resuming from a checkpoint."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        folder = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        if self.args.should_save and os.path.isdir(folder):
            with open(os.path.join(folder, PPO_STATE_NAME), "w") as f:
                json.dump({"kl_controller": self.kl_ctl.state_dict()}, f)

    def _resume(self, checkpoint: str | bool) -> int:
        """Load weights, optimizer, scheduler, RNG and trainer state; returns the number of updates done."""
        if checkpoint is True:
            checkpoint = last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no checkpoint"
                )
        if not os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)):
            raise ValueError(f"{checkpoint} is not a PPO checkpoint folder (no {TRAINER_STATE_NAME})")
        self.accelerator.unwrap_model(self.model).load_checkpoint(checkpoint)
        self._load_optimizer_and_scheduler(checkpoint)
        saved = type(self.state).load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        self.state.global_step, self.state.episode = saved.global_step, saved.episode
        self.state.epoch, self.state.log_history = saved.epoch, saved.log_history
        self.state.stateful_callbacks = saved.stateful_callbacks
        self._load_callback_state()
        ppo_state = os.path.join(checkpoint, PPO_STATE_NAME)
        if os.path.isfile(ppo_state):
            with open(ppo_state) as f:
                self.kl_ctl.load_state_dict(json.load(f)["kl_controller"])
        self._load_rng_state(checkpoint)
        return saved.global_step
