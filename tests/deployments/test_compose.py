"""docker-compose.yml, read as data (no Docker engine here): services, ports, health checks, start order,
volumes, secrets, and the files it builds from or mounts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"postgres", "redis", "prefect-server", "prefect-services", "mlflow", "worker", "worker-gpu"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_stack_has_its_services(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["prefect-server"]["command"][:3] == ["prefect", "server", "start"]
    assert services["prefect-services"]["command"] == ["prefect", "server", "services", "start"]
    assert services["worker"]["build"]["target"] == "worker"
    assert services["mlflow"]["build"]["target"] == "mlflow-server"
    assert services["worker-gpu"]["profiles"] == ["gpu"]  # not started unless asked for


def _published(service: dict) -> list[str]:
    return [
        p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p['published']}:{p['target']}"
        for p in service.get("ports", [])
    ]


def test_every_published_port_is_bound_to_localhost(compose):
    published = {name: _published(s) for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"prefect-server", "mlflow"}  # the database and broker stay internal
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond 127.0.0.1"
    assert published["prefect-server"] == ["127.0.0.1:${PREFECT_PORT:-4200}:4200"]
    assert published["mlflow"] == ["127.0.0.1:${MLFLOW_PORT:-5000}:5000"]


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies(compose):
    services = compose["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
        assert check["interval"] and check["retries"] >= 3
    expected = {
        "prefect-server": {"postgres", "redis"},
        "prefect-services": {"prefect-server", "redis"},
        "mlflow": {"postgres"},
        "worker": {"prefect-server", "prefect-services", "mlflow"},
        "worker-gpu": {"prefect-server", "prefect-services", "mlflow"},
    }
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs, name
        assert all(d["condition"] == "service_healthy" for d in depends.values()), name


def test_health_checks_probe_the_real_endpoints(compose):
    services = compose["services"]
    assert "/api/health" in services["prefect-server"]["healthcheck"]["test"][-1]
    assert "/health" in services["mlflow"]["healthcheck"]["test"][-1]
    assert "8080/health" in services["worker"]["healthcheck"]["test"][-1]  # prefect worker --with-healthcheck
    postgres = services["postgres"]["healthcheck"]["test"][-1]
    assert "-d prefect" in postgres and "-d mlflow" in postgres  # both databases created
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_named_volumes_hold_the_state(compose):
    assert set(compose["volumes"]) == {"postgres-data", "mlflow-artifacts", "rlhf-data"}
    mounts = {name: s.get("volumes", []) for name, s in compose["services"].items()}
    assert "postgres-data:/var/lib/postgresql/data" in mounts["postgres"]
    assert "mlflow-artifacts:/mlartifacts" in mounts["mlflow"]
    assert "rlhf-data:/data" in mounts["worker"] and "rlhf-data:/data" in mounts["worker-gpu"]
    init = next(m for m in mounts["postgres"] if "docker-entrypoint-initdb.d" in m)
    assert (ROOT / init.split(":")[0]).is_file()


def test_services_are_wired_to_each_other(compose):
    services = compose["services"]
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")
    # API and services in two processes: what they share must not be in-memory
    assert server_env["PREFECT_MESSAGING_BROKER"] == "prefect_redis.messaging"
    assert server_env["PREFECT_SERVER_EVENTS_CAUSAL_ORDERING"] == "prefect_redis.ordering"
    assert server_env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "prefect_redis.lease_storage"
    assert server_env["PREFECT_SERVER_DOCKET_URL"].startswith("redis://redis:6379")
    assert services["prefect-services"]["environment"] == server_env
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlartifacts"
    assert "mlflow:5000" in mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")  # the worker's Host header
    for worker in ("worker", "worker-gpu"):
        env = services[worker]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["worker"]["command"] == ["--work-queue", "default"]
    assert services["worker-gpu"]["command"] == ["--work-queue", "gpu"]


def test_no_secret_is_written_in_the_file():
    text = (ROOT / "docker-compose.yml").read_text()
    # Every password comes from the environment and must be set (`:?`), none has a default value.
    for variable in ("POSTGRES_PASSWORD", "PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD"):
        uses = re.findall(r"(?<!\$)\$\{" + variable + r"([^}]*)\}", text)  # $${...}: container-side
        assert uses and all(u.startswith(":?") for u in uses), (variable, uses)
    assert not re.search(r"://\w+:(?!\$\{)[^@\s]+@", text), "a literal password in a connection URL"
    example = (ROOT / "docker" / "env.example").read_text()
    for variable in ("POSTGRES_PASSWORD", "PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD"):
        assert re.search(rf"^{variable}=change-me", example, re.M), variable


def test_built_and_mounted_files_exist_and_scripts_parse():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM .* AS worker$", dockerfile, re.M)
    assert re.search(r"^FROM .* AS mlflow-server$", dockerfile, re.M)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    for copied in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies missing {copied}"
    for script in ("docker/postgres/init-databases.sh", "docker/worker-entrypoint.sh"):
        path = ROOT / script
        assert path.stat().st_mode & 0o111, f"{script} is not executable"
        subprocess.run(["sh", "-n", str(path)], check=True)  # syntax check
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".env", "mlflow.db"} <= set(ignored)
