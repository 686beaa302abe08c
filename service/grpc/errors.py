"""The one mapping of the core's errors to gRPC status codes.

``ApiError`` carries the KServe v2 (HTTP) status; this table is its gRPC twin, so that a
refusal reads the same on both transports and a client error is never INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import grpc

from ..errors import ApiError

_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_code(exc: ApiError) -> grpc.StatusCode:
    """The gRPC code of a refused request (any 4xx not listed is an invalid argument; a full
    queue, a timeout and a closing model are all 503, UNAVAILABLE: retry later)."""
    return _CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT
                      if 400 <= exc.status < 500 else grpc.StatusCode.UNAVAILABLE)
