"""HTTP connections under deadlines and a bound: uvicorn's protocols, subclassed.

uvicorn reads a request's line and headers with no deadline (its issue #157): a client that
opens a connection and never completes a request holds it forever, unseen by the ASGI app,
and nothing bounds how many such connections a server holds. Here, on every connection:

- **Headers**: the request line and headers must arrive within ``request_header_timeout``,
  counted from the connection's opening for its first request, and from the first byte of
  each later request on a kept-alive connection (idle time between requests stays governed
  by uvicorn's ``timeout_keep_alive``, as before).
- **Body**: once the headers are in, the body must arrive within ``request_timeout`` (the
  allowance ``body.read_body_within`` gives a body the app reads; here it also holds for one
  the app never reads, e.g. a GET with a Content-Length). The httptools protocol says so in
  each request's scope (``BODY_DEADLINE``), and the app then arms no timer of its own.
- Past a deadline, a connection on which nothing of a request arrived is closed; one with a
  partial request is answered ``408`` with ``{"error": "..."}`` naming what timed out, then
  closed. While an earlier response on the connection is still being produced (pipelining),
  the server is not reading the next request, so its deadline waits for that response.
- **Bound**: past ``max_connections`` open connections (per server process: with
  ``--workers N`` each worker counts its own), a new connection is answered ``503`` with a
  JSON error and ``Retry-After`` and closed; established connections are not touched.

- **One write per answer**: uvicorn writes a response's status line and headers, then its
  body, each with a ``send()`` of its own (and, with ``TCP_NODELAY``, a TCP segment of its
  own), a large share of the server's CPU under load (bench-results/notes.md). On
  httptools' connections the headers wait for the first body bytes and go out with them
  (``HeldHeaders``): one system call and one segment per answer.

Answers that close a connection use a lingering close (send, half-close, discard what the
client still sends for up to ``LINGER_S``, then close), so that a client still writing its
request reads the answer rather than a connection reset.

``HttpProtocol`` (httptools' parser, what uvicorn's "auto" picks; ``H11Connection`` is the h11
one) is what ``service/server.py`` passes to ``uvicorn.run(http=...)``. Limits come from
``Settings.from_env()`` once per process (the environment carries them to every worker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..core.errors import RETRY_AFTER_S
from ..settings import Settings

log = logging.getLogger("normserve.connections")

LINGER_S = 2.0  # how long a refused or timed-out connection may keep sending before the close
#: The ASGI scope extension these connections add to each request: its body is under their
#: deadline already, so the app need not arm a timer of its own per request.
BODY_DEADLINE = "normserve.body_deadline"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float  # request line + headers, seconds
    body_timeout: float  # body, seconds from the end of the headers
    max_connections: int  # open connections of this process


_limits: ConnectionLimits | None = None


def configure(settings: Settings) -> ConnectionLimits:
    """Use these settings' limits for connections made from now on in this process."""
    global _limits
    _limits = ConnectionLimits(settings.request_header_timeout, settings.request_timeout,
                               settings.max_connections)
    return _limits


def current_limits() -> ConnectionLimits:
    return _limits or configure(Settings.from_env())


