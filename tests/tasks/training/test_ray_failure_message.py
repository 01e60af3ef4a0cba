"""The stage error of a failed Ray Train job leads with the worker that failed, not its peers (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

from scale_out_helpers import stage_spec

from tasks.training.ray_job import _describe_failure


class _WorkerGroupError(Exception):
    def __init__(self, failures):
        super().__init__("Training failed")
        self.worker_failures = failures


class WorkerHealthCheckFailedError(Exception):
    pass


def test_a_killed_rank_is_named_before_the_peer_whose_collective_broke(tmp_path: Path):
    # What CI saw: rank 1 was killed; rank 0 failed inside gloo a moment later and came first by rank order.
    spec = stage_spec("sft", tmp_path, tmp_path / "stage", 4)
    failures = {
        0: RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:7331."),
        1: WorkerHealthCheckFailedError("A worker health check failed."),
    }
    message = _describe_failure(_WorkerGroupError(failures), spec)
    assert message.startswith(
        "stage sft: Ray Train worker failed: worker rank 1: WorkerHealthCheckFailedError"
    )
    assert message.index("worker rank 1") < message.index("worker rank 0: RuntimeError")


def test_a_dead_worker_leads_whatever_its_peer_reports(tmp_path: Path):
    # A peer's error in words no symptom list knows (a gloo timeout) still comes after the worker that died.
    spec = stage_spec("sft", tmp_path, tmp_path / "stage", 4)
    failures = {
        0: RuntimeError("[gloo] Timed out waiting 1800000ms for recv operation to complete"),
        1: WorkerHealthCheckFailedError("A worker health check failed."),
        2: RuntimeError("[gloo] Write error [127.0.0.1]:5511: Broken pipe"),
    }
    message = _describe_failure(_WorkerGroupError(failures), spec)
    ranks = [message.index(f"worker rank {rank}") for rank in (1, 0, 2)]
    assert message.startswith("stage sft: Ray Train worker failed: worker rank 1: ")
    assert ranks == sorted(ranks)


def test_independent_failures_keep_rank_order(tmp_path: Path):
    spec = stage_spec("dpo", tmp_path, tmp_path / "stage", 4)
    failures = {1: ValueError("bad batch"), 0: MemoryError("out of memory")}
    message = _describe_failure(_WorkerGroupError(failures), spec)
    assert message == (
        "stage dpo: Ray Train worker failed: worker rank 0: MemoryError: out of memory; "
        "worker rank 1: ValueError: bad batch"
    )


def test_no_worker_failures_gives_the_job_error(tmp_path: Path):
    spec = stage_spec("sft", tmp_path, tmp_path / "stage", 4)
    message = _describe_failure(RuntimeError("placement group timed out\nno nodes"), spec)
    assert message == "stage sft: Ray Train job failed: no nodes"
