"""The protocol-neutral packages of the service (the core, models, batching, Triton's
extensions) import nothing of a transport: not ``http/`` or ``grpc/``, not Starlette, FastAPI,
uvicorn or grpc. Read from the source (AST), so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[3] / "service"
NEUTRAL = ("core", "models", "batching", "extensions")
#: Module names (and everything under them) no neutral module may import.
FORBIDDEN = ("starlette", "fastapi", "uvicorn", "grpc", "normserve.service.http",
             "normserve.service.grpc", "normserve.service.app", "normserve.service.server")
MODULES = sorted(p for sub in NEUTRAL for p in (SERVICE / sub).rglob("*.py"))


def imported(source: str, package: str) -> list[tuple[int, str]]:
    """Every module (and ``from`` name) a module of ``package`` imports, as absolute names."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_the_neutral_packages_are_all_walked() -> None:
    assert {p.relative_to(SERVICE).parts[0] for p in MODULES} == set(NEUTRAL)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SERVICE)))
def test_a_neutral_module_imports_no_transport(path: Path) -> None:
    package = ".".join(("normserve", "service", *path.relative_to(SERVICE).parent.parts))
    bad = [f"line {line}: {module}" for line, module in imported(path.read_text(), package)
           if forbidden(module)]
    assert not bad, f"{path.relative_to(SERVICE)} imports a transport: {bad}"


@pytest.mark.parametrize("source", ["from ..http import codec", "from ..grpc.codec import x",
                                    "import starlette.requests", "from fastapi import FastAPI",
                                    "def f():\n    from ...service.http.body import read_body"])
def test_the_walk_catches_a_transport_import(source: str) -> None:
    """Relative imports are resolved against the module's package, nested ones are seen."""
    assert any(forbidden(m) for _, m in imported(source, "normserve.service.core"))
