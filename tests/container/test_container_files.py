"""The container and deployment files, checked statically in seconds (the image itself is built
and run by docker/smoke.sh): hadolint on the Dockerfiles, the Kubernetes manifests against the
bundled API schemas (offline), the compose file and the KServe examples for their essentials."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
K8S_VERSION = "1.30.0"  # oldest API level the manifests promise to fit


def _tool(name: str) -> str:
    """A console script of the venv running the tests, else one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# --- Dockerfiles -------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    run = subprocess.run([_tool("hadolint"), "--failure-threshold", "info", str(dockerfile)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_essentials(dockerfile: Path) -> None:
    ins = _instructions(dockerfile)
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    runtime = ins[max(i for i, (word, _) in enumerate(ins) if word == "FROM"):]
    words = {word for word, _ in runtime}
    assert {"USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT"} <= words
    user = [args for word, args in runtime if word == "USER"][-1]
    assert user not in ("root", "0"), "the server must not run as root"
    assert [args for word, args in runtime if word == "EXPOSE"] == ["8000 8001"]  # HTTP, gRPC
    health = next(args for word, args in runtime if word == "HEALTHCHECK")
    assert "healthcheck.py" in health
    assert "/v2/health/ready" in (DOCKER / "healthcheck.py").read_text()
    entry = next(args for word, args in runtime if word == "ENTRYPOINT")
    assert entry.startswith("["), "exec form, so SIGTERM reaches the server (PID 1)"
    env = " ".join(args for word, args in runtime if word == "ENV")
    assert "NUMBA_CACHE_DIR=" in env
    assert any("warm_cache.py" in args for word, args in runtime if word == "RUN"), \
        "the Numba cache is compiled at build time"


def test_cpu_image_installs_no_extras() -> None:
    """torch is a bench/test extra only, and numba-cuda belongs to the CUDA image."""
    runs = " ".join(a for w, a in _instructions(DOCKER / "Dockerfile") if w == "RUN")
    installs = re.findall(r"pip install ([^&;]*)", runs)
    assert installs and all("[" not in i and "torch" not in i for i in installs), installs
    assert "[cuda]" in " ".join(a for w, a in _instructions(DOCKER / "Dockerfile.cuda")
                                if w == "RUN")


def test_dockerfile_base_is_debian_bookworm() -> None:
    froms = [a for w, a in _instructions(DOCKER / "Dockerfile") if w == "FROM"]
    assert all(f.split()[0] == "debian:bookworm-slim" for f in froms), froms


def test_entrypoint_serves_models_or_demo() -> None:
    script = (DOCKER / "entrypoint.sh")
    assert os.access(script, os.X_OK), "COPY keeps the mode: the script must be executable"
    text = script.read_text()
    assert "exec normserve serve" in text and "--host 0.0.0.0" in text
    assert '--grpc-port "${NORMSERVE_GRPC_PORT:-8001}"' in text
    assert "/models" in text and "--model-repository" in text
    run = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_dockerignore_keeps_context_small() -> None:
    lines = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "tests"} <= lines
    for needed in ("pyproject.toml", "kernels", "export", "service", "docker/entrypoint.sh"):
        assert needed not in lines


# --- compose -----------------------------------------------------------------------------------

def test_compose_file_essentials() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    svc = compose["services"]["normserve"]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile"
    assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    assert any(str(p).endswith(":8001") for p in svc["ports"])
    assert any(str(v).split(":")[1] == "/models" for v in svc["volumes"])
    assert "stop_grace_period" in svc


# --- Kubernetes --------------------------------------------------------------------------------

def test_kubernetes_manifests_validate_offline() -> None:
    files = sorted(K8S.glob("*.yaml"))
    run = subprocess.run([_tool("kubernetes-validate"), "--strict", "--quiet",
                          "-k", K8S_VERSION, *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    kinds = {d["kind"] for f in files for d in _docs(f)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds


def _kube() -> dict[str, dict]:
    return {d["kind"]: d for f in sorted(K8S.glob("*.yaml")) for d in _docs(f)}


def test_deployment_probes_and_resources() -> None:
    kube = _kube()
    pod = kube["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    # Readiness through grpc.health.v1 on the gRPC port; liveness and start-up over HTTP.
    assert c["readinessProbe"]["grpc"]["port"] == 8001
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {(p["name"], p["containerPort"]) for p in c["ports"]} == {("http", 8000),
                                                                     ("grpc", 8001)}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Workers and Numba's threads follow the CPU limit, not the node's core count.
    cpus = next(e for e in c["env"] if e["name"] == "NORMSERVE_CPUS")
    assert cpus["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert "NUMBA_NUM_THREADS" not in {e["name"] for e in c["env"]}  # the server splits them
    assert c["args"][c["args"].index("--workers") + 1] == "auto"
    # A read-only root (issue 22), with a writable /tmp for the copy of Numba's cache.
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert any(v["name"] == tmp["name"] and "emptyDir" in v for v in pod["volumes"])
    # The HPA scales this Deployment and the Service selects its pods.
    assert kube["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == \
        kube["Deployment"]["metadata"]["name"]
    labels = kube["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kube["Service"]["spec"]["selector"].items() <= labels.items()
    ports = {p["name"] for p in c["ports"]}
    assert {p["targetPort"] for p in kube["Service"]["spec"]["ports"]} == ports


# --- KServe ------------------------------------------------------------------------------------

def test_kserve_custom_predictor() -> None:
    """No CRD schema ships offline, so the predictor's container is validated as a Pod's."""
    import kubernetes_validate

    (isvc,) = _docs(KSERVE / "inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    (c,) = predictor["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["ports"][0]["containerPort"] == 8000
    assert {e["name"]: e.get("value") for e in c["env"]}["NORMSERVE_MODEL_REPOSITORY"] == \
        "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {"containers": predictor["containers"]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_kserve_grpc_predictor() -> None:
    import kubernetes_validate

    (isvc,) = _docs(KSERVE / "inferenceservice-grpc.yaml")
    predictor = isvc["spec"]["predictor"]
    (c,) = predictor["containers"]
    # KServe routes the one port of a predictor container; named h2c, it is a gRPC route.
    assert c["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    assert c["readinessProbe"]["grpc"]["port"] == 8001
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {"containers": predictor["containers"]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_kserve_triton_alternative() -> None:
    (isvc,) = _docs(KSERVE / "inferenceservice-triton.yaml")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    assert model["protocolVersion"] == "v2" and model["storageUri"]
