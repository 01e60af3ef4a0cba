"""End to end against real servers: serve the deployments, start four runs of one config at once from the REST API
as the UI does (each stage trains once, the others wait on its lock and reuse it), check MLflow through its REST API, then drop a preference file and see ingestion trigger a
retraining run. Prints what it measured (time to trigger, run time, events seen).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from e2e_stack import ManagedProcess, Stack, start_process, stop_process, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

PIPELINE = ("rlhf-pipeline", "rlhf-pipeline")  # flow name, deployment name
WATCHER = ("watch-preference-folder", "watch-preference-folder")
STAGES = ("sft", "reward", "dpo", "ppo")
RUN_TIMEOUT = 720.0
CONCURRENT_RUNS = 4  # issue 13: four runs of one config started at once from the UI all complete
# Credentials the served process holds (MLflow basic auth, a hub token): none may reach logs, params or tags.
CANARIES = {
    "MLFLOW_TRACKING_USERNAME": "e2e-user",
    "MLFLOW_TRACKING_PASSWORD": "pw-canary-7f3a",
    "HF_TOKEN": "hf_canary9c1d",
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

NEW_PAIRS = [
    {
        "prompt": f"Name {n} colours.",
        "chosen": ", ".join(["red", "blue", "green", "pink"][:n]),
        "rejected": "seven",
    }
    for n in (1, 2, 3, 4)
] + [
    {
        "prompt": f"Name {n} animals.",
        "chosen": ", ".join(["cat", "dog", "cow", "owl"][:n]),
        "rejected": "a table",
    }
    for n in (1, 2, 3, 4)
]

# Few steps everywhere: the point is the plumbing, not the learning (the pipeline's own tests cover that).
TINY_CONFIG = {
    "name": "e2e",
    "data": {
        "sft": {"source": "synthetic", "num_examples": 16},
        "preference": {"source": "synthetic", "num_examples": 16},
        "ppo": {"source": "synthetic", "num_examples": 16},
        "eval": {"source": "synthetic", "num_examples": 4, "split": "heldout"},
    },
    "stages": {
        "sft": {
            "args": {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "max_length": 64}
        },
        "reward": {
            "args": {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "max_length": 64}
        },
        "dpo": {
            "args": {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "max_length": 64}
        },
        "ppo": {"args": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "response_length": 8}},
    },
    "evaluation": {"max_new_tokens": 8, "num_samples": 2, "batch_size": 4},
    # No model logging: the checkpoints are not what this test checks, and uploading them costs seconds per stage.
    "tracking": {"experiment_name": "e2e", "registered_model_name": "e2e-policy", "log_models": False},
}


def api(stack: Stack, method: str, path: str, **kwargs) -> httpx.Response:
    """One Prefect REST call; 503 (SQLite busy) is retried as Prefect's own client does."""
    for attempt in range(10):
        response = httpx.request(method, stack.prefect_api + path, timeout=30.0, **kwargs)
        if response.status_code not in (429, 503) or attempt == 9:
            break
        time.sleep(1.0 + attempt)
    response.raise_for_status()
    return response


def mlflow_api(stack: Stack, method: str, path: str, **kwargs) -> dict:
    response = httpx.request(method, f"{stack.mlflow_uri}/api/2.0/mlflow{path}", timeout=30.0, **kwargs)
    response.raise_for_status()
    return response.json()


def deployment(stack: Stack, names: tuple[str, str]) -> dict | None:
    response = httpx.get(f"{stack.prefect_api}/deployments/name/{names[0]}/{names[1]}", timeout=10.0)
    return response.json() if response.status_code == 200 else None


def flow_run(stack: Stack, run_id: str) -> dict:
    return api(stack, "GET", f"/flow_runs/{run_id}").json()


def flow_runs(stack: Stack, deployment_id: str, *, states: tuple[str, ...] = ()) -> list[dict]:
    body: dict = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "sort": "EXPECTED_START_TIME_DESC",
        "limit": 200,
    }
    if states:  # an interval schedule keeps future runs SCHEDULED: filter them out server-side
        body["flow_runs"] = {"state": {"type": {"any_": list(states)}}}
    return api(stack, "POST", "/flow_runs/filter", json=body).json()


def events(stack: Stack, name: str, since: str) -> list[dict]:
    body = {"filter": {"event": {"name": [name]}, "occurred": {"since": since}}, "limit": 50}
    return api(stack, "POST", "/events/filter", json=body).json()["events"]


