"""The admin token guarding run-time registration and model control (``PUT``/``DELETE
/v1/models/{name}``, the repository API), for both transports: HTTP's ``Authorization``
header and gRPC's ``authorization`` metadata carry the same ``Bearer <token>``."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from .errors import ApiError
from .settings import Settings


def require_admin(request: Request, settings: Settings) -> None:
    """``check_admin`` of an HTTP request."""
    check_admin(request.headers.get("authorization"), settings)


def check_admin(authorization: str | None, settings: Settings) -> None:
    """Pass, or 403 (registration off, wrong token) / 401 (no bearer token)."""
    if not settings.admin_token:
        raise ApiError(403, "Authorization: model registration is disabled (start the server "
                            "with --admin-token or NORMSERVE_ADMIN_TOKEN)")
    header = authorization or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Authorization: a 'Bearer <admin token>' header is required",
                       {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip().encode(), settings.admin_token.encode()):
        raise ApiError(403, "Authorization: wrong admin token")
