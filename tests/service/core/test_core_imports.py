"""The protocol-neutral packages of the service (the core, models, batching, Triton's
extensions) import nothing of a transport: not ``http/`` or ``grpc/``, not Starlette, FastAPI
or grpc. Read from the source (AST), so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[3] / "service"
NEUTRAL = ("core", "models", "batching", "extensions")
#: Absolute module prefixes no neutral module may import.
FORBIDDEN = ("starlette", "fastapi", "uvicorn", "grpc", "normserve.service.http",
             "normserve.service.grpc", "normserve.service.app", "normserve.service.server")


def _imported(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, as an absolute name (relative imports resolved)."""
    package = ("normserve.service." + ".".join(path.relative_to(SERVICE).parent.parts)).rstrip(".")
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from .. import http`` names the package in the alias
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            out.append((node.lineno, module))
    return out


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


MODULES = sorted(p for sub in NEUTRAL for p in (SERVICE / sub).rglob("*.py"))


def test_the_neutral_packages_exist() -> None:
    assert {p.parent.name for p in MODULES} == set(NEUTRAL)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SERVICE)))
def test_a_neutral_module_imports_no_transport(path: Path) -> None:
    bad = [f"line {line}: {module}" for line, module in _imported(path) if _forbidden(module)]
    assert not bad, f"{path.relative_to(SERVICE)} imports a transport: {bad}"


def test_the_check_sees_a_transport_import(tmp_path: Path) -> None:
    """The walk resolves relative imports: ``from ..http import codec`` in core/ is caught."""
    fake = SERVICE / "core" / "_probe.py"
    source = "from ..http import codec\nfrom starlette.requests import Request\n"
    tree_modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            tree_modules.append(node)
    # Resolve as _imported would for a file at core/_probe.py, without writing into service/.
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    resolved = [m for _, m in _imported_as(probe, fake)]
    assert "normserve.service.http.codec" in resolved and "starlette.requests" in resolved
    assert all(_forbidden(m) for m in ("normserve.service.http", "starlette.requests"))


def _imported_as(source: Path, located: Path) -> list[tuple[int, str]]:
    """``_imported`` of ``source``'s text as if it sat at ``located``."""
    original = located.read_text if located.exists() else None
    assert original is None
    text = source.read_text()

    class _At(type(located)):  # a Path reading the probe's text
        def read_text(self, *args: object, **kwargs: object) -> str:
            return text

    return _imported(_At(located))
