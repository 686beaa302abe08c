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

# The server sizes its workers and each one's Numba pool itself, from the CPUs it may use
# (affinity and the cgroup CPU quota: `--workers auto`, service/cpus.py).

# A read-only root filesystem: the first writable scratch place, $TMPDIR, /tmp (a tmpfs or
# emptyDir in hardened deployments; podman --read-only mounts one) or /dev/shm (Docker mounts one
# even with --read-only). Several workers need one for the folder they agree in, so TMPDIR
# points there when /tmp is not writable.
scratch=
for dir in "${TMPDIR:-/tmp}" /tmp /dev/shm; do
    if [ -d "$dir" ] && [ -w "$dir" ]; then scratch=$dir; break; fi
done
if [ -n "$scratch" ] && [ -z "${TMPDIR:-}" ] && [ "$scratch" != /tmp ]; then
    export TMPDIR="$scratch"
fi

# Numba uses a cache directory only where it can write (it checks by creating a file there): the
# image's cache, compiled at build time, would be ignored under a read-only root and every kernel
# compiled at each start (~20 s). Copy it (~2 MB, milliseconds) to the scratch place instead.
cache="${NUMBA_CACHE_DIR:-}"
if [ -n "$cache" ] && [ -d "$cache" ] && ! [ -w "$cache" ]; then
    copy="$scratch/normserve-numba-cache"
    if [ -n "$scratch" ] && mkdir -p "$copy" 2>/dev/null && cp -R "$cache/." "$copy/" 2>/dev/null
    then
        echo "entrypoint: $cache is read-only; its compiled kernels copied to $copy" >&2
        export NUMBA_CACHE_DIR="$copy"
    else
        echo "entrypoint: $cache is read-only and no writable /tmp or /dev/shm to copy it to:" \
             "the kernels compile at start (mount a tmpfs at /tmp for a start in seconds)" >&2
    fi
fi

# exec: the server becomes PID 1, so `docker stop` / Kubernetes' SIGTERM reaches uvicorn
# directly and it drains (stops accepting, finishes requests, flushes the batch queues).
exec normserve serve --host 0.0.0.0 --port "${NORMSERVE_PORT:-8000}" \
    --grpc-port "${NORMSERVE_GRPC_PORT:-8001}" "$@"
