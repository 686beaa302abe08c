"""The core's named errors and their one mapping per transport: each class's HTTP status
(the KServe v2 one, unchanged from the bare codes it replaced), its JSON body and headers,
and its gRPC status code, never INTERNAL or UNKNOWN for a client's error."""

from __future__ import annotations

import grpc
import orjson
import pytest

from normserve.service.core import errors
from normserve.service.grpc.errors import status_code
from normserve.service.http.errors import api_error_response

#: class -> (HTTP status, gRPC code)
EXPECTED = {
    errors.InvalidInput: (400, grpc.StatusCode.INVALID_ARGUMENT),
    errors.Unauthenticated: (401, grpc.StatusCode.UNAUTHENTICATED),
    errors.PermissionDenied: (403, grpc.StatusCode.PERMISSION_DENIED),
    errors.NotFound: (404, grpc.StatusCode.NOT_FOUND),
    errors.ModelNotFound: (404, grpc.StatusCode.NOT_FOUND),
    errors.RequestTimeout: (408, grpc.StatusCode.DEADLINE_EXCEEDED),
    errors.Conflict: (409, grpc.StatusCode.INVALID_ARGUMENT),
    errors.PayloadTooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    errors.ServiceUnavailable: (503, grpc.StatusCode.UNAVAILABLE),
    errors.InsufficientStorage: (507, grpc.StatusCode.UNAVAILABLE),
    errors.Unsupported: (501, grpc.StatusCode.UNIMPLEMENTED),
}


def _all_subclasses(cls: type) -> set[type]:
    return {c for sub in cls.__subclasses__() for c in (sub, *_all_subclasses(sub))}


def test_every_named_error_is_mapped() -> None:
    assert _all_subclasses(errors.ApiError) == set(EXPECTED)


@pytest.mark.parametrize("cls", EXPECTED, ids=lambda c: c.__name__)
def test_each_class_maps_once_per_transport(cls: type[errors.ApiError]) -> None:
    status, code = EXPECTED[cls]
    exc = cls("field: what is wrong")
    response = api_error_response(exc)
    assert exc.status == response.status_code == status
    assert orjson.loads(response.body) == {"error": "field: what is wrong"}
    assert status_code(exc) == code
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def test_the_headers_each_kind_carries() -> None:
    unavailable = api_error_response(errors.ServiceUnavailable("queue full", reason="REJECTED"))
    assert unavailable.headers["retry-after"] == str(errors.RETRY_AFTER_S)
    assert api_error_response(errors.Unauthenticated("no token")).headers[
        "www-authenticate"] == "Bearer"
    assert "retry-after" not in api_error_response(errors.InvalidInput("x")).headers


def test_a_plain_api_error_is_a_client_error() -> None:
    exc = errors.ApiError("x")
    assert exc.status == 400 and status_code(exc) == grpc.StatusCode.INVALID_ARGUMENT
