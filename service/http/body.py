"""Reading request bodies under the size limit, before anything is parsed or allocated.

A declared ``Content-Length`` over the limit is refused at once (413); a chunked body is counted
as it streams in. gzip and deflate bodies (tritonclient's ``request_compression_algorithm``)
are inflated with the same limit, so a compression bomb is a 413 and not an out-of-memory.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import orjson
from starlette.requests import Request

from ..core.errors import InvalidInput, PayloadTooLarge, RequestTimeout
from ..settings import Settings
from .connections import BODY_DEADLINE


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"body: larger than the limit of {limit} bytes")


async def read_body_within(request: Request, limit: int, timeout_s: float) -> bytes:
    """``read_body`` under a deadline (408 when a client sends too slowly). A connection of
    ``connections.py`` enforces that deadline itself (and answers the 408): then no timer
    here (a timer per request costs more than reading a small body)."""
    if BODY_DEADLINE in request.scope.get("extensions", ()):
        return await read_body(request, limit)
    try:
        if hasattr(asyncio, "timeout"):  # 3.11+: a deadline without an extra task
            async with asyncio.timeout(timeout_s):
                return await read_body(request, limit)
        return await asyncio.wait_for(read_body(request, limit), timeout_s)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"body: not received within {timeout_s:g} s") from None


async def json_body(request: Request, settings: Settings, allow_empty: bool = False) -> Any:
    """A JSON request body under the size limit and deadline (``{}`` for an empty body when
    ``allow_empty``: Triton's clients post none for some calls)."""
    body = await read_body_within(request, settings.max_body_bytes, settings.request_timeout)
    if allow_empty and not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The (decoded) body of a request, or a 400/413 naming what is wrong."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # not "²": int() refuses it
            raise InvalidInput("Content-Length: not a non-negative integer")
        if int(declared) > limit:
            raise _too_large(limit)
    # ASGI's receive() directly: Request.stream()'s async generator cost more than the rest
    # of this function.
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise InvalidInput("body: the client disconnected before sending it all")
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return _decode(body, request.headers.get("content-encoding"), limit)


def _decode(body: bytes, encoding: str | None, limit: int) -> bytes:
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    kind = encoding.strip().lower()
    if kind not in ("gzip", "deflate"):
        raise InvalidInput(f"Content-Encoding: {encoding!r} is not supported "
                           "(use gzip, deflate or none)")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if kind == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise _too_large(limit)
        out += inflater.flush()
    except zlib.error as exc:
        raise InvalidInput(f"Content-Encoding: body is not valid {kind} ({exc})") from None
    if len(out) > limit:
        raise _too_large(limit)
    return out
