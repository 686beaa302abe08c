"""The private parts of uvicorn that ``service/http/connections.py`` subclasses and reads are
still there, as that module uses them. uvicorn makes no promise about them (pyproject.toml
bounds its version to the minor tested): when an upgrade changes one, this fails naming it,
instead of connections losing their deadlines or their bound at run time."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http import h11_impl, httptools_impl
from uvicorn.server import ServerState

from normserve.service.http import connections

PROTOCOLS = {"httptools": httptools_impl.HttpToolsProtocol, "h11": h11_impl.H11Protocol}
#: The methods connections.py overrides (and calls through super()), per protocol.
METHODS = {
    "httptools": ("connection_made", "connection_lost", "data_received", "on_message_begin",
                  "on_headers_complete", "on_message_complete", "on_response_complete",
                  "handle_websocket_upgrade"),
    "h11": ("connection_made", "connection_lost", "data_received", "on_response_complete",
            "handle_websocket_upgrade"),
}
#: What connections.py reads from a protocol once uvicorn's __init__ has run.
INSTANCE = {"httptools": ("loop", "connections", "server_state", "cycle", "pipeline"),
            "h11": ("loop", "connections", "server_state", "cycle", "conn")}
#: What connections.py reads and sets on a request's cycle.
CYCLE = ("response_started", "response_complete", "disconnected", "waiting_for_100_continue",
         "message_event", "transport")


def _broken(what: str) -> str:
    return (f"uvicorn {uvicorn.__version__}: {what}. service/http/connections.py depends on "
            "it: adapt that module, then move the uvicorn bound in pyproject.toml")


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_the_protocol_methods_connections_override_exist(kind: str) -> None:
    cls = PROTOCOLS[kind]
    for name in METHODS[kind]:
        assert callable(getattr(cls, name, None)), _broken(f"{cls.__name__}.{name} is gone")
    upgrade = inspect.signature(cls.handle_websocket_upgrade).parameters
    want = ["self"] if kind == "httptools" else ["self", "event"]
    assert list(upgrade) == want, _broken(f"{cls.__name__}.handle_websocket_upgrade takes "
                                          f"{list(upgrade)}, not {want}")


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_the_protocol_state_connections_read_is_set_by_init(kind: str) -> None:
    cls = PROTOCOLS[kind]
    config = Config(app=lambda scope, receive, send: None, http=kind)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = cls(config, ServerState(), {}, loop)
    finally:
        loop.close()
    for name in INSTANCE[kind]:
        assert hasattr(protocol, name), _broken(f"{cls.__name__}() sets no {name!r}")
    assert isinstance(protocol.server_state.default_headers, list), _broken(
        "ServerState.default_headers is not a list of (name, value) pairs")


@pytest.mark.parametrize("module", [httptools_impl, h11_impl], ids=["httptools", "h11"])
def test_the_request_cycle_state_connections_use_exists(module) -> None:
    source = inspect.getsource(module.RequestResponseCycle.__init__)
    for name in CYCLE:
        assert f"self.{name} =" in source, _broken(
            f"{module.__name__}.RequestResponseCycle no longer sets {name!r}")


def test_the_subclasses_are_built_on_these_protocols() -> None:
    assert issubclass(connections.HttpToolsConnection, httptools_impl.HttpToolsProtocol)
    assert issubclass(connections.H11Connection, h11_impl.H11Protocol)
    assert connections.HttpProtocol is connections.HttpToolsConnection
