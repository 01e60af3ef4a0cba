"""The MLflow server (a real `mlflow server` process) stops while a stage trains: training goes on to its last
step and writes its checkpoints; the metrics logged meanwhile reach the server once it is back, or the stage fails
naming the server (password masked) when it never comes back."""

from __future__ import annotations

import time

import mlflow
import pytest
from e2e_stack import BIN, STARTUP_TIMEOUT, base_env, free_port, start_process, stop_process, wait_until
from mlflow.tracking import MlflowClient
from transformers import TrainerCallback

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.trainers.sft.config import SFTConfig
from rlhf_core.trainers.sft.trainer import SFTTrainer
from tasks.tracking import buffered_logging
from tasks.tracking.check import TrackingServerUnreachable
from tasks.tracking.runs import stage_run, synchronous_mlflow_callback

STEPS = 6


class MLflowServer:
    """`mlflow server` on 127.0.0.1 with its store in ``root``; stopped and started again on the same port."""

    def __init__(self, root) -> None:
        self.root, self.port, self.proc = root, free_port(), None

    def start(self) -> None:
        cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
               "--artifacts-destination", str(self.root / "artifacts")]  # fmt: skip
        self.proc = start_process(
            "mlflow-server", cmd, env=base_env(self.root), log_dir=self.root, cwd=self.root
        )
        wait_until(self.answers, timeout=STARTUP_TIMEOUT, what="mlflow server", procs=(self.proc,))

    def answers(self) -> bool:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0).status_code == 200

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MLflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        stop_process(server.proc)
        mlflow.set_tracking_uri(None)


class AtStep(TrainerCallback):
    """Run ``actions[step]`` after that optimizer step, before the step's metrics are logged."""

    def __init__(self, actions) -> None:
        self.actions = actions

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.actions:
            self.actions[state.global_step]()


def _train(tmp_path, uri: str, actions) -> tuple[SFTTrainer, str]:
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    parent = client.create_run(client.create_experiment(f"stops-{time.time_ns()}")).info.run_id
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=STEPS, per_device_train_batch_size=4, max_length=48,
                     logging_steps=1, save_steps=2, disable_tqdm=True, report_to="none")  # fmt: skip
    trainer = SFTTrainer(load_causal_lm("rlhf-tiny"), args=args, train_dataset=SyntheticTask(0).sft_dataset(24),
                         processing_class=load_tokenizer("rlhf-tiny"), callbacks=[AtStep(actions)])  # fmt: skip
    trainer.add_callback(synchronous_mlflow_callback())
    with stage_run(parent, "sft") as run_id:
        trainer.train()
    return trainer, run_id


def _checkpoints(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "sft").glob("checkpoint-*"))


def test_metrics_logged_while_the_server_was_away_arrive_once_it_is_back(tmp_path, server, monkeypatch):
    monkeypatch.setattr(buffered_logging, "RETRY_SECONDS", 0.0)
    trainer, run_id = _train(tmp_path, f"http://127.0.0.1:{server.port}", {2: server.stop, 4: server.start})
    assert trainer.state.global_step == STEPS
    history = MlflowClient().get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # steps 2 and 3 were kept, then sent
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_the_stage_fails_naming_the_server_when_it_never_comes_back(tmp_path, server, monkeypatch):
    monkeypatch.setenv("RLHF_TRACKING_RECOVERY_SECONDS", "2")
    monkeypatch.setattr(buffered_logging, "RETRY_SECONDS", 0.0)
    uri = f"http://rlhf:hunter2@127.0.0.1:{server.port}"
    start = time.perf_counter()
    with pytest.raises(TrackingServerUnreachable) as err:
        _train(tmp_path, uri, {2: server.stop})
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert f"http://rlhf:***@127.0.0.1:{server.port}" in message and "hunter2" not in message
    assert f"Training went on to step {STEPS}" in message and "at step 2" in message
    assert _checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert mlflow.active_run() is None
    print(f"failed {elapsed:.1f} s after training started")
    assert elapsed < 120, "MLflow's minutes of retries per call were not avoided"
