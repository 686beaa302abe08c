"""The interactive API page groups its operations: every operation of ``/openapi.json`` has
exactly one tag, each tag is one of the declared groups, and each group is described and
used. Read from the app's OpenAPI document in this process (no server)."""

from __future__ import annotations

import pytest

from normserve.service.app import create_app
from normserve.service.http.tags import OPENAPI_TAGS
from normserve.service.settings import Settings

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def document() -> dict:
    return create_app(Settings(warmup=False, grpc_port=0)).openapi()


def operations(document: dict) -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, op) for path, item in document["paths"].items()
            for method, op in item.items() if method in METHODS]


def test_every_operation_has_exactly_one_known_tag(document: dict) -> None:
    known = {t["name"] for t in document.get("tags", [])}
    assert known == {t["name"] for t in OPENAPI_TAGS}
    untagged = [f"{m} {p}: {op.get('tags')}" for m, p, op in operations(document)
                if len(op.get("tags", [])) != 1 or op["tags"][0] not in known]
    assert not untagged, untagged


def test_every_tag_is_described_and_used(document: dict) -> None:
    used = {op["tags"][0] for _, _, op in operations(document) if op.get("tags")}
    for tag in document["tags"]:
        assert tag.get("description", "").strip(), tag
        assert tag["name"] in used, f"tag {tag['name']!r} groups no operation"


@pytest.mark.parametrize(("method", "path", "tag"), [
    ("GET", "/v2/health/ready", "health"),
    ("GET", "/v2/models/{name}", "metadata"),
    ("POST", "/v2/models/{name}/infer", "inference"),
    ("POST", "/v2/repository/index", "repository"),
    ("GET", "/v2/models/{name}/config", "model configuration"),
    ("GET", "/v2/models/stats", "statistics"),
    ("POST", "/v2/logging", "logging"),
    ("GET", "/v2/systemsharedmemory/status", "shared memory"),
    ("PUT", "/v1/models/{name}", "v1"),
    ("GET", "/metrics", "v1"),
])
def test_operations_sit_in_their_group(document: dict, method: str, path: str, tag: str
                                       ) -> None:
    assert document["paths"][path][method.lower()]["tags"] == [tag]
