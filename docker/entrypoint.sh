#!/bin/sh
# Container entrypoint: serve the repository mounted at $NORMSERVE_MODEL_REPOSITORY (/models)
# when there is one, else the built-in demo repository. Extra arguments (the image's CMD or
# `docker run IMAGE ...`) go to `normserve serve` after ours, so they win (argparse: last one).
set -eu

repo="${NORMSERVE_MODEL_REPOSITORY:-/models}"
if [ -d "$repo" ] && [ -n "$(ls -A "$repo" 2>/dev/null)" ]; then
    set -- --model-repository "$repo" "$@"
else
    echo "entrypoint: nothing mounted at $repo; serving the built-in demo repository" >&2
fi

# Numba sizes its thread pool from the host's cores, not the container's CPU limit: read the
# CFS quota (cgroup v2, else v1) and size the pool to it, unless the user set it.
cpu_quota() {
    if [ -r /sys/fs/cgroup/cpu.max ]; then
        cat /sys/fs/cgroup/cpu.max
    elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
        echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
    fi
}
if [ -z "${NUMBA_NUM_THREADS:-}" ]; then
    read -r quota period <<EOF_QUOTA || true
$(cpu_quota)
EOF_QUOTA
    if [ -n "${quota:-}" ] && [ "$quota" != max ] && [ "$quota" -gt 0 ]; then
        n=$(( (quota + period - 1) / period ))
        [ "$n" -gt "$(nproc)" ] && n=$(nproc)
        export NUMBA_NUM_THREADS="$n"
    fi
fi

# exec: the server becomes PID 1, so `docker stop` / Kubernetes' SIGTERM reaches uvicorn
# directly and it drains (stops accepting, finishes requests, flushes the batch queues).
exec normserve serve --host 0.0.0.0 --port "${NORMSERVE_PORT:-8000}" \
    --grpc-port "${NORMSERVE_GRPC_PORT:-8001}" "$@"
