"""``normserve`` command line: dispatches to the part that owns each subcommand."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, help). Each module exposes ``main(argv: list[str]) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("normserve.service.server",
              "serve a model repository over the KServe v2 protocol"),
    "export": ("normserve.export.cli",
               "export a model to ONNX with a parity report, or a Triton repository"),
    "bench": ("normserve.bench.kernels",
              "benchmark the kernels against NumPy, PyTorch and ONNX Runtime"),
}


def _usage() -> str:
    lines = ["usage: normserve {" + ",".join(COMMANDS) + "} [options]", "", "commands:"]
    lines += [f"  {name:<8} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    entry = COMMANDS.get(argv[0])
    if entry is None:
        print(f"normserve: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