def listening_addresses(procs: list[ManagedProcess]) -> set[str]:
    pids = set()
    for proc in procs:
        try:
            root = psutil.Process(proc.popen.pid)
            pids |= {root.pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.NoSuchProcess:
            continue
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def mlflow_runs(stack: Stack, experiment: str) -> tuple[list[dict], dict[str, dict[str, str]]]:
    found = mlflow_api(stack, "GET", "/experiments/get-by-name", params={"experiment_name": experiment})
    body = {"experiment_ids": [found["experiment"]["experiment_id"]], "max_results": 500}
    runs = mlflow_api(stack, "POST", "/runs/search", json=body).get("runs", [])
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs}
    return runs, tags


@pytest.fixture
def served(stack: Stack, tmp_path: Path):
    """`rlhf serve` on the tiny config, with a watched inbox; stopped (with its flow runs) at teardown."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    env = {**stack.env, "PREFECT_RUNNER_POLL_FREQUENCY": "2", **CANARIES}
    # `python -m deployments.cli` is the `rlhf` console script's target (the same code, whatever the venv holds).
    cmd = [
        sys.executable, "-m", "deployments.cli", "serve", str(config),
        "--watch-folder", str(inbox), "--watch-interval", "5", "--store-dir", str(store),
    ]  # fmt: skip
    proc = start_process("rlhf-serve", cmd, env=env, log_dir=tmp_path, cwd=tmp_path)
    try:
        yield {"proc": proc, "inbox": inbox, "store": store, "output": tmp_path / "outputs"}
    finally:
        stop_process(proc)


def _check_concurrent_runs(stack: Stack, runs: list[dict], output: Path) -> None:
    """Every run has its own parent run and stage runs; each stage folder was trained by one run only."""
    mlruns, tags = mlflow_runs(stack, "e2e")
    trained = {stage: 0 for stage in STAGES}
    for run in runs:
        parents = [r for r in mlruns if tags[r["info"]["run_id"]].get("prefect.flow_run_id") == run["id"]]
        assert len(parents) == 1, f"one parent run per flow run {run['id']}: {tags}"
        parent = parents[0]
        parent_id = parent["info"]["run_id"]
        assert parent["info"]["status"] == "FINISHED"
        assert {m["key"] for m in parent["data"]["metrics"]} >= {"pipeline_wall_seconds"}
        children = [r for r in mlruns if tags[r["info"]["run_id"]].get("mlflow.parentRunId") == parent_id]
        by_stage = {tags[c["info"]["run_id"]].get("rlhf.stage"): c for c in children}
        for stage in STAGES:
            child = by_stage.get(stage)
            if child is None:  # Prefect's task cache answered: the parent says from which run
                assert f"rlhf.{stage}.cached_from_run" in tags[parent_id], (stage, tags[parent_id])
                continue
            child_tags = tags[child["info"]["run_id"]]
            assert child["info"]["status"] == "FINISHED"
            assert child["data"].get("metrics"), f"stage {stage} has no metrics"
            files = mlflow_api(
                stack, "GET", "/artifacts/list", params={"run_id": child["info"]["run_id"], "path": "samples"}
            ).get("files", [])
            assert {Path(f["path"]).name for f in files} >= {"before.json", "after.json"}, files
            trained[stage] += "rlhf.reused_checkpoint" not in child_tags
    # The same config at once: one run trains each stage folder, the others wait and reuse it (no overwrite).
    assert trained == {stage: 1 for stage in STAGES}, trained
    finals = sorted(p.parent.name.split("-")[0] for p in (output / "stages").glob("*/final"))
    assert finals == sorted(STAGES), finals


def _assert_no_secret_leaked(stack: Stack, runs: list[dict], served_log: str) -> None:
    secrets = [CANARIES["MLFLOW_TRACKING_PASSWORD"], CANARIES["HF_TOKEN"]]
    logs = api(stack, "POST", "/logs/filter",
               json={"logs": {"flow_run_id": {"any_": [r["id"] for r in runs]}}, "limit": 200}).json()  # fmt: skip
    assert len(logs) > 10, "no flow-run logs to check"
    artifacts = api(stack, "POST", "/artifacts/filter", json={}).json()
    mlruns, _ = mlflow_runs(stack, "e2e")
    configs = [
        httpx.get(f"{stack.mlflow_uri}/get-artifact", params={"path": "pipeline_config.json", "run_uuid": r["info"]["run_id"]},
                  timeout=30).text
        for r in mlruns if "mlflow.parentRunId" not in {t["key"] for t in r["data"].get("tags", [])}
    ]  # fmt: skip
    haystacks = {
        "Prefect flow-run logs": json.dumps([entry["message"] for entry in logs]),
        "Prefect artifacts": json.dumps(artifacts),
        "MLflow params and tags": json.dumps([r["data"] for r in mlruns]),
        "MLflow pipeline_config.json": json.dumps(configs),
        "the served process output": served_log,
    }
    assert any('"stages"' in c for c in configs), configs[:1]
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {where}"


def test_ui_runs_mlflow_structure_then_ingestion_retrains(stack: Stack, served):
    procs = (*stack.processes, served["proc"])
    started = time.monotonic()
    pipeline = wait_until(
        lambda: deployment(stack, PIPELINE), timeout=240, what="the served deployment", procs=procs
    )
    time_to_serve = time.monotonic() - started
    assert "config" in pipeline["parameter_openapi_schema"]["properties"], "no parameter form"
    assert pipeline["enforce_parameter_schema"]

    # --- four runs from the UI at once: the form's values, one field edited ------------------------------
    parameters = {"config": {**TINY_CONFIG, "name": "e2e-from-ui"}}
    posted = time.monotonic()
    runs = [
        api(
            stack, "POST", f"/deployments/{pipeline['id']}/create_flow_run", json={"parameters": parameters}
        ).json()
        for _ in range(CONCURRENT_RUNS)
    ]
    wait_until(
        lambda: flow_run(stack, runs[0]["id"])["state_type"] != "SCHEDULED",
        timeout=120,
        what="the runner to pick the run up",
        procs=procs,
        interval=0.2,
    )
    time_to_trigger = time.monotonic() - posted
    finals = [
        wait_until(
            lambda r=r: (s := flow_run(stack, r["id"]))["state_type"] in TERMINAL and s,
            timeout=RUN_TIMEOUT,
            what="the pipeline runs to finish",
            procs=procs,
            interval=1.0,
        )
        for r in runs
    ]
    run_time = time.monotonic() - posted - time_to_trigger
    for final in finals:
        assert final["state_type"] == "COMPLETED", f"{final['state']}\n{served['proc'].log_tail(8000)}"
        assert final["parameters"]["config"]["name"] == "e2e-from-ui"
    _check_concurrent_runs(stack, runs, served["output"])
    _assert_no_secret_leaked(stack, runs, served["proc"].log_tail(10**9))

    # --- new preference data: the watcher ingests it, the event fires, the trigger starts a retraining ----
    since = datetime.now(timezone.utc).isoformat()
    dropped = time.monotonic()
    new_file = served["inbox"] / "batch-1.jsonl"
    new_file.write_text("".join(json.dumps(r) + "\n" for r in NEW_PAIRS))
    old = time.time() - 30  # a finished copy, not one in progress
    os.utime(new_file, (old, old))
    seen = wait_until(
        lambda: events(stack, "preference-data.arrived", since),
        timeout=120,
        what="the preference-data.arrived event",
        procs=procs,
    )
    time_to_event = time.monotonic() - dropped
    payload = seen[0]["payload"]
    assert Path(payload["uri"]).is_file() and payload["rows"] == len(NEW_PAIRS)
    assert Path(payload["uri"]).parent.parent == served["store"]

    def retraining_runs():
        return [r for r in flow_runs(stack, pipeline["id"]) if r["id"] not in {run["id"] for run in runs}]

    retrain = wait_until(retraining_runs, timeout=60, what="the retraining flow run", procs=procs)
    time_to_retrain = time.monotonic() - dropped
    assert len(retrain) == 1
    retrain_config = retrain[0]["parameters"]["config"]
    assert retrain_config["data"]["preference"] == {"source": "file", "path": payload["uri"]}
    assert retrain_config["name"] == f"e2e-data-{payload['version']}"
    assert retrain_config["stages"] == pipeline["parameters"]["config"]["stages"]
    # The flow accepted those parameters (a bad config would fail the run at once, naming the key).
    wait_until(
        lambda: flow_run(stack, retrain[0]["id"])["state_type"] in {"RUNNING", "COMPLETED"},
        timeout=120,
        what="the retraining run to start",
        procs=procs,
    )

    # --- the same content again under another name: no new version, no event, no second retraining --------
    watcher = deployment(stack, WATCHER)
    ticks_before = len(flow_runs(stack, watcher["id"], states=("COMPLETED",)))
    copy = served["inbox"] / "batch-1-copy.jsonl"
    copy.write_text(new_file.read_text())
    os.utime(copy, (old, old))
    wait_until(
        lambda: len(flow_runs(stack, watcher["id"], states=("COMPLETED",))) > ticks_before + 1,
        timeout=180,
        what="two watcher ticks after the copy",
        procs=procs,
    )
    all_events = events(stack, "preference-data.arrived", since)
    assert len(all_events) == 1, all_events
    assert len(retraining_runs()) == 1
    assert [p.name for p in served["store"].iterdir() if not p.name.startswith(".")] == [payload["version"]]

    # --- nothing listens beyond 127.0.0.1 --------------------------------------------------------------------
    addresses = listening_addresses(list(procs))
    assert addresses and addresses <= {"127.0.0.1"}, addresses

    print(
        f"\nE2E measured: serve -> deployment registered {time_to_serve:.1f} s; time to trigger (REST "
        f"create_flow_run -> runner picked the run up) {time_to_trigger:.1f} s; {CONCURRENT_RUNS} concurrent tiny pipeline runs "
        f"{run_time:.1f} s; file dropped -> preference-data.arrived {time_to_event:.1f} s -> retraining flow run "
        f"created {time_to_retrain:.1f} s; events seen: {len(all_events)} preference-data.arrived (version "
        f"{payload['version']}, {payload['rows']} rows) for 2 drops of the same content; retraining runs: "
        f"{len(retraining_runs())}",
        file=sys.stderr,
    )


def test_prefect_yaml_deploys_to_a_work_pool_whose_worker_runs_the_flows(stack: Stack, tmp_path: Path):
    """`prefect deploy` of deployments/prefect.yaml, then a process worker executes a run from the pool."""
    root = Path(__file__).resolve().parents[2]
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    api(stack, "POST", "/work_pools/", json={"name": "rlhf", "type": "process"})
    # prefect.yaml also holds the Kubernetes deployment: its pool is created from the shipped base job template,
    # so the server checks that template too (no Kubernetes worker runs here).
    k8s_template = json.loads((root / "deployments" / "k8s" / "work-pool-template.json").read_text())
    created = api(
        stack,
        "POST",
        "/work_pools/",
        json={"name": "rlhf-k8s", "type": "kubernetes", "base_job_template": k8s_template},
    )
    assert created.status_code == 201, created.text
    env = {**stack.env, "RLHF_WATCH_FOLDER": str(inbox), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    deploy = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all",
         "--prefect-file", str(root / "deployments" / "prefect.yaml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    pipeline = deployment(stack, PIPELINE)
    assert (pipeline["work_pool_name"], pipeline["work_queue_name"]) == ("rlhf", "default")
    assert deployment(stack, ("rlhf-pipeline", "rlhf-pipeline-gpu"))["work_queue_name"] == "gpu"
    assert deployment(stack, ("rlhf-pipeline", "rlhf-pipeline-k8s"))["work_pool_name"] == "rlhf-k8s"
    (schedule,) = pipeline["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * 1" and schedule["active"] is False
    automations = api(stack, "POST", "/automations/filter", json={}).json()
    retrain = [a for a in automations if any(x.get("deployment_id") == pipeline["id"] for x in a["actions"])]
    assert len(retrain) == 1 and retrain[0]["trigger"]["expect"] == ["preference-data.arrived"]
    assert deployment(stack, WATCHER)["parameters"] == {"folder": str(inbox)}

    worker = start_process(
        "prefect-worker",
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "rlhf", "--work-queue", "default"],
        env=env, log_dir=tmp_path, cwd=tmp_path,
    )  # fmt: skip
    try:
        ingest = deployment(stack, ("ingest-preferences", "ingest-preferences"))
        data = tmp_path / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in NEW_PAIRS[:4]))
        since = datetime.now(timezone.utc).isoformat()
        run = api(stack, "POST", f"/deployments/{ingest['id']}/create_flow_run",
                  json={"parameters": {"path_or_uri": str(data), "store_dir": str(store)}}).json()  # fmt: skip
        final = wait_until(lambda: (s := flow_run(stack, run["id"]))["state_type"] in TERMINAL and s, timeout=240,
                           what="the worker to run the ingestion", procs=(*stack.processes, worker))  # fmt: skip
        assert final["state_type"] == "COMPLETED", worker.log_tail()
        (event,) = wait_until(lambda: events(stack, "preference-data.arrived", since), timeout=60,
                              what="the event from the worker's run", procs=(worker,))  # fmt: skip
        assert Path(event["payload"]["uri"]).parent.parent == store
        # prefect.yaml's trigger (templated in YAML) starts the pipeline on the new version, in the pool.
        retraining = wait_until(
            lambda: [r for r in flow_runs(stack, pipeline["id"]) if r["created"] >= since], timeout=60,
            what="the retraining run from prefect.yaml's trigger", procs=(worker,),
        )  # fmt: skip
        config = retraining[0]["parameters"]["config"]
        assert config["data"]["preference"] == {"source": "file", "path": event["payload"]["uri"]}
        assert retraining[0]["work_queue_name"] == "default"
    finally:
        stop_process(worker)
