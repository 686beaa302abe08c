"""Property-based fuzzing of every v1 and v2 route from the app's own ``/openapi.json`` (the
ASGI app in this process, its lifespan run):
whatever schemathesis generates (valid and invalid data), the answer is never a 5xx (but the
501 of what is not served, from the operations that document it: CUDA shared memory
registration, trace settings), and every error is JSON with an ``error`` field."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from service_helpers import in_process

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = 30
MODELS = ["layer_norm_1024", "batch_norm_8", "group_norm_8", "spectral_norm_64x32"]


@pytest.fixture(scope="module")
def fuzzed_server():
    with in_process(admin_token="fuzz-token", max_body_bytes=2_000_000,
                    max_tensor_elements=100_000, request_timeout=10) as app:
        yield app


def _operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app.app)
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if op.path.startswith(("/v1", "/v2"))]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(fuzzed_server, mode):
    operations = _operations(fuzzed_server)
    assert len(operations) >= 15  # every v1 and v2 route is in the schema
    seen: dict[str, set[int]] = {}

    calls = [0]

    def check(case) -> None:
        # Every other case targets a real model (and version), so that generated bodies get
        # past the 404 and into the decoding; PUTs carry the admin token.
        calls[0] += 1
        params = case.path_parameters or {}
        if calls[0] % 2 and "name" in params:
            params["name"] = MODELS[calls[0] % len(MODELS)]
            if "version" in params:
                params["version"] = "1"
        headers = {"Authorization": "Bearer fuzz-token"} if case.method == "PUT" else None
        response = case.call(timeout=30, headers=headers)
        seen.setdefault(case.operation.label, set()).add(response.status_code)
        if response.status_code == 501:  # not served, as documented: Triton's UNSUPPORTED
            assert "501" in case.operation.definition.raw.get("responses", {}), \
                case.operation.label
        else:
            case.validate_response(response, checks=[not_a_server_error])
        if response.status_code >= 400:
            ctype = response.headers.get("content-type") or [""]
            ctype = ctype[0] if isinstance(ctype, list) else ctype
            assert ctype.startswith("application/json"), response.text
            assert isinstance(response.json().get("error"), str), response.text

    for operation in operations:
        fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck))(
            given(case=operation.as_strategy(generation_mode=mode))(check))
        try:
            fuzz()
        except Unsatisfiable:  # no parameters or body to make invalid: nothing to fuzz
            assert mode == GenerationMode.NEGATIVE, operation.label
    assert all(code < 500 or code == 501 for codes in seen.values() for code in codes), seen
    # The fuzzer reached the routes it can vary (negative data needs a body or a typed query).
    assert len(seen) >= (10 if mode == GenerationMode.POSITIVE else 4), seen
    wanted = 200 if mode == GenerationMode.POSITIVE else 400
    assert any(wanted in codes for codes in seen.values()), seen
    print({label: sorted(codes) for label, codes in seen.items()})
    assert fuzzed_server.http.get("/v2/health/live").json() == {"live": True}
