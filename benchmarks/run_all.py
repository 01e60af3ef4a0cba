"""Run every side-by-side benchmark in turn (`make bench`). Numbers are printed, never asserted.

Each benchmark spawns its own fresh processes; run this on a quiet machine (other load moves wall time).
The PPO benchmark needs TRL 1.12 (the last release with a PPO trainer) in its own folder; it is installed there
with --no-deps when missing, so it never replaces the TRL of the `bench` extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL112 = Path("/tmp/trl112")

BENCHMARKS: list[list[str]] = [
    ["bench_kernels.py", "--ops", "logprobs,cross_entropy"],
    ["bench_sft.py"],
    ["bench_reward.py"],
    ["bench_dpo.py"],
    ["bench_kto.py"],
    ["bench_rollout.py"],
    ["bench_ppo.py", "--trl-path", str(TRL112)],
]


def _ensure_trl112() -> None:
    if (TRL112 / "trl").is_dir():
        return
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(TRL112),
            "trl==1.12.0",
        ],
        check=True,
    )


def main() -> int:
    _ensure_trl112()
    failed = []
    for script, *args in BENCHMARKS:
        print(f"\n===== {script} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *args]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nbenchmarks that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
