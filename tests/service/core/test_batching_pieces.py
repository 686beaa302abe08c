"""The batcher's two helpers alone: ``CallerReturns`` (which callers an adaptive batch waits
for, driven with a fake clock) and ``compute`` (a batch's kernel call and its rows back)."""

from __future__ import annotations

import numpy as np
import pytest

from normserve.kernels import prepare
from normserve.service.batching import callers as callers_module
from normserve.service.batching.callers import CallerReturns
from normserve.service.batching.compute import compute


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(callers_module.time, "perf_counter", fake)
    return fake


def returns(max_delay_s: float = 0.01, max_return_s: float = 1.0) -> CallerReturns:
    return CallerReturns(max_delay_s=max_delay_s, return_gaps=2, min_return_delays=4,
                         max_return_s=max_return_s, gap_weight=1 / 8)


def test_a_caller_never_seen_to_come_back_is_not_waited_for(clock: Clock) -> None:
    c = returns()
    c.caller_arrived("a")
    c.caller_left("a")
    assert c.caller_due(clock.now, clock.now + 0.01) is None


def test_a_returning_caller_is_waited_for_within_its_window_then_forgotten(clock) -> None:
    c = returns()
    c.caller_arrived("a")
    c.caller_left("a")
    clock.now += 0.002  # back after a 2 ms gap: a returning caller
    c.caller_arrived("a")
    c.caller_left("a")
    answered = clock.now
    window = 4 * 0.01  # max(2 gaps, 4 batch delays)
    assert c.caller_due(clock.now, clock.now + 0.01) == pytest.approx(answered + window)
    clock.now += window + 1e-6
    assert c.caller_due(clock.now, clock.now + 0.01) is None
    assert not c._away  # late past its window: forgotten


def test_a_caller_with_a_request_in_progress_is_not_away(clock: Clock) -> None:
    c = returns()
    for _ in range(2):
        c.caller_arrived("a")
        c.caller_left("a")
        clock.now += 0.001
    c.caller_arrived("a")
    assert c.caller_due(clock.now, clock.now + 0.01) is None
    c.caller_arrived("a")  # a second request of the same caller
    c.caller_left("a")
    assert c._in_progress["a"][0] == 1


def test_answers_are_kept_no_longer_than_max_return_s(clock: Clock) -> None:
    c = returns(max_return_s=0.5)
    for name in ("a", "b"):
        c.caller_arrived(name)
        c.caller_left(name)
        clock.now += 0.4
    c.caller_arrived("c")
    c.caller_left("c")  # "a" answered 0.8 s ago: dropped
    assert list(c._answered) == ["b", "c"]


def test_all_here_only_when_every_request_in_progress_is_held_and_no_one_may_return(
        clock: Clock) -> None:
    c = returns(max_return_s=0.5)
    c.caller_arrived("a")
    assert c.all_here(1) and not c.all_here(0)  # a batch without a's request: it is coming
    c.caller_arrived("b")
    assert not c.all_here(1) and c.all_here(2)
    c.caller_left("b")
    assert not c.all_here(1)  # "b", answered a moment ago, may come back
    clock.now += 0.6
    c.caller_left("a")  # "b" is past max_return_s: forgotten
    c.caller_arrived("a")
    assert c.all_here(1)
    c.caller_arrived("a")  # a second request on the same connection (a shared gRPC channel)
    c.caller_left("a")
    assert not c.all_here(1)  # the client answered may send another: "a" is not all here


def test_compute_joins_requests_and_hands_each_its_rows() -> None:
    layer = prepare("rms_norm", {"weight": np.linspace(0.5, 1.5, 8)}, normalized_shape=[8])
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((rows, 8)).astype(np.float32) for rows in (1, 3, 2)]
    target = np.empty((3, 8), np.float32)
    outs, seconds = compute(layer, xs, [None, target, None])
    assert seconds >= 0
    assert outs[1] is target
    for x, out in zip(xs, outs, strict=True):
        assert out.tobytes() == layer.apply(x).tobytes()


def _read_only_unaligned(x: np.ndarray) -> np.ndarray:
    """``x`` as a gRPC or binary-HTTP decoder hands it over: a read-only view of bytes, here
    one byte off alignment."""
    raw = bytearray(x.nbytes + 1)
    raw[1:] = x.tobytes()
    view = np.frombuffer(bytes(raw), np.uint8)[1:].view(x.dtype).reshape(x.shape)
    assert not view.flags.writeable and not view.flags.aligned
    return view


def test_a_request_alone_runs_from_a_copy_of_a_view_it_cannot_read_in_place() -> None:
    layer = prepare("layer_norm", {"weight": np.linspace(0.5, 1.5, 8)}, normalized_shape=[8])
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    view = _read_only_unaligned(x)
    (out,), _ = compute(layer, [view], [None])
    assert out.tobytes() == layer.apply(x).tobytes()
    target = np.empty((3, 8), np.float32)
    (out,), _ = compute(layer, [view], [target])
    assert out is target and target.tobytes() == layer.apply(x).tobytes()


def test_a_request_alone_fills_the_targets_it_has_and_gets_the_other_outputs() -> None:
    layer = prepare("add_rms_norm", {"weight": np.linspace(0.5, 1.5, 8)},
                    normalized_shape=[8])
    rng = np.random.default_rng(2)
    x, r = (rng.standard_normal((2, 8)).astype(np.float32) for _ in range(2))
    want_y, want_h = layer.apply(x, r)
    h_target = np.empty((2, 8), np.float32)
    ((y, h),), _ = compute(layer, [(_read_only_unaligned(x), r)], [(None, h_target)])
    assert h is h_target
    assert y.tobytes() == want_y.tobytes() and h.tobytes() == want_h.tobytes()
    y_target, h_target = np.empty((2, 8), np.float32), np.empty((2, 8), np.float32)
    ((y, h),), _ = compute(layer, [(x, r)], [(y_target, h_target)])
    assert y is y_target and h is h_target
    assert y.tobytes() == want_y.tobytes() and h.tobytes() == want_h.tobytes()


def test_the_only_request_left_to_join_runs_alone_beside_one_with_its_targets() -> None:
    layer = prepare("rms_norm", {"weight": np.linspace(0.5, 1.5, 8)}, normalized_shape=[8])
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((rows, 8)).astype(np.float32) for rows in (2, 3)]
    target = np.empty((2, 8), np.float32)
    outs, _ = compute(layer, [xs[0], _read_only_unaligned(xs[1])], [target, None])
    assert outs[0] is target
    for x, out in zip(xs, outs, strict=True):
        assert out.tobytes() == layer.apply(x).tobytes()
