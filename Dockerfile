# syntax=docker/dockerfile:1
# Two images from one file (docker-compose.yml picks them by target):
#   worker         the project installed (CPU torch by default) + Prefect worker entry point
#   mlflow-server  MLflow with the PostgreSQL driver (the upstream image has none)
#
# GPU worker: build with a CUDA torch wheel index, e.g.
#   docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 worker
# (or use the `worker-gpu` service: `docker compose --profile gpu up`). The CUDA wheels bring their own CUDA
# runtime; the host needs the NVIDIA driver and the NVIDIA Container Toolkit.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS mlflow-server
ARG MLFLOW_VERSION=3.17.2
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg2-binary>=2.9,<3" \
    && useradd --create-home --uid 10001 mlflow \
    && mkdir -p /mlartifacts && chown mlflow /mlartifacts
USER mlflow
EXPOSE 5000
# Options come from the environment (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, ...) so no
# credentials appear on the command line.
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--serve-artifacts"]


FROM python:${PYTHON_VERSION}-slim AS worker
# CPU wheels by default; see the header for CUDA.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC="torch==2.13.0"
# Extras of the project, e.g. "[ray]" for the images of the Kubernetes deployment (deployments/k8s/).
ARG INSTALL_EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    RLHF_CACHE=/data/cache \
    RLHF_DATASET_STORE=/data/datasets/preferences \
    RLHF_WATCH_FOLDER=/data/inbox \
    HF_HOME=/data/hf
# torch first, from the chosen index, so that installing the project does not pull another build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

WORKDIR /app
# Dependencies change less often than code: install them in their own layer.
COPY pyproject.toml README.md ./
RUN mkdir -p rlhf_core tasks flows deployments \
    && touch rlhf_core/__init__.py tasks/__init__.py flows/__init__.py deployments/__init__.py \
    && pip install ".${INSTALL_EXTRAS}" && pip uninstall -y rlhf-toolkit && rm -rf rlhf_core tasks flows deployments build
COPY rlhf_core ./rlhf_core
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
COPY configs ./configs
COPY docker/worker-entrypoint.sh /usr/local/bin/rlhf-worker
# Editable install: flow entry points (flows/pipeline.py:...) are read from /app, the deployments' working
# directory, and the `rlhf` command comes from the same code. Runs write `outputs/` (relative to /app):
# a link to the data volume keeps checkpoints across containers.
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 rlhf \
    && mkdir -p /data/cache /data/datasets /data/inbox /data/hf /data/outputs /data/prefect \
    && ln -s /data/outputs /app/outputs \
    && chown -R rlhf /data /app
USER rlhf
VOLUME ["/data"]
ENTRYPOINT ["rlhf-worker"]
