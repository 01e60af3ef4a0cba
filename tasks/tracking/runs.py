"""Every MLflow call of the pipeline: the parent run, one nested run per stage, and what each stage logs.

- The tracking store comes from ``MLFLOW_TRACKING_URI``; without it, ``sqlite:///mlflow.db`` in the working folder.
- The parent run is created through the client (never put on the fluent active-run stack), and each stage opens
  its own run with that parent's id passed explicitly, so nothing depends on which thread Prefect runs a task in
  (the fluent stack is per thread).
- Runs are context-managed: an exception marks the run FAILED (KILLED on Ctrl-C) and is re-raised; nothing is
  left RUNNING (mlflow#13874).
- The transformers ``MLflowCallback`` logs step metrics into the stage run because that run is active when
  ``train()`` starts; `callback_environment` makes sure the callback neither starts a nested run of its own,
  nor resumes another run (``MLFLOW_RUN_ID``), nor uploads every checkpoint (``HF_MLFLOW_LOG_ARTIFACTS``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from tasks.tracking.check import TrackingServerUnreachable
from tasks.tracking.environment import environment
from tasks.tracking.local_store import seed_sqlite_store

if TYPE_CHECKING:
    from tasks.tracking.ghosts import GhostReport

__all__ = [
    "DEFAULT_TRACKING_URI",
    "attached_run",
    "callback_environment",
    "configure_tracking",
    "doctor",
    "log_checkpoint_model",
    "log_dataset",
    "log_dict",
    "log_metrics",
    "log_samples",
    "parent_run",
    "prepare_local_store",
    "run_url",
    "set_tags",
    "stage_run",
    "synchronous_mlflow_callback",
    "ui_command",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_FILE = Path(__file__).with_name("checkpoint_model.py")
_PIP_REQUIREMENTS = ("mlflow", "torch", "transformers", "safetensors", "tokenizers")


def configure_tracking() -> str:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` or the local default (made absolute so child processes agree)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    seed_sqlite_store(uri)  # a new local store: a copied empty schema instead of seconds of migrations
    mlflow.set_tracking_uri(uri)
    return uri


def prepare_local_store() -> None:
    """Create the local SQLite store's tables now (seconds on first use) when no tracking server is configured;
    the CLI runs this alongside its other start-up work. A server is left alone (the flow checks it)."""
    uri = configure_tracking()
    if uri.startswith("sqlite:"):
        MlflowClient().search_experiments(max_results=1)


def ui_command(uri: str) -> str:
    """How to look at the runs: ``mlflow ui`` on a local store, the server's address otherwise."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        shown = DEFAULT_TRACKING_URI if db == Path.cwd() / "mlflow.db" else uri
        return f"mlflow ui --backend-store-uri {shown}"
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


def run_url(run_id: str) -> str:
    """A link to the run: the server's page, or a ``mlflow ui`` address for a local store."""
    client = MlflowClient()
    run = client.get_run(run_id)
    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


# MLflow 3's UI opens an experiment without this tag in its GenAI overview (traces, empty here); the classic
# kind opens on the training runs and their charts. A kind the user set on the experiment is kept.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def _experiment_id(name: str) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment = client.get_experiment(client.create_experiment(name))
        except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
            experiment = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def _logger():
    """The Prefect run logger inside a flow or task run (shown in the UI's Logs tab), else this module's."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run: no context
        import logging

        return logging.getLogger(__name__)


def _status_for(exc: BaseException) -> str:
    killed = isinstance(exc, KeyboardInterrupt | SystemExit)
    return RunStatus.to_string(RunStatus.KILLED if killed else RunStatus.FAILED)


@contextlib.contextmanager
def parent_run(experiment_name: str, run_name: str, tags: Mapping[str, str]) -> Iterator[str]:
    """Create the pipeline's parent run and yield its id; FINISHED on success, FAILED/KILLED on an exception.

    First, the runs of the same config (``tags["rlhf.config_digest"]``) that a dead process left RUNNING are
    marked FAILED (`tasks.tracking.ghosts`); the new run records this process as its owner for the next check.
    """
    from tasks.tracking.ghosts import mark_ghost_runs, owner_tags

    client = MlflowClient()
    experiment_id = _experiment_id(experiment_name)
    digest = tags.get("rlhf.config_digest")
    if digest:
        found_by = (
            f"start-up of pipeline run {run_name!r} (flow run {tags.get('prefect.flow_run_id') or '-'})"
        )
        for line in mark_ghost_runs([experiment_name], config_digest=digest, found_by=found_by).lines():
            _logger().warning("MLflow: %s", line)
    run = client.create_run(experiment_id, run_name=run_name, tags={**owner_tags(), **tags})
    run_id = run.info.run_id
    try:
        yield run_id
    except TrackingServerUnreachable:
        raise  # nothing can be marked on a server that is gone; the next run of the config marks it a ghost
    except BaseException as exc:
        client.set_tag(run_id, "rlhf.error", str(exc)[:4000] or type(exc).__name__)
        client.set_terminated(run_id, _status_for(exc))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


@contextlib.contextmanager
def callback_environment() -> Iterator[None]:
    """Environment under which transformers' MLflowCallback logs into the already-active run and nothing else."""
    # MLFLOW_RUN_ID removed: the callback (and start_run) would resume that run instead.
    wanted = {"MLFLOW_NESTED_RUN": "FALSE", "HF_MLFLOW_LOG_ARTIFACTS": "FALSE", "MLFLOW_FLATTEN_PARAMS": "TRUE",
              "MLFLOW_RUN_ID": None}  # fmt: skip
    with environment(wanted):
        yield


