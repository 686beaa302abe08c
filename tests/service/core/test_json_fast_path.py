"""JSON ``data`` read by simdjson (``codec._simd_head``) decodes exactly as the general way
(orjson + ``np.array``) does: the same arrays bit for bit, the same refusals word for word.

Each body is decoded twice, once as served and once with the fast path switched off, and the
two outcomes compared; a property test does it for generated bodies (numbers, nested and ragged
lists, non-numbers, brackets in strings), explicit cases pin the near misses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normserve.kernels.dtypes import DATATYPES
from normserve.service.core.errors import ApiError
from normserve.service.extensions.shared_memory import SharedMemory
from normserve.service.http import codec

LIMITS = codec.Limits(1 << 20)
NO_SHM = SharedMemory(False)


@contextmanager
def general_way_only() -> Iterator[None]:
    with mock.patch.object(codec, "_simd_head", lambda head: None):
        yield


def outcome(body: bytes, header_length: str | None = None) -> tuple:
    """What decoding ``body`` gives: the array (dtype, shape, bytes) or the refusal."""
    try:
        call = codec.decode_infer(body, header_length, LIMITS, NO_SHM)
    except ApiError as exc:
        return ("refused", exc.status, exc.message)
    return ("array", call.array.dtype, call.array.shape, call.array.tobytes(), call.request_id)


def assert_same_both_ways(body: bytes, header_length: str | None = None) -> tuple:
    served = outcome(body, header_length)
    with general_way_only():
        general = outcome(body, header_length)
    assert served == general
    return served


def fast(body: bytes) -> bool:
    return codec._simd_head(memoryview(body)) is not None


def body_of(data: Any, shape: list[int], datatype: str = "FP32", **extra: Any) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": datatype,
                                     "data": data}], **extra})


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_flat_numbers_take_the_fast_path_and_decode_bitwise(datatype: str) -> None:
    values = (np.random.default_rng(3).standard_normal(37) * 50).astype(np.float32)
    body = body_of(values.tolist(), [1, 37], datatype, id="r1", parameters={"x": [1, [2]]})
    assert fast(body)
    kind, dtype, shape, raw, request_id = assert_same_both_ways(body)
    assert (kind, dtype, shape, request_id) == ("array", DATATYPES[datatype], (1, 37), "r1")
    expected = values.astype(np.float64).astype(DATATYPES[datatype])
    assert raw == expected.tobytes()


def test_integers_and_signed_zero_decode_as_the_general_way_does() -> None:
    body = body_of([0, -0.0, 1, -7, 2 ** 53, 1.5e-300, 3], [7], "FP64")
    assert fast(body)
    kind, *_, raw, _ = assert_same_both_ways(body)
    assert kind == "array"
    assert np.signbit(np.frombuffer(raw, np.float64)[1])
    body = body_of([2 ** 64 - 1, 1], [1, 2])  # simdjson holds uint64, as NumPy does
    assert fast(body)
    assert assert_same_both_ways(body)[0] == "array"


@pytest.mark.parametrize(("body", "status", "word"), [
    (body_of([[1.0, 2.0], [], [3.0]], [1, 3]), 400, "equal length"),      # ragged, count fits
    (body_of([1.0, [2.0], 3.0], [1, 3]), 400, "equal length"),
    (body_of([[1.0, 2.0], [3.0]], [1, 3]), 400, "equal length"),
    (body_of([[1.0], 2.0], [1, 2]), 400, "equal length"),
    (body_of([[True, 2.0]], [1, 2]), 400, "numbers"),
    (body_of([True, 2.0], [1, 2]), 400, "numbers"),
    (body_of([None, 2.0], [1, 2]), 400, "numbers"),
    (body_of(["1", 2.0], [1, 2]), 400, "numbers"),
    (body_of({"0": 1.0}, [1, 1]), 400, "data"),
    (body_of([1.0, 2.0], [1, 3]), 400, "needs 3"),
    (body_of([1e39], [1, 1]), 400, "out of range"),                       # fast path, then refused
    (b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1e400]}]}', 400, "JSON"),
    (b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1,]}]}', 400, "JSON"),
    (b'\xef\xbb\xbf' + body_of([1.0], [1, 1]), 400, "JSON"),              # orjson refuses a BOM
    (body_of([1.0], [1, 1], "FP8"), 400, "datatype"),
    (body_of([1.0], [1, -1]), 400, "shape"),
])
def test_near_misses_are_refused_the_same_way(body: bytes, status: int, word: str) -> None:
    kind, got_status, message = assert_same_both_ways(body)
    assert (kind, got_status) == ("refused", status), message
    assert word.lower() in message.lower()


@pytest.mark.parametrize("data", [
    [[1.0, 2.0], [3.0, 4.0]],
    [[[1.0]], [[2.0]], [[3.0]], [[4.0]]],
    [[], []] + [[]] * 2,
])
def test_regular_nested_lists_take_the_fast_path(data: list) -> None:
    count = len(np.array(data).ravel())
    body = body_of(data, [1, count] if count else [0, 4])
    assert fast(body)
    assert assert_same_both_ways(body)[0] == "array"


def nested(depth: int) -> bytes:
    return (b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":' + b"[" * depth
            + b"1" + b"]" * depth + b"}]}")


@pytest.mark.parametrize("body", [
    # a repeated key: orjson keeps the last, which the fast path must not second-guess
    b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2],"data":[3,4]}]}',
    b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[9]}],'
    b'"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[5]}]}',
    # a "[" in a string makes the bracket count disagree: the general way, same answer
    body_of([1.0, 2.0], [1, 2], id="a[b"),
    # an integer below int64, which simdjson cannot hold
    b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP64","data":[-9223372036854775809]}]}',
    # nested deeper than the fast path follows (NumPy still takes 40 dimensions)
    nested(40),
])
def test_bodies_the_fast_path_leaves_to_the_general_way(body: bytes) -> None:
    assert not fast(body)
    assert assert_same_both_ways(body)[0] == "array"


@pytest.mark.parametrize("depth", [70, 1000, 5000])
def test_absurd_nesting_is_refused_the_same_way_without_a_crash(depth: int) -> None:
    assert not fast(nested(depth))
    assert assert_same_both_ways(nested(depth))[:2] == ("refused", 400)


def test_the_later_of_two_data_keys_wins() -> None:
    body = b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2],"data":[3,4]}]}'
    raw = assert_same_both_ways(body)[3]
    assert np.frombuffer(raw, np.float32).tolist() == [3.0, 4.0]


def test_json_data_beside_a_binary_header_length_uses_the_general_way() -> None:
    body = body_of([1.0, 2.0], [1, 2])
    assert assert_same_both_ways(body, str(len(body)))[0] == "array"


# --- generated bodies ---------------------------------------------------------------------

numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-70000, max_value=70000, allow_nan=False),
    # Integers beyond 2**53 are left out: JSON readers hold numbers as doubles, and an integer
    # that needs rounding twice (to double, then to FP32) may differ by an ulp from NumPy's
    # direct int64 -> FP32 (the general way); clients send floats.
    st.integers(min_value=-(2 ** 53), max_value=2 ** 53),
)
elements = st.one_of(numbers, numbers, numbers, st.booleans(), st.none(), st.text(max_size=3),
                     st.lists(numbers, max_size=3))


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(0, 12))
    data: Any = draw(st.one_of(
        st.lists(numbers, min_size=count, max_size=count),
        st.lists(numbers, min_size=max(count - 1, 0), max_size=count + 1),
        st.lists(elements, max_size=count + 1),
        st.lists(st.lists(numbers, min_size=2, max_size=2), min_size=count // 2,
                 max_size=count // 2),
    ))
    spec: dict[str, Any] = {"name": "input", "shape": [1, count],
                            "datatype": draw(st.sampled_from(list(DATATYPES))), "data": data}
    body: dict[str, Any] = {"inputs": [spec]}
    if draw(st.booleans()):
        body["id"] = draw(st.text(alphabet="ab[]{}\"\\,", max_size=6))
    if draw(st.booleans()):
        body["parameters"] = {"binary_data_output": draw(st.booleans()), "note": [1, [2, []]]}
    if draw(st.booleans()):
        body["outputs"] = [{"name": "output"}]
    return orjson.dumps(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_bodies())
def test_generated_bodies_decode_the_same_both_ways(body: bytes) -> None:
    assert_same_both_ways(body)
