"""The one mapping of the core's errors to gRPC status codes.

Each ``ApiError`` class has its gRPC twin here, so that a refusal reads the same on both
transports and a client error is never INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import grpc

from ..core import errors

_CODES: dict[type[errors.ApiError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    # The demo repository refusing a change: the request cannot succeed as sent.
    errors.Conflict: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # A full queue, a timeout and a closing model: retry later.
    errors.ServiceUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.InsufficientStorage: grpc.StatusCode.UNAVAILABLE,
    # What Triton answers for a feature it does not serve (its TRITONSERVER_ERROR_UNSUPPORTED).
    errors.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
}


def status_code(exc: errors.ApiError) -> grpc.StatusCode:
    """The gRPC code of a refused request: its class's, or its nearest base class's."""
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INVALID_ARGUMENT  # ApiError itself: a client error
