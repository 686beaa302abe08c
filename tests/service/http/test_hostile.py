"""A corpus of malformed and hostile requests: each gets a 4xx with a JSON error naming what is
wrong, and the server keeps answering good requests correctly after every one of them (the app
in this process; the corpus: service_hostile_corpus.py)."""

from __future__ import annotations

import httpx
import pytest
from service_helpers import (
    assert_matches_reference,
    decode_response,
    in_process,
    infer_binary_body,
    infer_json_body,
    sample_input,
)
from service_hostile_corpus import CORPUS, LN, MAX_BODY, TOKEN


@pytest.fixture(scope="module")
def server():
    with in_process(admin_token=TOKEN, max_body_bytes=MAX_BODY) as app:
        yield app


@pytest.fixture(scope="module")
def http(server):
    return server.http


def _good_request_works(http: httpx.Client, seed: int) -> None:
    x = sample_input("layer_norm_1024", 2, "FP32", seed)
    body, headers = infer_binary_body(x, "FP32")
    resp = http.post(LN, content=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert_matches_reference("layer_norm_1024", x, decode_response(resp), "FP32")


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 40
    assert len({case[0] for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "word"),
                         [case[1:] for case in CORPUS], ids=[case[0] for case in CORPUS])
def test_hostile_request_gets_json_4xx(server, http, method, path, body, headers, status, word):
    resp = http.request(method, path, content=body, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert isinstance(error, str) and error
    assert word.lower() in error.lower(), error
    if status == 401:
        assert resp.headers["www-authenticate"] == "Bearer"
    assert http.get("/v2/health/live").json() == {"live": True}
    _good_request_works(http, seed=len(path) + status)


def test_json_path_still_exact_after_the_corpus(http):
    x = sample_input("layer_norm_1024", 3, "FP32", seed=99)
    resp = http.post(LN, json=infer_json_body(x, "FP32"))
    assert resp.status_code == 200
    assert_matches_reference("layer_norm_1024", x, decode_response(resp), "FP32")


def test_failures_are_counted(http):
    text = http.get("/metrics").text
    line = [ln for ln in text.splitlines() if ln.startswith("nv_inference_request_failure")
            and 'model="layer_norm_1024"' in ln and "BAD_REQUEST" in ln]
    assert line and float(line[0].rsplit(" ", 1)[1]) > 10
