#!/usr/bin/env bash
# Build docker/Dockerfile with podman and smoke-test the image: readiness, one v2 inference checked
# against a float64 reference, a mounted repository, SIGTERM drain; prints timings and the size.
#
# No Docker engine and no container registry here, so: podman (Debian's), and a stand-in for
# docker.io/library/debian:bookworm-slim made with debootstrap from the apt mirror this host uses,
# so that the Dockerfile stays the standard one. Everything lives in one scratch directory (its
# own image store and containers.conf; nothing under /etc is touched) removed at the end.
#
# Exits 0 with "SKIP" when podman cannot be installed (not root, no apt). Env knobs:
#   PYTHON=.venv/bin/python  the project's venv (numpy, safetensors) for the HTTP checks
#   SMOKE_WORK=DIR           keep the scratch dir (and its base image) for the next run
#   SMOKE_SKIP=1             skip (exit 0)
#   SMOKE_READY_LIMIT_S=3    most seconds from `podman run` to ready with the image's cache, in
#                            every mode (the target is 2 s; the default allows a noisy host)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
READY_LIMIT=${SMOKE_READY_LIMIT_S:-3}
IMAGE=localhost/normserve:smoke
BASE_TAG=docker.io/library/debian:bookworm-slim
say() { echo "smoke: $*"; }
skip() { say "SKIP: $*"; exit 0; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ -z "${SMOKE_SKIP:-}" ] || skip "SMOKE_SKIP is set"

# --- tools ------------------------------------------------------------------------------------
if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
        || ! command -v debootstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || skip "podman, runc or debootstrap missing and not root to install them"
    command -v apt-get >/dev/null || skip "podman missing and no apt-get to install it"
    say "installing podman runc debootstrap"
    # With recommends: they bring the network backend (netavark/CNI, iptables) for -p.
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q podman runc debootstrap; } >/tmp/normserve-smoke-apt.log 2>&1 \
        || skip "apt-get could not install podman (log: /tmp/normserve-smoke-apt.log)"
fi
[ "$(id -u)" = 0 ] || skip "rootful podman is what was proven here; run as root"
[ -x "$PY" ] || { say "no project python at $PY (set PYTHON)"; exit 1; }

# --- scratch dir, podman configuration ---------------------------------------------------------
if [ -n "${SMOKE_WORK:-}" ]; then WORK=$SMOKE_WORK; mkdir -p "$WORK"; else
    WORK=$(mktemp -d /var/tmp/normserve-smoke.XXXXXX); fi
# runc: crun fails on this cgroup setup. ulimits: podman's defaults ask for more than the hard
# limits here, and raising an rlimit is not permitted, so ask for exactly what the host allows.
# cgroupfs and file events: there is no systemd/journald to talk to.
cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"
# Podman logs an error for every container with a HEALTHCHECK when it cannot reach systemd to
# schedule the checks; there is none here, and the check is run on demand below instead.
pm() {
    podman --root "$WORK/storage" --runroot "$WORK/run" "$@" \
        2> >(grep -v --line-buffered 'unable to get systemd connection' >&2)
}

cleanup() {
    local rc=$?
    pm rm -af -t 2 >/dev/null 2>&1 || true
    if [ -z "${SMOKE_WORK:-}" ]; then
        pm rmi -af >/dev/null 2>&1 || true
        rm -rf "$WORK" || say "could not remove $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

# --- stand-in base image -----------------------------------------------------------------------
if ! pm image exists "$BASE_TAG"; then
    t=$(now)
    mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
        || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; say "debootstrap failed"; exit 1; }
    # The host's CA bundle and local CAs (a TLS-inspecting proxy's among them): pip in the build
    # needs them, and update-ca-certificates in the build keeps /usr/local/share ones.
    mkdir -p "$WORK/rootfs/etc/ssl/certs" "$WORK/rootfs/usr/local/share/ca-certificates"
    cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/"
    cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/" \
        2>/dev/null || true
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | pm import -q - "$BASE_TAG" >/dev/null
    rm -rf "$WORK/rootfs"
    say "base image $BASE_TAG (debootstrap from $mirror): $(since "$t") s"
fi

