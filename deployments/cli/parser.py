"""The ``rlhf`` argument parser: every subcommand, parsed once, and the one table of exit statuses.

Building the parser imports nothing heavy (no torch, Prefect or MLflow): each subcommand names its handler as
``"module:function"``, imported only when that subcommand runs, so ``rlhf --help`` and ``rlhf validate`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable

from tasks.stage_registry import STAGES

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "STARTED", "build_parser", "main", "user_errors"]

STARTED = time.perf_counter()  # the command's start (its start-up time is reported against it)

# The exit statuses of every subcommand.
EXIT_OK = 0  # the command did what it was asked
EXIT_FAILED = 1  # the run itself failed (a stage raised, a server broke); Prefect and MLflow mark it failed
EXIT_USAGE = 2  # bad usage, configuration or input data (nothing was trained or stored); argparse uses 2 too

EPILOG = f"""\
exit status:
  {EXIT_OK}  done
  {EXIT_FAILED}  the run failed (a stage or the flow raised; its Prefect and MLflow runs are marked failed)
  {EXIT_USAGE}  bad usage, configuration or input data (a rejected ingest included): nothing was trained or
     stored; the message names the key, the row or the file

overrides are dotted keys with YAML values, after the config file:
  rlhf run configs/default.yaml stages.sft.args.max_steps=20 stages.dpo.enabled=false

servers: PREFECT_API_URL and MLFLOW_TRACKING_URI; without them Prefect runs a local API for the run and MLflow
writes ./mlflow.db.
"""


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline YAML file (e.g. configs/default.yaml)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides with YAML values, e.g. stages.sft.args.max_steps=20",
    )


def _add_pipeline_commands(sub: argparse._SubParsersAction) -> None:
    commands = "deployments.cli.pipeline_commands"
    run = sub.add_parser("run", help="run the whole pipeline (Prefect flow, tracked in MLflow)")
    _add_config_arguments(run)
    run.add_argument("--refresh", action="store_true", help="retrain every stage (ignore cached stages)")
    run.set_defaults(handler=f"{commands}:run")

    validate = sub.add_parser(
        "validate", help="check the config, every data source and the models' tokenizers, without training"
    )
    _add_config_arguments(validate)
    validate.set_defaults(handler=f"{commands}:validate")

    train = sub.add_parser("train", help="run one stage alone (its inputs from the config's model section)")
    train.add_argument(
        "stage", choices=list(STAGES), help=", ".join(f"{n}: {s.summary}" for n, s in STAGES.items())
    )
    _add_config_arguments(train)
    train.add_argument("--refresh", action="store_true", help="retrain even if this stage is cached")
    train.set_defaults(handler=f"{commands}:train")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="register the pipeline + ingestion deployments with Prefect and run them here",
        description="Register the pipeline deployment (the config as its run form, optional cron schedule, "
        "retraining on `preference-data.arrived`) and the ingestion deployments, then execute their runs in "
        "this process until Ctrl+C. Points at the Prefect API in PREFECT_API_URL.",
    )
    _add_config_arguments(p)
    p.add_argument("--cron", help='retraining schedule, e.g. "0 3 * * 1" (default: no schedule)')
    p.add_argument("--timezone", default="UTC", help="timezone of the cron schedule (default: UTC)")
    p.add_argument(
        "--no-retrain-trigger",
        dest="retrain_on_new_data",
        action="store_false",
        help="do not start a run when new preference data is ingested",
    )
    p.add_argument("--watch-folder", help="also ingest every preference file dropped into this folder")
    p.add_argument(
        "--watch-interval", type=float, default=60.0, metavar="SECONDS", help="watcher period (default 60)"
    )
    p.add_argument("--store-dir", help="dataset version store (default: $RLHF_DATASET_STORE or outputs/...)")
    p.add_argument(
        "--max-concurrent-runs", type=int, help="pipeline runs allowed at once (default: no limit)"
    )
    p.add_argument("--limit", type=int, help="flow runs this process executes at once (default: no limit)")
    p.add_argument(
        "--flow",
        default="flows.pipeline:rlhf_pipeline",
        metavar="MODULE:FUNCTION",
        help="the pipeline flow to serve (a flow taking `config: PipelineConfig`)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the deployments, register nothing")
    p.set_defaults(handler="deployments.cli.service_commands:serve")


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="validate a preference file and store it as a dataset version (emits preference-data.arrived "
        "when a Prefect API is configured)",
        description="Validate a preference file and store the rows that pass as a content-addressed dataset "
        "version. With PREFECT_API_URL set it runs as the `ingest-preferences` flow and emits "
        "`preference-data.arrived` (the retraining trigger); without, it runs directly and says that no server "
        "is there to receive the event. A rejected file exits with status 2 and stores nothing.",
    )
    p.add_argument("path_or_uri", help="JSONL / JSON / Parquet file, local path or fsspec URI")
    p.add_argument("--store-dir", help="dataset version store (default: $RLHF_DATASET_STORE or outputs/...)")
    # Defaults (None) are IngestPolicy's own, so they are written down once, in tasks.ingest.
    p.add_argument("--max-row-chars", type=int, help="longest row kept (default 20000 characters)")
    p.add_argument(
        "--max-invalid-fraction", type=float, help="reject the file past this share of bad rows (default 0.1)"
    )
    p.add_argument("--min-rows", type=int, help="reject a file with fewer valid rows (default 1)")
    p.set_defaults(handler="deployments.cli.service_commands:ingest")


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="mark MLflow runs left RUNNING by a dead pipeline process (kill -9, OOM) as FAILED",
        description="Sweep the tracking store (MLFLOW_TRACKING_URI, else ./mlflow.db) for runs a dead pipeline "
        "process left RUNNING and mark them FAILED, tagged rlhf.ghost.found_by / found_at. Runs owned by a live "
        "process or by another host are left alone. A pipeline run does the same for its own config at start-up.",
    )
    p.add_argument("config", nargs="?", help="only this config's experiment (default: every experiment)")
    p.set_defaults(handler="deployments.cli.service_commands:doctor", overrides=[])


def build_parser() -> argparse.ArgumentParser:
    """The ``rlhf`` parser with every subcommand: run, validate, train, serve, ingest, doctor."""
    parser = argparse.ArgumentParser(
        prog="rlhf",
        description=f"RLHF pipeline: training stages {', '.join(STAGES)}, then evaluation and the registry.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pipeline_commands(sub)
    _add_serve(sub)
    _add_ingest(sub)
    _add_doctor(sub)
    return parser


# What the user must fix (exit status 2): the config, a data source or row, a rejected preference file.
_USER_ERRORS = (
    ("tasks.config.loading", "ConfigError"),
    ("tasks.data_sources", "DataSourceError"),
    ("rlhf_core.data.formats", "DataFormatError"),
    ("tasks.ingest", "PreferenceDataRejected"),
)


def user_errors() -> tuple[type[Exception], ...]:
    """The user-error classes, from the modules already imported (an error can only come from one of those:
    handling it imports nothing)."""
    return tuple(getattr(sys.modules[m], name) for m, name in _USER_ERRORS if m in sys.modules)


def _handler(path: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` once and run the subcommand; returns its exit status (see `EPILOG`)."""
    args = build_parser().parse_args(argv)
    try:
        return _handler(args.handler)(args)
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