class _Throttled:
    """At most one log line per ``every_s`` seconds, saying how many it stands for."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.last = -every_s
        self.skipped = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.skipped += 1
            return
        if self.skipped:
            message += f" (and {self.skipped} more in the {now - self.last:.0f} s before)"
        log.warning(message, *args)
        self.last = now
        self.skipped = 0


_refusals = _Throttled()
_timeouts = _Throttled()


def _response(status: bytes, message: str, default_headers: list[tuple[bytes, bytes]],
              extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": message})
    head = [b"HTTP/1.1 ", status, b"\r\n"]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
             b"\r\n", extra, b"connection: close\r\n\r\n", body]
    return b"".join(head)


#: Up to this size a body is joined to its held headers (one copy); larger ones go out with
#: them through ``writelines``, uncopied.
JOIN_BELOW = 64 << 10


class HeldHeaders:
    """The transport as one request's cycle sees it: the status line and headers (the first
    write after the response started) are held until the first body bytes and written with
    them, as Go's net/http does. Anything else passes through. uvicorn writes a body (maybe
    empty) for every response but a HEAD's, which is why those are not given one; an app
    that fails after starting its response gets its connection closed, headers flushed first.
    """

    __slots__ = ("cycle", "headers_done", "held", "transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self.transport = transport
        self.cycle = cycle
        self.held: bytes | None = None
        self.headers_done = False

    def write(self, data: bytes | memoryview) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if len(data) <= JOIN_BELOW:
                self.transport.write(held + data)
            else:
                self.transport.writelines((held, data))
        elif not self.headers_done and self.cycle.response_started:
            self.headers_done = True
            self.held = bytes(data)
        else:
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.write(held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)  # is_closing(), get_extra_info(), ...


class _Deadlines:
    """What both parsers' protocols add (mixed in before uvicorn's class).

    ``_phase`` says what the connection is waiting for: None (nothing of a request yet),
    "headers", "body", or "other" (a state where no answer can be written, e.g. an upgrade).
    A single timer per connection is armed at a time; moving a deadline later only records
    it, and the timer, when it fires early, re-arms itself for the remainder.
    """

    # set by uvicorn's __init__
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]
    server_state: Any
    cycle: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = current_limits()
        self._phase: str | None = None
        self._deadline_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lingering = False  # answered and half-closed: discard input, then close
        self._refused = False  # over the bound: answered 503 before uvicorn set anything up

    # -- the bound ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = self._limits.max_connections
        if len(self.connections) >= limit:
            self._refused = True
            self.transport = transport
            _refusals.warning("HTTP: refused a connection: %d open, the limit", limit)
            self._answer_and_close(_response(
                b"503 Service Unavailable",
                f"connections: the server has its limit of {limit} open connections; "
                "retry later", self.server_state.default_headers,
                b"retry-after: %d\r\n" % RETRY_AFTER_S))
            return
        super().connection_made(transport)  # type: ignore[misc]
        self._set_deadline(self._limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline_at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._refused:
            super().connection_lost(exc)  # type: ignore[misc]

    # -- the deadlines --------------------------------------------------------------------

    def _set_deadline(self, seconds: float) -> None:
        at = self.loop.time() + seconds
        self._deadline_at = at
        timer = self._timer
        if timer is None or timer.when() > at:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        at = self._deadline_at
        if at is None or self._lingering or self.transport.is_closing():
            return
        if self.loop.time() + 1e-3 < at:  # the deadline moved later since this was armed
            self._timer = self.loop.call_at(at, self._on_timer)
            return
        self._deadline_at = None
        self._expired()

    def _earlier_response_pending(self) -> bool:
        if self._phase == "body":  # httptools queues a pipelined request's cycle
            return bool(getattr(self, "pipeline", None))
        return self.cycle is not None and not self.cycle.response_complete

    def _expired(self) -> None:
        phase = self._phase
        if self._earlier_response_pending():
            # The server is still answering an earlier request on this connection and does
            # not read this one meanwhile: its time starts again when that answer is done.
            self._set_deadline(self._limits.header_timeout if phase != "body"
                               else self._limits.body_timeout)
            return
        if phase is None or phase == "other":
            self.transport.close()  # nothing of a request arrived: nothing to answer
            return
        if phase == "body":
            cycle = self.cycle
            if cycle is None or cycle.response_started:
                self.transport.close()  # the app already answered (or is answering)
                return
            # The app may be waiting for the body: it sees a disconnect, and its own answer
            # (if any) goes nowhere.
            cycle.disconnected = True
            cycle.waiting_for_100_continue = False
            cycle.message_event.set()
            seconds = self._limits.body_timeout
            what = "request body"
        else:
            seconds = self._limits.header_timeout
            what = "request line and headers"
        _timeouts.warning("HTTP: %s not received within %g s: answered 408", what, seconds)
        self._answer_and_close(_response(b"408 Request Timeout",
                                         f"{what}: not received within {seconds:g} s",
                                         self.server_state.default_headers))

    def _answer_and_close(self, response: bytes) -> None:
        """Write a final answer, half-close, then close once the client is done sending (or
        after ``LINGER_S``)."""
        transport = self.transport
        self._lingering = True
        self._deadline_at = None
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()


class HttpToolsConnection(_Deadlines, HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and the bound."""

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._deadline_at is None:
            # The first bytes after a complete request: the next request's time starts (a
            # pipelined one, or blank lines, which the parser skips without a callback).
            self._set_deadline(self._limits.header_timeout)
        super().data_received(data)  # type: ignore[misc]

    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self.scope.setdefault("extensions", {})[BODY_DEADLINE] = {}  # type: ignore[attr-defined]
        self._phase = "headers"
        if self._deadline_at is None:
            self._set_deadline(self._limits.header_timeout)

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()  # type: ignore[misc]
        if self.cycle is before:  # an upgrade: no request cycle of ours
            self._phase = "other"
            return
        if self.scope["method"] != "HEAD":  # type: ignore[attr-defined]  # (no body write)
            self.cycle.transport = HeldHeaders(self.transport, self.cycle)
        self._phase = "body"
        self._set_deadline(self._limits.body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        self._phase = None
        self._deadline_at = None

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # A request still arriving was not read while this response was produced (or the
        # app answered before its body came): it gets its full time from now.
        if self._phase in ("headers", "body") and not self.transport.is_closing():
            self._set_deadline(self._limits.header_timeout if self._phase == "headers"
                               else self._limits.body_timeout)

    def handle_websocket_upgrade(self) -> None:
        self._phase = "other"
        self._deadline_at = None
        super().handle_websocket_upgrade()  # type: ignore[misc]


class H11Connection(_Deadlines, H11Protocol):
    """uvicorn's h11 protocol with the deadlines and the bound (h11 reports no callbacks:
    the phase is read from its state after every step)."""

    _body_of: Any = None  # the request cycle whose body deadline is set

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._deadline_at is None:
            self._set_deadline(self._limits.header_timeout)
        super().data_received(data)
        self._sync(restart=False)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._sync(restart=True)

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._phase = "other"
        self._deadline_at = None
        super().handle_websocket_upgrade(event)

    def _sync(self, restart: bool) -> None:
        if self._phase == "other":
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if restart or self._phase != "body" or self._body_of is not self.cycle:
                self._body_of = self.cycle
                self._set_deadline(self._limits.body_timeout)
            self._phase = "body"
        elif state is h11.IDLE and self.conn.trailing_data[0]:
            # Entering "headers" from nothing keeps the running deadline (a fresh connection's
            # counts from its opening); from a previous request's body it starts anew.
            if restart or self._phase == "body" or self._deadline_at is None:
                self._set_deadline(self._limits.header_timeout)
            self._phase = "headers"
        else:  # complete (or closed): nothing to wait for until the next bytes
            self._phase = None
            self._deadline_at = None


#: What ``uvicorn.run(http=...)`` gets: httptools' parser, as uvicorn's "auto" picks it.
HttpProtocol = HttpToolsConnection
