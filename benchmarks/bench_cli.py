"""How fast the ``rlhf`` commands start and how much of a pipeline run is orchestration + tracking.

    python benchmarks/bench_cli.py [--config configs/default.yaml] [--skip-run]

Each command runs as a fresh process (what a user waits for), in a temporary working folder, with no Prefect or
MLflow server configured (the local defaults). Measured, beside the targets of issue 13:

- ``rlhf validate CONFIG``                      wall time of the process (target <= 3 s)
- ``rlhf ingest`` of the whole shared HH file   wall time of the process (target <= 5 s)
- ``rlhf run CONFIG`` start-up                  process start to the first stage's task run (target <= 8 s)
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
HH_FILE = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
FIRST_STAGE = re.compile(r"Task run '(prepare-data|train-)")
OVERHEAD = re.compile(r"overhead \(Prefect \+ MLflow, inside the flow\): ([\d.]+) s = ([\d.]+)% of the pipeline")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "MLFLOW_TRACKING_URI"))}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1")  # fmt: skip
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
    return time.perf_counter() - start, _children_cpu() - cpu, done.returncode, (done.stdout + done.stderr)[-2000:]


def run_pipeline(config: Path, cwd: Path) -> dict[str, float | None]:
    """``rlhf run``: seconds to the first stage's log line, the total, and the overhead the run reports."""
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(_command("run", str(config)), cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    first_stage, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first_stage is None and FIRST_STAGE.search(line):
            first_stage = time.perf_counter() - start
    status = proc.wait()
    out = "".join(lines)
    if status != 0:
        print(out[-3000:], file=sys.stderr)
    overhead = OVERHEAD.search(out)
    return {
        "status": status,
        "startup_s": first_stage,
        "total_s": time.perf_counter() - start,
        "cpu_s": _children_cpu() - cpu,
        "overhead_s": float(overhead[1]) if overhead else None,
        "overhead_pct": float(overhead[2]) if overhead else None,
    }


def _row(what: str, value: float | None, unit: str, target: str, extra: str = "") -> str:
    shown = "n/a" if value is None else f"{value:.1f} {unit}"
    return f"{what:<44} {shown:>10}   target {target:<8} {extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--skip-run", action="store_true", help="only validate and ingest")
    args = parser.parse_args()
    config = Path(args.config).resolve()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = Path(tmp)
        wall, cpu, status, tail = timed(_command("validate", str(config)), work)
        rows.append(_row(f"rlhf validate {config.name}", wall, "s", "<= 3 s", f"CPU {cpu:.1f} s, exit {status}"))
        if status:
            print(tail, file=sys.stderr)
        if HH_FILE.is_file():
            cmd = _command("ingest", str(HH_FILE), "--store-dir", str(work / "store"))
            wall, cpu, status, tail = timed(cmd, work)
            rows.append(_row("rlhf ingest (whole HH file, 2,312 pairs)", wall, "s", "<= 5 s",
                             f"CPU {cpu:.1f} s, exit {status}"))  # fmt: skip
            if status:
                print(tail, file=sys.stderr)
        else:
            rows.append(f"rlhf ingest: skipped, {HH_FILE} is not there")
        if args.skip_run:
            rows.append("rlhf run: skipped (--skip-run)")
        else:
            result = run_pipeline(config, work)
            rows.append(_row("rlhf run start-up (process start -> 1st stage)", result["startup_s"], "s", "<= 8 s",
                             f"exit {result['status']}"))  # fmt: skip
            rows.append(_row("orchestration + tracking overhead", result["overhead_pct"], "%", "<= 5 %",
                             f"{result['overhead_s']} s of the flow; run {result['total_s']:.1f} s wall, "
                             f"CPU {result['cpu_s']:.1f} s"))  # fmt: skip
    print(f"bench_cli ({os.cpu_count()} cores; wall times are noisy on a shared machine)")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
