"""docs/transformer-block.md runs as written: its ``python`` and ``bash`` blocks, in order,
from an empty folder, the Python blocks sharing one namespace (as a user's session would) and
the shell blocks running in bash with ``normserve`` on the PATH. The one change: the page's
ports (8000, 8001) become free ones, so that the test cannot meet another server. A Python
block ending in ``# ...`` lines prints exactly those lines; a shell block's closing ``# ...``
lines, joined with their indents dropped, are its last line of output. The server the page
starts in the background is stopped at the end (its whole process group, workers
included)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from service_helpers import free_port

DOC = Path(__file__).resolve().parents[1] / "docs" / "transformer-block.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
RUNS = ("python", "bash")


def doc_blocks() -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in BLOCK.findall(DOC.read_text()) if lang in RUNS]


def expected_output(code: str) -> list[str]:
    """The ``# `` lines closing a Python block: what it prints."""
    lines = code.rstrip("\n").splitlines()
    tail: list[str] = []
    while lines and lines[-1].startswith("# "):
        tail.insert(0, lines.pop()[2:])
    return tail


def _stop_group(pgid: int, timeout: float = 30) -> None:
    """SIGTERM a process group (a server and its workers), SIGKILL what outlives it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # raises once no process of the group is left
            time.sleep(0.1)
        os.killpg(pgid, signal.SIGKILL)


def test_the_page_has_the_steps():
    langs = [lang for lang, _ in doc_blocks()]
    assert langs.count("bash") == 2 and langs.count("python") >= 7
    text = DOC.read_text()
    for needle in ("--ort-fused", "save_model", "InferRequestedOutput", "residual_out=",
                   "GemmaRMSNorm", "LlamaRMSNorm", "normserve serve"):
        assert needle in text


def test_every_block_runs_as_written(tmp_path, monkeypatch):
    for module in ("torch", "onnxruntime", "ml_dtypes", "tritonclient.http",
                   "tritonclient.grpc"):
        pytest.importorskip(module)
    ports = {"8000": str(free_port()), "8001": str(free_port())}
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    namespace: dict = {"__name__": "transformer_block_doc"}
    groups: list[int] = []
    try:
        for i, (lang, code) in enumerate(doc_blocks()):
            for port, free in ports.items():
                code = code.replace(port, free)
            where = f"{DOC.name}, block {i} ({lang})"
            if lang == "python":
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    exec(compile(code, where, "exec"), namespace)
                want = expected_output(code)
                if want:
                    assert printed.getvalue().splitlines() == want, where
                continue
            log_path = tmp_path / f"block-{i}.log"
            with open(log_path, "w") as log:
                # A file, not a pipe: the server the block leaves running keeps it open.
                proc = subprocess.Popen(["bash", "-e", "-c", code], cwd=tmp_path, env=env,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                groups.append(proc.pid)
                try:
                    rc = proc.wait(timeout=240)
                except subprocess.TimeoutExpired:
                    rc = None
            serve_log = tmp_path / "serve.log"
            assert rc == 0, (f"{where} exited {rc}:\n{log_path.read_text()}\n"
                             f"{serve_log.read_text() if serve_log.exists() else ''}")
            want = expected_output(code)
            if want:
                last = log_path.read_text().splitlines()[-1]
                assert last == "".join(line.strip() for line in want), where
    finally:
        for pgid in groups:
            _stop_group(pgid)
    assert (tmp_path / "models" / "gemma_block_norm" / "config.json").is_file()
    assert (tmp_path / "llama_block_norm_ort.onnx").is_file()
