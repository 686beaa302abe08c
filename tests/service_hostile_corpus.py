"""The corpus of malformed and hostile requests (id, method, path, body, headers, expected
status, a word the error must contain): sent through the app by http/test_hostile.py, and
decoded by the core alone by core/test_codec.py."""

from __future__ import annotations

import gzip
from typing import Any

import numpy as np
import orjson

TOKEN = "s3cret-token"
MAX_BODY = 1_000_000
LN = "/v2/models/layer_norm_1024/infer"


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _inp(**fields: Any) -> bytes:
    spec = {"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": [0.5] * 1024}
    spec.update(fields)
    return _json({"inputs": [spec]})


def _binary(shape: list[int], size: int, payload: bytes, header_len: str | None = None,
            **extra: Any) -> tuple[bytes, dict[str, str]]:
    head = _json({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32",
                              "parameters": {"binary_data_size": size}, **extra}]})
    return head + payload, {"Inference-Header-Content-Length": header_len or str(len(head))}


ROW = np.ones(1024, np.float32).tobytes()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD_PUT = _json({"kind": "layer_norm", "normalized_shape": [4], "input_shape": [4]})

# (id, method, path, body, headers, expected status, word the error must contain)
CORPUS: list[tuple[str, str, str, bytes | None, dict[str, str], int, str]] = [
    ("malformed-json", "POST", LN, b'{"inputs": [', {}, 400, "JSON"),
    ("body-is-array", "POST", LN, b"[1, 2]", {}, 400, "object"),
    ("empty-body", "POST", LN, b"", {}, 400, "JSON"),
    ("inputs-missing", "POST", LN, b"{}", {}, 400, "inputs"),
    ("inputs-empty", "POST", LN, _json({"inputs": []}), {}, 400, "inputs"),
    ("inputs-duplicate", "POST", LN, _json({"inputs": [orjson.loads(_inp())["inputs"][0]] * 2}),
     {}, 400, "duplicate"),
    ("inputs-two", "POST", LN, _json({"inputs": [orjson.loads(_inp())["inputs"][0],
                                                 orjson.loads(_inp(name="y"))["inputs"][0]]}),
     {}, 400, "one input"),
    ("datatype-int32", "POST", LN, _inp(datatype="INT32"), {}, 400, "datatype"),
    ("datatype-bytes", "POST", LN, _inp(datatype="BYTES"), {}, 400, "datatype"),
    ("datatype-not-string", "POST", LN, _inp(datatype=5), {}, 400, "datatype"),
    ("shape-not-list", "POST", LN, _inp(shape="1x1024"), {}, 400, "shape"),
    ("shape-negative", "POST", LN, _inp(shape=[-1, 1024]), {}, 400, "shape"),
    ("shape-float", "POST", LN, _inp(shape=[1.5, 1024]), {}, 400, "shape"),
    ("shape-rank-too-high", "POST", LN, _inp(shape=[1] * 20), {}, 400, "shape"),
    ("data-too-short", "POST", LN, _inp(data=[0.5] * 1000), {}, 400, "data"),
    ("data-too-long", "POST", LN, _inp(data=[0.5] * 1025), {}, 400, "data"),
    ("huge-shape-tiny-data", "POST", LN, _inp(shape=[10**9, 1024], data=[1.0]), {}, 413, "shape"),
    ("astronomic-shape", "POST", LN, _inp(shape=[2**62, 2**62], data=[1.0]), {}, 413, "shape"),
    ("data-strings", "POST", LN, _inp(data=["a"] * 1024), {}, 400, "data"),
    ("data-null", "POST", LN, _inp(data=[None] * 1024), {}, 400, "data"),
    ("data-bools", "POST", LN, _inp(data=[True] * 1024), {}, 400, "data"),
    ("data-ragged", "POST", LN, _inp(data=[[1.0] * 1000, [1.0] * 24]), {}, 400, "data"),
    ("data-object", "POST", LN, _inp(data=[{"a": 1}] * 1024), {}, 400, "data"),
    ("data-nan-literal", "POST", LN, _inp().replace(b"0.5]", b"NaN]"), {}, 400, "JSON"),
    ("data-infinity-literal", "POST", LN, _inp().replace(b"0.5]", b"Infinity]"), {}, 400, "JSON"),
    ("data-overflow-double", "POST", LN, _inp().replace(b"0.5]", b"1e999]"), {}, 400, "JSON"),
    ("data-overflow-fp16", "POST", LN, _inp(datatype="FP16", data=[1e6] * 1024), {}, 400,
     "range"),
    ("data-deep-nesting", "POST", LN, b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32",'
     b'"data":' + b"[" * 5000 + b"]" * 5000 + b"}]}", {}, 400, "JSON"),
    ("data-missing", "POST", LN, _inp(data=None), {}, 400, "data"),
    ("header-length-beyond-body", "POST", LN, *_binary([1, 1024], 4096, ROW, "999999")[0:1],
     {"Inference-Header-Content-Length": "999999"}, 400, "Inference-Header-Content-Length"),
    ("header-length-not-number", "POST", LN, _binary([1, 1024], 4096, ROW)[0],
     {"Inference-Header-Content-Length": "12abc"}, 400, "Inference-Header-Content-Length"),
    ("binary-size-vs-shape", "POST", LN, *_binary([1, 1024], 4000, ROW[:4000]), 400,
     "binary_data_size"),
    ("binary-size-beyond-body", "POST", LN, *_binary([1, 1024], 4096, ROW[:100]), 400,
     "binary_data_size"),
    ("binary-extra-bytes", "POST", LN, *_binary([1, 1024], 4096, ROW + b"xx"), 400,
     "binary_data_size"),
    ("binary-size-negative", "POST", LN, *_binary([1, 1024], -4, b""), 400, "binary_data_size"),
    ("binary-and-data", "POST", LN, *_binary([1, 1024], 4096, ROW, data=[1.0]), 400, "data"),
    ("binary-huge-shape", "POST", LN, *_binary([10**8, 1024], 4, b"1234"), 413, "shape"),
    ("binary-unclaimed-bytes", "POST", LN, _inp(), {"Inference-Header-Content-Length":
                                                    str(len(_inp()) - 8)}, 400, "JSON"),
    ("unknown-model", "POST", "/v2/models/nope/infer", _inp(), {}, 404, "nope"),
    ("unknown-output", "POST", LN, _json({**orjson.loads(_inp()), "outputs": [{"name": "y"}]}),
     {}, 400, "outputs"),
    ("duplicate-output", "POST", LN, _json({**orjson.loads(_inp()), "outputs": [
        {"name": "output"}, {"name": "output"}]}), {}, 400, "duplicate"),
    ("output-flag-not-bool", "POST", LN, _json({**orjson.loads(_inp()), "outputs": [
        {"name": "output", "parameters": {"binary_data": "yes"}}]}), {}, 400, "binary_data"),
    ("request-flag-not-bool", "POST", LN, _json({**orjson.loads(_inp()),
                                                 "parameters": {"binary_data_output": 1}}),
     {}, 400, "binary_data_output"),
    ("timeout-negative", "POST", LN, _json({**orjson.loads(_inp()),
                                            "parameters": {"timeout": -5}}), {}, 400, "timeout"),
    ("id-not-string", "POST", LN, _json({**orjson.loads(_inp()), "id": 7}), {}, 400, "id"),
    ("unknown-field", "POST", LN, _json({**orjson.loads(_inp()), "bogus": 1}), {}, 400, "bogus"),
    ("wrong-sample-shape", "POST", LN, _inp(shape=[1, 1000], data=[0.5] * 1000), {}, 400,
     "shape"),
    ("missing-batch-axis", "POST", LN, _inp(shape=[1024]), {}, 400, "shape"),
    ("zero-batch", "POST", LN, _inp(shape=[0, 1024], data=[]), {}, 400, "batch"),
    ("channels-mismatch", "POST", "/v2/models/batch_norm_8/infer",
     _inp(shape=[1, 7, 2], data=[0.5] * 14), {}, 400, "shape"),
    ("oversized-body", "POST", LN, b" " * (MAX_BODY + 1), {}, 413, "body"),
    ("gzip-bomb", "POST", LN, gzip.compress(b" " * (MAX_BODY * 20)), {"Content-Encoding": "gzip"},
     413, "body"),
    ("gzip-garbage", "POST", LN, b"not gzip at all", {"Content-Encoding": "gzip"}, 400,
     "Content-Encoding"),
    ("encoding-unsupported", "POST", LN, _inp(), {"Content-Encoding": "br"}, 400,
     "Content-Encoding"),
    ("version-unknown", "POST", "/v2/models/layer_norm_1024/versions/2/infer", _inp(), {}, 404,
     "version"),
    ("dotdot-model", "GET", "/v2/models/..%2F..%2Fetc%2Fpasswd", None, {}, 404, ""),
    ("dotdot-register", "PUT", "/v1/models/%2E%2E", GOOD_PUT, AUTH, 400, "name"),
    ("dotdot-slash-register", "PUT", "/v1/models/..%2Fescape", GOOD_PUT, AUTH, 404, ""),
    ("name-too-long", "PUT", "/v1/models/" + "a" * 65, GOOD_PUT, AUTH, 400, "name"),
    ("name-bad-chars", "PUT", "/v1/models/a%20b", GOOD_PUT, AUTH, 400, "name"),
    ("name-nul", "PUT", "/v1/models/a%00b", GOOD_PUT, AUTH, 400, "name"),
    ("load-dotdot", "POST", "/v2/repository/models/%2E%2E/load", None, AUTH, 400, ""),
    ("load-nul", "POST", "/v2/repository/models/a%00b/load", None, AUTH, 400, ""),
    ("register-no-token", "PUT", "/v1/models/x", GOOD_PUT, {}, 401, "Authorization"),
    ("register-bad-token", "PUT", "/v1/models/x", GOOD_PUT, {"Authorization": "Bearer nope"},
     403, "token"),
    ("register-basic-auth", "PUT", "/v1/models/x", GOOD_PUT, {"Authorization": "Basic eDp5"},
     401, "Authorization"),
    ("delete-bad-token", "DELETE", "/v1/models/layer_norm_1024", None,
     {"Authorization": "Bearer nope"}, 403, "token"),
    ("register-bad-kind", "PUT", "/v1/models/x", _json({"kind": "dropout"}), AUTH, 400, "kind"),
    ("register-bad-params", "PUT", "/v1/models/x", _json({
        "kind": "layer_norm", "normalized_shape": [4], "input_shape": [4],
        "params": {"weight": {"shape": [5], "data": [1, 2, 3, 4, 5]}}}), AUTH, 400, "weight"),
    ("register-bad-batch", "PUT", "/v1/models/x", _json({
        "kind": "layer_norm", "normalized_shape": [4], "max_batch_size": 0}), AUTH, 400,
     "max_batch_size"),
    ("normalize-unknown-kind", "POST", "/v1/normalize", _json({
        "kind": "dropout", "input": {"shape": [1, 2], "data": [1, 2]}}), {}, 400, "kind"),
    ("normalize-bad-hyper", "POST", "/v1/normalize", _json({
        "kind": "group_norm", "num_groups": 3,
        "input": {"shape": [1, 4, 2], "data": [1] * 8}}), {}, 400, "num_groups"),
    ("normalize-unknown-hyper", "POST", "/v1/normalize", _json({
        "kind": "layer_norm", "normalized_shape": [2], "bogus": 1,
        "input": {"shape": [1, 2], "data": [1, 2]}}), {}, 400, "bogus"),
    ("normalize-param-mismatch", "POST", "/v1/normalize", _json({
        "kind": "layer_norm", "normalized_shape": [2], "params": {
            "weight": {"shape": [3], "data": [1, 2]}},
        "input": {"shape": [1, 2], "data": [1, 2]}}), {}, 400, "weight"),
    ("normalize-huge-param", "POST", "/v1/normalize", _json({
        "kind": "layer_norm", "normalized_shape": [2], "params": {
            "weight": {"shape": [10**12], "data": [1]}},
        "input": {"shape": [1, 2], "data": [1, 2]}}), {}, 413, "weight"),
    ("normalize-device", "POST", "/v1/normalize", _json({
        "kind": "layer_norm", "normalized_shape": [2], "device": "cuda",
        "input": {"shape": [1, 2], "data": [1, 2]}}), {}, 400, "device"),
    ("normalize-input-missing", "POST", "/v1/normalize", _json({"kind": "layer_norm"}), {}, 400,
     "input"),
    ("onnx-opset-text", "GET", "/v1/models/layer_norm_1024/model.onnx?opset=abc", None, {}, 400,
     "opset"),
    ("onnx-opset-zero", "GET", "/v1/models/layer_norm_1024/model.onnx?opset=0", None, {}, 400,
     "opset"),
    ("onnx-unknown-model", "GET", "/v1/models/nope/model.onnx", None, {}, 404, "nope"),
    ("metadata-unknown-model", "GET", "/v2/models/nope", None, {}, 404, "nope"),
    ("wrong-method", "DELETE", "/v2/health/ready", None, {}, 405, ""),
    ("unknown-route", "GET", "/v3/everything", None, {}, 404, ""),
]
