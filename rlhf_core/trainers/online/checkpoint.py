"""Resuming a GRPO/RLOO run from one of its checkpoints, exactly where it stopped.

A checkpoint is the Trainer's (``checkpoint-<step>/``: the policy as a loadable model, optimizer, scheduler, RNG
states, trainer state) plus ``online_state.pt``: how many generations were drawn, and, when the checkpoint falls
inside a generation (``num_iterations`` or ``steps_per_generation`` span several optimizer steps), that generation
itself (completions, advantages, old and reference log-probs) and the micro-batch order of its remaining steps.
Prompt order is a function of (seed, epoch) and every other random draw (sampling, shuffles) uses torch's global
generator, which the checkpoint's RNG state restores, so the resumed run continues as the uninterrupted one would
have. The metrics averaged since the last log and the completions table waiting to be printed are not kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rlhf_core.trainers.base import last_checkpoint

__all__ = ["GenerationBuffer", "OnlineCheckpointMixin"]

ONLINE_STATE_NAME = "online_state.pt"


@dataclass
class GenerationBuffer:
    """The generation being optimised on: its rollout, each optimizer step's micro-batch rows, the next step."""

    rollout: Any
    steps: list[list[torch.Tensor]]
    next_step: int = 0

    @property
    def exhausted(self) -> bool:
        return self.next_step >= len(self.steps)


class OnlineCheckpointMixin:
    """``_save_checkpoint`` adds the generation state; ``_resume`` loads a checkpoint back (see module docstring)."""

    _buffer: GenerationBuffer | None = None
    _generations: int = 0

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        folder = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        if not os.path.isdir(folder):
            return
        buffer = self._buffer if self._buffer is not None and not self._buffer.exhausted else None
        torch.save(
            {"generations": self._generations, "buffer": buffer}, os.path.join(folder, self._state_name())
        )

    def _state_name(self) -> str:
        # every process keeps its own share of the generation (rank 0 alone writes the rest of the folder)
        acc = self.accelerator
        return ONLINE_STATE_NAME if acc.num_processes == 1 else f"online_state_{acc.process_index}.pt"

    def _resume(self, checkpoint: str | bool) -> GenerationBuffer | None:
        """Load weights, optimizer, scheduler, RNG, trainer and generation state; returns the unfinished
        generation, if the checkpoint fell inside one."""
        if checkpoint is True:
            checkpoint = last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no checkpoint"
                )
        checkpoint = str(checkpoint)
        name = self._state_name()
        state_file = os.path.join(checkpoint, name)
        if not os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)) or not os.path.isfile(state_file):
            raise ValueError(
                f"{checkpoint} is not a checkpoint of a {type(self).__name__} run "
                f"(it needs {TRAINER_STATE_NAME} and {name})"
            )
        self._load_from_checkpoint(checkpoint, model=self._policy())
        self._load_optimizer_and_scheduler(checkpoint)
        saved = type(self.state).load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        self.state.global_step, self.state.epoch = saved.global_step, saved.epoch
        self.state.log_history, self.state.stateful_callbacks = saved.log_history, saved.stateful_callbacks
        self._load_callback_state()
        self._load_rng_state(checkpoint)
        online = torch.load(
            state_file, weights_only=False
        )  # written by this class: rows of the user's dataset
        self._generations = int(online["generations"])
        self._last_lr = self._current_lr()
        return online["buffer"]
