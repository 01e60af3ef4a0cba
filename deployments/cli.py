"""The `rlhf` command: the pipeline's subcommands (deployments.pipeline_commands: run, validate, train) plus `serve` and `ingest`.

This is the top layer (deployments -> flows -> tasks -> rlhf_core), so `rlhf serve` can register deployments
without the flows layer knowing about them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from deployments.pipeline_commands import build_parser as build_flows_parser
from deployments.pipeline_commands import main as flows_main

_HANDLER = "_deployments_command"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("deployments.pipeline_commands.build_parser() has no subcommands to extend")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="register the pipeline + ingestion deployments with Prefect and run them here",
        description="Register the pipeline deployment (the config as its run form, optional cron schedule, "
        "retraining on `preference-data.arrived`) and the ingestion deployments, then execute their runs in "
        "this process until Ctrl+C. Points at the Prefect API in PREFECT_API_URL.",
    )
    p.add_argument("config", help="pipeline YAML file: the defaults of the deployment's run form")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the config")
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
    p.set_defaults(**{_HANDLER: _serve})


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    from tasks.ingest import IngestPolicy

    defaults = IngestPolicy()
    p = sub.add_parser(
        "ingest",
        help="validate a preference file and store it as a dataset version (emits preference-data.arrived)",
    )
    p.add_argument("path_or_uri", help="JSONL / JSON / Parquet file, local path or fsspec URI")
    p.add_argument("--store-dir", help="dataset version store (default: $RLHF_DATASET_STORE or outputs/...)")
    p.add_argument("--max-row-chars", type=int, default=defaults.max_row_chars)
    p.add_argument("--max-invalid-fraction", type=float, default=defaults.max_invalid_fraction)
    p.add_argument("--min-rows", type=int, default=defaults.min_rows)
    p.set_defaults(**{_HANDLER: _ingest})


def build_parser() -> argparse.ArgumentParser:
    parser = build_flows_parser()
    sub = _subparsers(parser)
    _add_serve(sub)
    _add_ingest(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from deployments.serve import ServeOptions, build_deployments, describe, serve
    from tasks.config import ConfigError

    options = ServeOptions(
        config_path=args.config,
        overrides=list(args.overrides),
        cron=args.cron,
        timezone=args.timezone,
        retrain_on_new_data=args.retrain_on_new_data,
        watch_folder=args.watch_folder,
        watch_interval_seconds=args.watch_interval,
        store_dir=args.store_dir,
        max_concurrent_runs=args.max_concurrent_runs,
        flow_ref=args.flow,
    )
    try:
        if args.dry_run:
            print(describe(build_deployments(options)))
            return 0
        serve(options, limit=args.limit)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from flows.ingest import ingest_preferences
    from tasks.ingest import IngestPolicy, PreferenceDataRejected

    try:
        policy = IngestPolicy(
            max_row_chars=args.max_row_chars,
            max_invalid_fraction=args.max_invalid_fraction,
            min_rows=args.min_rows,
        )
        result = ingest_preferences(args.path_or_uri, store_dir=args.store_dir, policy=policy)
    except (PreferenceDataRejected, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `rlhf ingest` without PREFECT_API_URL starts Prefect's local API, slow to answer on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    handler = getattr(args, _HANDLER, None)
    if handler is None:
        return flows_main(argv)  # run / validate / train: the pipeline's own CLI
    return handler(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
