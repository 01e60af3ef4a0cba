"""One stage in a process of its own, for the resume tests: ``python resume_probe.py SPEC.json [KILL_AT_STEP]``.

With KILL_AT_STEP the process SIGKILLs itself right after the trainer has saved that step's checkpoint: a real
kill (no exception, no handler, no cleanup), the way an OOM killer or ``kill -9`` ends a run.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from tasks.stage_specs import StageSpec
from tasks.training.run import run_stage_training


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)  # every attempt with the same reduction order
    spec = StageSpec.model_validate_json(Path(argv[0]).read_text())
    callbacks = [KillAfterSave(int(argv[1]))] if len(argv) > 1 else []
    run_stage_training(spec, callbacks=callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
