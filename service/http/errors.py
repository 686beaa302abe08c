"""Every error leaves the HTTP transport as JSON ``{"error": "..."}`` with its status (SPEC 4).

The core's ``ApiError`` classes carry the status; the handlers here replace FastAPI's
defaults (its 422 validation shape, its ``{"detail": ...}`` bodies) so that clients,
tritonclient included, always find the ``error`` field.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..core.errors import ApiError

log = logging.getLogger("normserve")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The one error body shape of the service."""
    return Response(orjson.dumps({"error": message}), status_code=status,
                    media_type="application/json", headers=headers)


def api_error_response(exc: ApiError) -> Response:
    """The answer to a refusal of the core."""
    return error_response(exc.status, exc.message, exc.headers)


def internal_error_response(exc: Exception) -> Response:
    """A bug, not the client: no details beyond the exception's type."""
    return error_response(500, f"internal error: {type(exc).__name__}")


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the JSON error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return error_response(400, f"{_loc(tuple(first.get('loc', ())))}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return internal_error_response(exc)