# --- build -------------------------------------------------------------------------------------
t=$(now)
# --format docker: the OCI image format has no HEALTHCHECK. --pull=never: the base is the local
# stand-in (no registry is reachable).
pm build --format docker --pull=never -f docker/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; say "FAIL: podman build"; exit 1; }
build_s=$(since "$t")
size_mb=$(pm image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f", $1 / 1e6 }')
grep -h "warm_cache:" "$WORK/build.log" | tail -1 || true
say "build: $build_s s, image size: $size_mb MB"

# --- run ---------------------------------------------------------------------------------------
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
GRPC_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fail() { say "FAIL: $*"; pm logs "$name" 2>&1 | tail -30 || true; exit 1; }
# start NAME [podman run options]: run detached, wait for readiness, set ready_s
start() {
    name=$1; shift
    local t0; t0=$(now)
    pm run -d --name "$name" -p "127.0.0.1:$PORT:8000" -p "127.0.0.1:$GRPC_PORT:8001" "$@" \
        "$IMAGE" >/dev/null
    "$PY" docker/smoke_client.py ready "$URL" 120 || fail "$name: not ready"
    ready_s=$(since "$t0")
}

# within LIMIT S: the start that just ran was ready within the limit
within() { awk -v a="$ready_s" -v b="$READY_LIMIT" 'BEGIN { exit !(a <= b) }'; }
# The log is read whole before grep: `grep -q` stops at the first match, and under pipefail
# the SIGPIPE that gives `podman logs` would fail the check although the line is there.
logged() { local log; log=$(pm logs "$name" 2>&1); grep -q -- "$1" <<<"$log"; }

start ns-warm
warm_s=$ready_s
say "run -> ready, warm Numba cache (as built): $warm_s s"
within || fail "ready after $warm_s s, more than $READY_LIMIT s"
logged "every kernel loaded from Numba's cache" || fail "kernels compiled at start"
# --workers auto: one worker per CPU the container may use, Numba's threads split among them.
cpus=$(pm exec ns-warm python -c 'import os; print(len(os.sched_getaffinity(0)))')
logged "INFO normserve: $cpus worker(s) x 1 kernel thread(s)" \
    || fail "not $cpus workers x 1 thread for $cpus CPUs"
say "--workers auto: $cpus worker(s) x 1 kernel thread on $cpus CPU(s)"
"$PY" docker/smoke_client.py infer "$URL" service/demo_repository/layer_norm_1024 \
    || fail "inference"
"$PY" docker/smoke_client.py grpc "127.0.0.1:$GRPC_PORT" service/demo_repository/layer_norm_1024 \
    || fail "gRPC health or inference"
# The build-time cache was used, not rebuilt: the cache files are exactly as the image has them.
# shellcheck disable=SC2016  # expanded inside the container
listing='find "$NUMBA_CACHE_DIR" -type f -printf "%P %s %T@\n" | sort'
[ "$(pm exec ns-warm sh -c "$listing")" = "$(pm run --rm --entrypoint sh "$IMAGE" -c "$listing")" ] \
    || fail "the warm start recompiled kernels: the image's Numba cache was not used"
[ "$(pm exec ns-warm id -u)" = 10001 ] || fail "server does not run as uid 10001"
pm healthcheck run ns-warm >/dev/null || fail "HEALTHCHECK is not healthy"
pm exec ns-warm python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is not None)' \
    || fail "torch is installed in the image"
# SIGTERM: uvicorn drains and exits 0; podman would SIGKILL after its 10 s stop timeout instead.
t=$(now)
pm kill --signal TERM ns-warm >/dev/null
code=$(timeout 15 podman --root "$WORK/storage" --runroot "$WORK/run" wait ns-warm) \
    || fail "still running 15 s after SIGTERM"
stop_s=$(since "$t")
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
logged "Application shutdown complete" || fail "no drained shutdown in logs"
say "SIGTERM -> exited 0 after draining: $stop_s s"
pm rm ns-warm >/dev/null

# Cold: an empty cache directory, so every kernel compiles at start (what the build saves).
start ns-cold -e NUMBA_CACHE_DIR=/tmp/numba-cold
cold_s=$ready_s
say "run -> ready, cold Numba cache: $cold_s s"
pm rm -f -t 2 ns-cold >/dev/null

# read_only NAME SCRATCH [podman run options]: a read-only root filesystem (hardened
# deployments). Numba cannot use the image's cache where it is, so the entrypoint copies it to
# the writable SCRATCH; the start must be as fast as the warm one, kernels loaded, not compiled.
read_only() {
    local what=$1 scratch=$2; shift 2
    start "$what" --read-only "$@"
    "$PY" docker/smoke_client.py infer "$URL" service/demo_repository/layer_norm_1024 \
        || fail "$what: inference"
    within || fail "$what: ready after $ready_s s, more than $READY_LIMIT s"
    logged "copied to $scratch/normserve-numba-cache" || fail "$what: cache not copied to $scratch"
    logged "every kernel loaded from Numba's cache" || fail "$what: kernels compiled at start"
}

# podman's --read-only mounts a tmpfs at /tmp (Kubernetes: an emptyDir); a CPU quota of 1 gives
# one worker with one thread.
read_only ns-ro /tmp --cpus 1
ro_s=$ready_s
logged "INFO normserve: 1 worker(s) x 1 kernel thread(s)" \
    || fail "--cpus 1: not one worker with one kernel thread"
say "read-only root filesystem, --cpus 1: ready in $ro_s s (the image's cache, copied to /tmp)"
pm rm -f -t 2 ns-ro >/dev/null

# No tmpfs at /tmp (docker run --read-only mounts none): /dev/shm holds the cache's copy and the
# workers' runtime folder (TMPDIR).
read_only ns-ro-shm /dev/shm --read-only-tmpfs=false
ro_shm_s=$ready_s
say "read-only root filesystem, no /tmp: ready in $ro_shm_s s (the image's cache, in /dev/shm)"
pm rm -f -t 2 ns-ro-shm >/dev/null

# A repository mounted at /models replaces the demo repository.
mkdir -p "$WORK/models"
cp -r service/demo_repository/layer_norm_1024 "$WORK/models/"
chmod -R a+rX "$WORK/models"
start ns-mount -v "$WORK/models:/models:ro"
[ "$("$PY" docker/smoke_client.py status "$URL/v2/models/layer_norm_1024/ready")" = 200 ] \
    || fail "mounted model not served"
[ "$("$PY" docker/smoke_client.py status "$URL/v2/models/rms_norm_512")" = 404 ] \
    || fail "demo models served although /models is mounted"
"$PY" docker/smoke_client.py infer "$URL" "$WORK/models/layer_norm_1024" || fail "inference"
say "mounted /models: served instead of the demo repository (ready in $ready_s s)"
pm rm -f -t 2 ns-mount >/dev/null

echo
echo "smoke: image $size_mb MB | build $build_s s | run->ready warm $warm_s s, cold $cold_s s," \
     "read-only $ro_s s, read-only without /tmp $ro_shm_s s (limit $READY_LIMIT s)" \
     "| SIGTERM->exit $stop_s s"
