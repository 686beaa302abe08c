"""The refusals of the core, one class per kind, whichever transport carried the request.

Each class carries the status the KServe v2 protocol defines the refusal by (its HTTP status,
which the spec's error table is written in); the transports map the class once each:
``http.errors`` writes ``{"error": ...}`` with that status, ``grpc.errors`` picks the gRPC
status code. Nothing here knows either transport.
"""

from __future__ import annotations

from typing import ClassVar

#: What a 503 asks a client to wait before retrying (seconds, the ``Retry-After`` header).
RETRY_AFTER_S = 1


class ApiError(Exception):
    """A request the server refuses: a message naming the field at fault, extra headers, and
    ``reason`` where one kind covers several causes (REJECTED: queue full, TIMEOUT,
    UNAVAILABLE: closing), as the failure metrics count them."""

    status: ClassVar[int] = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.reason = reason


class InvalidInput(ApiError):
    """The request is malformed or does not fit the model (a field named in the message)."""

    status = 400


class Unauthenticated(ApiError):
    """An admin call without a bearer token."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, {"WWW-Authenticate": "Bearer"})


class PermissionDenied(ApiError):
    """An admin call with the wrong token, or a feature the server was started without."""

    status = 403


class NotFound(ApiError):
    """Something the request names does not exist here."""

    status = 404


class ModelNotFound(NotFound):
    """An unknown model, version or model folder."""


class RequestTimeout(ApiError):
    """The client did not send its request in time."""

    status = 408


class Conflict(ApiError):
    """The repository's state forbids the change (the built-in demo repository)."""

    status = 409


class PayloadTooLarge(ApiError):
    """A body or tensor over the configured limit."""

    status = 413


class ServiceUnavailable(ApiError):
    """Not now, retry later: a full queue, a timeout, a model going away."""

    status = 503

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message, {"Retry-After": str(RETRY_AFTER_S)}, reason)


class InsufficientStorage(ApiError):
    """The repository cannot be written; nothing was changed."""

    status = 507


class Unsupported(ApiError):
    """A protocol extension this server does not serve (CUDA shared memory registration,
    trace settings): Triton's UNSUPPORTED, which it answers 501 / UNIMPLEMENTED."""

    status = 501
