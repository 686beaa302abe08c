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

# exec: the server becomes PID 1, so `docker stop` / Kubernetes' SIGTERM reaches uvicorn
# directly and it drains (stops accepting, finishes requests, flushes the batch queues).
exec normserve serve --host 0.0.0.0 --port "${NORMSERVE_PORT:-8000}" "$@"