@contextlib.contextmanager
def attached_run(run_id: str, tracking_uri: str | None = None) -> Iterator[None]:
    """Make an existing run active in this process (rank 0 of a launched stage), so the trainer's MLflow callback
    logs into it. Leaving marks it FINISHED (FAILED on an error); the pipeline's process then logs the model and
    samples into it and sets the stage's final status itself."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with callback_environment(), mlflow.start_run(run_id=run_id):
        try:
            yield
        finally:
            mlflow.flush_async_logging()


@contextlib.contextmanager
def stage_run(parent_run_id: str, stage: str, *, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Open ``stage``'s run nested under ``parent_run_id`` and make it active in this thread; yield its id."""
    parent = MlflowClient().get_run(parent_run_id)
    with callback_environment():
        run = mlflow.start_run(
            experiment_id=parent.info.experiment_id,
            run_name=stage,
            parent_run_id=parent_run_id,
            nested=mlflow.active_run() is not None,
            tags={"rlhf.stage": stage, **(tags or {})},
        )
        try:
            yield run.info.run_id
        except TrackingServerUnreachable:
            # Nothing can be marked on a server that is gone (the next run marks this one a ghost); end_run takes
            # the run off this thread's stack before it fails to reach the server.
            with contextlib.suppress(Exception):
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            raise
        except BaseException as exc:
            mlflow.set_tag("rlhf.error", str(exc)[:4000] or type(exc).__name__)
            mlflow.flush_async_logging()
            mlflow.end_run(_status_for(exc))
            raise
        mlflow.flush_async_logging()
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def synchronous_mlflow_callback() -> Any:
    """transformers' `MLflowCallback` (what ``report_to=["mlflow"]`` installs), logging synchronously.

    Its asynchronous mode starts a logging thread that polls its queue once a second, and closing a run waits
    for it: about 2 s per stage (flush, then end), measured, against a few milliseconds for the handful of
    synchronous metric writes a stage makes. A tracking server that stops answering does not stop training:
    see `tasks.tracking.buffered_logging`.
    """
    from transformers.integrations import MLflowCallback

    from tasks.tracking.buffered_logging import BufferedLogging

    class SynchronousMLflowCallback(MLflowCallback):
        def __init__(self) -> None:
            super().__init__()
            self._ml_flow = BufferedLogging(self._ml_flow)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            super().on_train_end(args, state, control, **kwargs)
            self._ml_flow.finish(args.output_dir, state.global_step)

    return SynchronousMLflowCallback()


def log_metrics(run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
    """Log metrics to any run by id (the parent's evaluation metrics, from whichever thread)."""
    now = get_current_time_millis()
    entries = [Metric(key, float(value), now, step) for key, value in metrics.items() if value is not None]
    MlflowClient().log_batch(run_id, metrics=entries)


def log_dict(data: Mapping[str, Any], artifact_file: str, *, run_id: str | None = None) -> None:
    """A JSON/YAML artifact in the active run, or in ``run_id``."""
    if run_id is None:
        mlflow.log_dict(dict(data), artifact_file)
    else:
        MlflowClient().log_dict(run_id, dict(data), artifact_file)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


SCHEMA_ROWS = 256  # rows the logged dataset schema is inferred from


def log_dataset(path: str, *, name: str, digest: str, context: str) -> None:
    """``log_input`` of a prepared dataset folder (content digest, schema, row count) to the active run."""
    import warnings

    from datasets import load_from_disk
    from mlflow.models import infer_signature

    rows = load_from_disk(path)
    with (
        warnings.catch_warnings()
    ):  # "source can be interpreted in multiple ways": two local-file source classes
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_huggingface(rows, name=name, digest=digest[:32], source=path)
    # MLflow infers the schema from the first 10,000 rows (0.44 s for the default SFT data, ~1 s of a 20 s
    # pipeline over its nine datasets); an Arrow dataset's columns have one type each, so a few rows give the
    # same schema (checked in tests/tasks/tracking).
    dataset.__dict__["schema"] = infer_signature(
        next(rows.to_pandas(batch_size=SCHEMA_ROWS, batched=True))
    ).inputs
    mlflow.log_input(dataset, context=context)


def log_samples(rows: Sequence[Mapping[str, Any]], name: str) -> str:
    """A table of sample generations (``samples/<name>.json``) in the active run; returns the artifact path."""
    import pandas as pd

    artifact = f"samples/{name}.json"
    mlflow.log_table(pd.DataFrame(list(rows)), artifact_file=artifact)
    return artifact


def log_checkpoint_model(checkpoint_dir: str, *, kind: str, max_new_tokens: int = 64) -> str:
    """Log the checkpoint folder once as an MLflow pyfunc model (explicit requirements); returns its model URI."""
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_FILE),
        artifacts={"checkpoint": checkpoint_dir},
        model_config={"kind": kind, "max_new_tokens": max_new_tokens},
        pip_requirements=[_requirement(p) for p in _PIP_REQUIREMENTS],
    )
    return info.model_uri


def _requirement(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(package)
    except PackageNotFoundError:
        return package
    return f"{package}=={installed.split('+')[0]}"  # no local build tag (+cpu, +cu121): pip cannot install it


def doctor(experiment_names: Iterable[str] | None = None) -> GhostReport:
    """``rlhf doctor``: sweep the configured tracking store (every experiment, or the named ones) for ghost runs
    (`tasks.tracking.ghosts`; it lives here so that ghosts never imports this module back)."""
    import getpass

    from tasks.tracking.ghosts import mark_ghost_runs

    configure_tracking()
    return mark_ghost_runs(
        experiment_names, found_by=f"rlhf doctor ({getpass.getuser()}@{socket.gethostname()})"
    )
