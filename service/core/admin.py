"""The admin token guarding run-time registration and model control (``PUT``/``DELETE
/v1/models/{name}``, the repository API), for both transports: HTTP's ``Authorization``
header and gRPC's ``authorization`` metadata carry the same ``Bearer <token>``."""

from __future__ import annotations

import hmac

from ..settings import Settings
from .errors import PermissionDenied, Unauthenticated


def check_admin(authorization: str | None, settings: Settings) -> None:
    """Pass, or 403 (registration off, wrong token) / 401 (no bearer token)."""
    if not settings.admin_token:
        raise PermissionDenied("Authorization: model registration is disabled (start the server "
                               "with --admin-token or NORMSERVE_ADMIN_TOKEN)")
    header = authorization or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization: a 'Bearer <admin token>' header is required")
    if not hmac.compare_digest(token.strip().encode(), settings.admin_token.encode()):
        raise PermissionDenied("Authorization: wrong admin token")
