"""``rlhf serve`` (register and run the deployments), ``rlhf ingest`` (store a new preference dataset version) and
``rlhf doctor`` (mark runs a dead process left RUNNING as FAILED)."""

from __future__ import annotations

import argparse
import json
import sys

from deployments.cli.parser import EXIT_OK, EXIT_USAGE

__all__ = ["doctor", "ingest", "serve"]


def serve(args: argparse.Namespace) -> int:
    from deployments.serve import ServeOptions, build_deployments, describe, serve

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
    if args.dry_run:
        print(describe(build_deployments(options)))
        return EXIT_OK
    serve(options, limit=args.limit)
    return EXIT_OK


def ingest(args: argparse.Namespace) -> int:
    """With a Prefect API: the ``ingest-preferences`` flow (artifact + event). Without: the same steps directly,
    in a second or two instead of booting a temporary API for an event that no server would receive."""
    from pydantic import ValidationError

    from tasks.ingest import IngestPolicy

    limits = {"max_row_chars": args.max_row_chars, "max_invalid_fraction": args.max_invalid_fraction,
              "min_rows": args.min_rows}  # fmt: skip
    try:
        policy = IngestPolicy(**{k: v for k, v in limits.items() if v is not None})
    except ValidationError as err:
        problems = "; ".join(f"--{e['loc'][0].replace('_', '-')}: {e['msg']}" for e in err.errors())
        print(f"error: {problems}", file=sys.stderr)
        return EXIT_USAGE
    from deployments.cli.startup import prefect_api_configured

    if prefect_api_configured():
        from flows.ingest import ingest_preferences

        result = ingest_preferences(args.path_or_uri, store_dir=args.store_dir, policy=policy)
    else:
        from tasks.ingest import ingest_file

        dataset, report = ingest_file(args.path_or_uri, store_dir=args.store_dir, policy=policy)
        print(
            f"{report.kept_rows} of {report.total_rows} rows kept ({report.counts() or 'no problems'}); "
            f"{'new version' if dataset.created else 'already stored as'} {dataset.version}. No Prefect API is "
            "configured (PREFECT_API_URL): no server is there to receive preference-data.arrived, so no "
            "retraining starts; ingest with PREFECT_API_URL set to announce it.",
            file=sys.stderr,
        )
        result = {**dataset.to_dict(), "announced": False}
    print(json.dumps(result, indent=2))
    return EXIT_OK


def doctor(args: argparse.Namespace) -> int:
    """Mark ghost runs FAILED (`tasks.tracking.ghosts`), in the config's experiment or in every experiment."""
    from tasks.tracking.runs import doctor as sweep

    names = None
    if args.config:
        from tasks.config import load_config

        names = [load_config(args.config, []).tracking.experiment_name]
    report = sweep(names)
    for line in report.lines():
        print(line)
    if not report.marked:
        print("no ghost runs: nothing is left RUNNING by a dead process")
    return EXIT_OK
