#!/bin/sh
# What the mambaserve-triton container runs (deploy/Dockerfile.triton CMD, docker-compose.yml): tritonserver
# as `make serve` runs it — explicit model control with every model loaded, the model-repository,
# shared-memory, logging and trace APIs restricted to the admin key, the watchdog beside it — minus the
# CPU-only flags of the launcher (the pip wheel's backend/cache directories, --allow-gpu-metrics=false,
# --pinned-memory-pool-byte-size=0). tests/deploy/test_compose.py runs this very script against the
# real tritonserver on a CPU machine.
#
# The admin key comes from MAMBASERVE_ADMIN_KEY (compose: env_file deploy/admin.env) or the file named
# by MAMBASERVE_ADMIN_KEY_FILE; without a usable key the container refuses to start. Extra arguments
# are passed to tritonserver.
set -eu

KEY="$(python3 -m mambaserve.serving.admin_key --no-create)"

# After `exec`, tritonserver has this shell's PID ($$): the watchdog watches exactly that process.
python3 -m mambaserve.serving.watchdog --http-url "127.0.0.1:${HTTP_PORT:-8000}" --server-pid $$ &

exec tritonserver \
    "--model-repository=${MODEL_REPOSITORY:-/models}" \
    "--http-port=${HTTP_PORT:-8000}" \
    "--grpc-port=${GRPC_PORT:-8001}" \
    "--metrics-port=${METRICS_PORT:-8002}" \
    --metrics-config=summary_latencies=true \
    --strict-readiness=true \
    --exit-on-error=true \
    --log-verbose=0 \
    "--http-restricted-api=model-repository,shared-memory,logging,trace:x-admin-key=$KEY" \
    "--grpc-restricted-protocol=model-repository,shared-memory,logging,trace:x-admin-key=$KEY" \
    --model-control-mode=explicit \
    "--load-model=*" \
    "$@"
