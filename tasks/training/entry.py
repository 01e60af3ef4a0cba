"""Entry point of one training stage under ``accelerate launch``: ``python -m tasks.training.entry SPEC.json``;
`train_as_rank` is also what each Ray Train worker runs (`tasks.training.ray_worker`).

Every process trains; rank 0 alone re-attaches to the stage's MLflow run (so the trainer's MLflow callback,
which only logs on the main process, writes each metric once) and writes ``outcome.json``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.results import TrainOutcome
from tasks.stage_specs import StageSpec
from tasks.training.run import run_stage_training


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def train_as_rank(
    spec: StageSpec, rank: int, *, callbacks: Sequence[Any] = (), resume_from: str | None = None
) -> TrainOutcome:
    """Train ``spec`` as process ``rank`` of the stage (every rank trains; rank 0 alone logs to MLflow)."""
    with contextlib.ExitStack() as stack:
        if rank == 0 and spec.mlflow_run_id:
            from tasks.tracking.runs import attached_run

            stack.enter_context(attached_run(spec.mlflow_run_id, spec.tracking_uri))
        return run_stage_training(spec, callbacks=callbacks, resume_from=resume_from)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tasks.training.entry SPEC.json", file=sys.stderr)
        return 2
    train_as_rank(StageSpec.model_validate_json(Path(argv[0]).read_text()), _rank())
    return 0


if __name__ == "__main__":
    sys.exit(main())
