"""The pipeline's command line: ``rlhf run``, ``rlhf validate``, ``rlhf train`` (see `deployments.cli` for the rest).

    rlhf run configs/default.yaml [key=value ...]        the whole pipeline
    rlhf validate configs/default.yaml [key=value ...]   schema and data checks, no training
    rlhf train sft configs/default.yaml [key=value ...]  one stage alone (from the configured model)

Overrides are dotted keys with YAML values: ``stages.sft.args.max_steps=20``, ``stages.dpo.enabled=false``,
``scale_out.stages=[sft]``. A configuration or data problem prints what is wrong and where (no traceback) and
exits with status 2; a failed pipeline run exits with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tasks.stage_registry import stage_names

__all__ = ["EXIT_FAILED", "EXIT_USER_ERROR", "build_parser", "main"]

EXIT_FAILED = 1
EXIT_USER_ERROR = 2
_START = time.perf_counter()


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline YAML file (e.g. configs/default.yaml)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides with YAML values, e.g. stages.sft.args.max_steps=20",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``rlhf`` parser with the pipeline's subcommands: run, validate, train."""
    parser = argparse.ArgumentParser(
        prog="rlhf", description="RLHF pipeline: SFT -> reward -> DPO/PPO -> evaluation."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the whole pipeline (Prefect flow, tracked in MLflow)")
    _add_config_arguments(run)
    run.add_argument("--refresh", action="store_true", help="retrain every stage (ignore cached stages)")
    run.set_defaults(handler=_cmd_run)

    validate = sub.add_parser("validate", help="check the config and every data source, without training")
    _add_config_arguments(validate)
    validate.set_defaults(handler=_cmd_validate)

    train = sub.add_parser("train", help="run one stage alone (its inputs from the config's model section)")
    train.add_argument("stage", choices=stage_names())
    _add_config_arguments(train)
    train.add_argument("--refresh", action="store_true", help="retrain even if this stage is cached")
    train.set_defaults(handler=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status."""
    # Without PREFECT_API_URL, Prefect starts a local API server for the run; on a busy laptop it can take longer
    # than Prefect's 20 s default to answer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # That local server would otherwise try to send usage analytics (and log an error when offline).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


# ---- commands -------------------------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> Any:
    from tasks.config import load_config

    return load_config(args.config, args.overrides)


def _user_error(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USER_ERROR


def _user_errors() -> tuple[type[Exception], ...]:
    from rlhf_core.data.formats import DataFormatError
    from tasks.config import ConfigError
    from tasks.data_sources import DataSourceError

    return ConfigError, DataSourceError, DataFormatError


def _cmd_validate(args: argparse.Namespace) -> int:
    from tasks.validation import validate_config_data

    try:
        config = _load(args)
        report = validate_config_data(config)
    except _user_errors() as err:
        return _user_error(err)
    print(report)
    print(f"{args.config}: OK")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    others = [f"stages.{s}.enabled=false" for s in stage_names() if s != args.stage]
    return _execute(args, [f"stages.{args.stage}.enabled=true", *others])


def _cmd_run(args: argparse.Namespace) -> int:
    return _execute(args, [])


class _LocalPrefectApi:
    """Without PREFECT_API_URL, Prefect boots a local API server (a subprocess) at the first flow call. This boots
    it earlier, in a thread, so that it starts while this process loads the flow's modules and the MLflow store."""

    def __init__(self) -> None:
        self.server: Any = None
        self.thread: threading.Thread | None = None
        try:
            from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

            if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
                return
            from prefect.server.api.server import SubprocessASGIServer

            self.server = SubprocessASGIServer()  # the instance Prefect's client uses when no API URL is set
        except Exception:  # a change in Prefect's internals: Prefect starts it itself at the first flow call
            return
        self.thread = threading.Thread(target=self.server.start, name="prefect-api-start", daemon=True)
        self.thread.start()

    def ready(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _prepare_tracking_store() -> threading.Thread:
    from tasks.tracking.runs import prepare_local_store

    def prepare() -> None:
        with contextlib.suppress(Exception):  # the flow checks the store itself and reports what is wrong
            prepare_local_store()

    thread = threading.Thread(target=prepare, name="mlflow-store", daemon=True)
    thread.start()
    return thread


def _execute(args: argparse.Namespace, extra: list[str]) -> int:
    from tasks.config import load_config

    try:
        config = load_config(args.config, [*args.overrides, *extra])
    except _user_errors() as err:
        return _user_error(err)
    # The local Prefect API boots and the local MLflow store is created while this thread imports the flow.
    api, store = _LocalPrefectApi(), _prepare_tracking_store()
    from flows.pipeline import rlhf_pipeline

    api.ready()
    store.join()
    try:
        summary = rlhf_pipeline(config, refresh=args.refresh)
    except _user_errors() as err:
        return _user_error(err)
    except Exception as err:  # the flow and its runs are marked failed; Prefect has logged the traceback
        print(f"pipeline failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED
    _print_summary(summary)
    return 0


def _print_summary(summary: Any) -> None:
    from flows.report import text_table

    total = time.perf_counter() - _START
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


if __name__ == "__main__":
    sys.exit(main())
