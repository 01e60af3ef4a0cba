"""How fast the ``rlhf`` commands start and how much of a pipeline run is orchestration + tracking.

    python benchmarks/bench_cli.py [--config configs/default.yaml] [--skip-run]

Each command runs as a fresh process (what a user waits for), in a temporary working folder, with no Prefect or
MLflow server configured (the local defaults). Measured, beside the targets of issue 13:

- ``rlhf validate CONFIG``                      wall time of the process (target <= 3 s), twice: with no
                                               remembered checks (a fresh ``RLHF_CHECK_CACHE`` file: trainer
                                               configs built, tokenizer loaded), then with those of the first
- ``rlhf ingest`` of the whole shared HH file   wall time of the process (target <= 5 s); the file from
                                               ``$RLHF_HH_RLHF_PATH`` or ../shared/data/hh-rlhf/ beside the checkout
- ``rlhf run CONFIG`` start-up                  process start to the flow's first log line, after which its first
                                               stage starts (target <= 8 s); beside it, the start-up the run
                                               itself reports (its total minus the flow's wall time)
- orchestration + tracking overhead            the share the run itself prints (target <= 5 %): flow wall time
                                               minus the stage work (data, training, sampling, evaluation)

Wall time is noisy on a shared machine: the CPU seconds of each process (and its children) are printed too.
Prints, never asserts.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The flow's first line: its first stage (prepare-data) starts right after (Prefect logs no task-start line)
FLOW_BEGINS = re.compile(r"Beginning flow run")
CLI_STARTUP = re.compile(r"process start-up \(imports, Prefect API, MLflow store\): ([\d.]+) s")
OVERHEAD = re.compile(
    r"overhead \(Prefect \+ MLflow, inside the flow\): ([\d.]+) s = ([\d.]+)% of the pipeline"
)


_CHECKS: dict[str, str] = {}  # RLHF_CHECK_CACHE of every command: a file of this run's own


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_TRACKING_URI"))
    }
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", **_CHECKS)  # fmt: skip
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "deployments.cli", *args]


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the process and its children, exit status, output tail)."""
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    return (
        time.perf_counter() - start,
        _children_cpu() - cpu,
        done.returncode,
        (done.stdout + done.stderr)[-2000:],
    )


def run_pipeline(config: Path, cwd: Path) -> dict[str, float | None]:
    """``rlhf run``: seconds to the first stage's log line, the total, and the overhead the run reports."""
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(_command("run", str(config)), cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    first_stage, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first_stage is None and FLOW_BEGINS.search(line):
            first_stage = time.perf_counter() - start
    status = proc.wait()
    out = "".join(lines)
    if status != 0:
        print(out[-3000:], file=sys.stderr)
    overhead, cli_startup = OVERHEAD.search(out), CLI_STARTUP.search(out)
    return {
        "status": status,
        "startup_s": first_stage,
        "cli_startup_s": float(cli_startup[1]) if cli_startup else None,
        "total_s": time.perf_counter() - start,
        "cpu_s": _children_cpu() - cpu,
        "overhead_s": float(overhead[1]) if overhead else None,
        "overhead_pct": float(overhead[2]) if overhead else None,
    }


def _row(what: str, value: float | None, unit: str, target: str, extra: str = "") -> str:
    shown = "n/a" if value is None else f"{value:.1f} {unit}"
    return f"{what:<54} {shown:>10}   target {target:<8} {extra}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--skip-run", action="store_true", help="only validate and ingest")
    args = parser.parse_args()
    config = Path(args.config).resolve()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = Path(tmp)
        _CHECKS["RLHF_CHECK_CACHE"] = str(work / "config-checks.json")
        for when in ("no checks remembered", "checks remembered"):
            wall, cpu, status, tail = timed(_command("validate", str(config)), work)
            rows.append(_row(f"rlhf validate {config.name} ({when})", wall, "s", "<= 3 s",
                             f"CPU {cpu:.1f} s, exit {status}"))  # fmt: skip
            if status:
                print(tail, file=sys.stderr)
        from rlhf_core.data.hh_rlhf import default_hh_rlhf_path

        hh_file = default_hh_rlhf_path()
        if hh_file.is_file():
            cmd = _command("ingest", str(hh_file), "--store-dir", str(work / "store"))
            wall, cpu, status, tail = timed(cmd, work)
            rows.append(_row("rlhf ingest (whole HH file, 2,312 pairs)", wall, "s", "<= 5 s",
                             f"CPU {cpu:.1f} s, exit {status}"))  # fmt: skip
            if status:
                print(tail, file=sys.stderr)
        else:
            rows.append(f"rlhf ingest: skipped, {hh_file} is not there (set RLHF_HH_RLHF_PATH)")
        if args.skip_run:
            rows.append("rlhf run: skipped (--skip-run)")
        else:
            result = run_pipeline(config, work)
            rows.append(_row("rlhf run start-up (process start -> flow begins)", result["startup_s"], "s", "<= 8 s",
                             f"run's own count {result['cli_startup_s']} s; exit {result['status']}"))  # fmt: skip
            rows.append(_row("orchestration + tracking overhead", result["overhead_pct"], "%", "<= 5 %",
                             f"{result['overhead_s']} s of the flow; run {result['total_s']:.1f} s wall, "
                             f"CPU {result['cpu_s']:.1f} s"))  # fmt: skip
    print(f"bench_cli ({os.cpu_count()} cores; wall times are noisy on a shared machine)")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
