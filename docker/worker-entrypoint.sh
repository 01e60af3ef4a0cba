#!/bin/sh
# Worker container: make sure the work pool exists, (re)register the deployments from
# deployments/prefect.yaml, then poll the pool. Every flow run executes as a subprocess of this worker.
set -eu

pool="${RLHF_WORK_POOL:-rlhf}"  # the pool named in deployments/prefect.yaml

# The worker would create the pool too, but `prefect deploy` needs it first.
prefect work-pool inspect "$pool" >/dev/null 2>&1 \
  || prefect work-pool create "$pool" --type process

if [ "${RLHF_DEPLOY_ON_START:-true}" = "true" ]; then
  prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
fi

exec prefect worker start --pool "$pool" --type process --with-healthcheck "$@"
