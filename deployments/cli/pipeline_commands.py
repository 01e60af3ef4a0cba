"""``rlhf run``, ``rlhf train STAGE`` and ``rlhf validate``: the pipeline's subcommands.

    rlhf run configs/default.yaml [key=value ...]        the whole pipeline
    rlhf validate configs/default.yaml [key=value ...]   schema and data checks, no training, no servers
    rlhf train sft configs/default.yaml [key=value ...]  one stage alone (from the configured model)

A configuration or data problem raises one of `deployments.cli.parser.user_errors` (exit status 2, the message
names the key, no traceback); a failed pipeline run exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from deployments.cli.parser import EXIT_FAILED, EXIT_OK, STARTED, user_errors
from tasks.stage_registry import stage_names

__all__ = ["run", "train", "validate"]


def validate(args: argparse.Namespace) -> int:
    """Schema, every data row the enabled stages read and the models' tokenizers; needs neither Prefect nor MLflow."""
    from tasks import check_cache
    from tasks.config import load_config
    from tasks.validation import validate_config_data

    report = validate_config_data(load_config(args.config, args.overrides))
    print(report)
    reused = check_cache.reused()
    if reused:
        print(f"passed before with the same inputs and code, not re-run: {', '.join(reused)} "
              f"(recorded in {check_cache.record_file()}; RLHF_CHECK_CACHE=off re-runs them)")  # fmt: skip
    print(f"{args.config}: OK")
    return EXIT_OK


def train(args: argparse.Namespace) -> int:
    others = [f"stages.{s}.enabled=false" for s in stage_names() if s != args.stage]
    return _execute(args, [f"stages.{args.stage}.enabled=true", *others])


def run(args: argparse.Namespace) -> int:
    return _execute(args, [])


def _execute(args: argparse.Namespace, extra: list[str]) -> int:
    from deployments.cli.startup import LocalPrefectApi, TrackingStore

    # The local Prefect API boots and MLflow is imported while this thread checks the config.
    api, store = LocalPrefectApi(), TrackingStore()
    try:
        from tasks.config import load_config

        config = load_config(args.config, [*args.overrides, *extra])
    except BaseException:
        api.cancel()
        store.cancel()
        raise
    store.create()  # the local MLflow store's tables, while this thread imports the flow
    from flows.pipeline import rlhf_pipeline

    api.ready()
    store.ready()
    try:
        summary = rlhf_pipeline(config, refresh=args.refresh)
    except user_errors():
        raise
    except Exception as err:  # the flow and its runs are marked failed; Prefect has logged the traceback
        print(f"pipeline failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    _print_summary(summary)
    return EXIT_OK


def _print_summary(summary: Any) -> None:
    from flows.report import text_table

    total = time.perf_counter() - STARTED
    startup = max(total - summary.wall_seconds, 0.0)
    print()
    print(text_table(summary.rows))
    if summary.registration is not None:
        reg = summary.registration
        moved = "moved to it" if reg.champion_moved else f"stays on version {reg.champion_version}"
        print(f"\nregistered {reg.name} version {reg.version} ({reg.policy}); alias 'champion' {moved}")
    print(
        f"\ntime: {total:.1f} s in all; pipeline {summary.wall_seconds:.1f} s, of which training "
        f"{summary.train_seconds:.1f} s and all stage work (data, training, sampling, evaluation) "
        f"{summary.work_seconds:.1f} s"
    )
    share = summary.overhead_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    print(
        f"orchestration + tracking overhead (Prefect + MLflow, inside the flow): {summary.overhead_seconds:.1f} s "
        f"= {share:.1%} of the pipeline; process start-up (imports, Prefect API, MLflow store): {startup:.1f} s"
    )
    print(f"\nMLflow parent run {summary.parent_run_id}; open the UI with:\n  {summary.ui_command}")
