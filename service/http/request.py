"""What an HTTP route reads from its Starlette request beyond the body: the core's context
(``app.state.ctx``, set by the lifespan) and the admin token header."""

from __future__ import annotations

from starlette.requests import Request

from ..core.admin import check_admin
from ..core.context import Context


def ctx_of(request: Request) -> Context:
    return request.app.state.ctx


def require_admin(request: Request) -> None:
    """``check_admin`` of an HTTP request's ``Authorization`` header."""
    check_admin(request.headers.get("authorization"), ctx_of(request).settings)
