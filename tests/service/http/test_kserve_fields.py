"""The request fields KServe's clients add to an infer body (``model_name``,
``model_version``, their own ``parameters``), over HTTP to the app in this process (the
clients themselves: process/test_kserve.py)."""

from __future__ import annotations

import pytest
from service_helpers import infer_json_body, sample_input

LN = "layer_norm_1024"


def test_body_may_name_its_model_and_version(app_client):
    x = sample_input(LN, 1, "FP32", seed=6)
    for extra in ({"model_name": LN}, {"model_name": LN, "model_version": "1"},
                  {"model_version": ""}, {"parameters": {"content_type": "np", "x-y": 3}}):
        resp = app_client.post(f"/v2/models/{LN}/infer", json=infer_json_body(x, "FP32", **extra))
        assert resp.status_code == 200, (extra, resp.text)
    versioned = app_client.post(f"/v2/models/{LN}/versions/1/infer",
                                json=infer_json_body(x, "FP32", model_version="1"))
    assert versioned.status_code == 200


@pytest.mark.parametrize(("extra", "words"), [
    ({"model_name": "rms_norm_512"}, "model_name: the body names 'rms_norm_512'"),
    ({"model_version": "2"}, "model_version: the body names '2'"),
    ({"model_name": 7}, "model_name: Input should be a valid string"),
])
def test_body_naming_another_model_is_refused(app_client, extra, words):
    x = sample_input(LN, 1, "FP32", seed=7)
    resp = app_client.post(f"/v2/models/{LN}/infer", json=infer_json_body(x, "FP32", **extra))
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(words), resp.json()
