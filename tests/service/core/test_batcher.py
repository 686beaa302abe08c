"""The dynamic batcher in-process: a real prepared layer, a real compute thread, no server.

The end-to-end tests see batching only through a socket, where timing decides what joins
what. Here requests are queued on the batcher's own event loop in a known order (most of
them before its loop even starts), so batch forming and closing, the adaptive idle turns,
expiry, flush/close, failures and ``out=`` targets are checked exactly. The few wall-clock
checks are bounds far from real speeds (a 10 s delay answered "well under" it), never
thresholds near them: the test machines are noisy.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from normserve.kernels import PreparedLayer, prepare
from normserve.kernels.dtypes import DATATYPES
from normserve.service.batching import batcher as batcher_module
from normserve.service.batching.batcher import (
    _IDLE_TURNS,
    INLINE_MAX_WORK,
    Batcher,
    Closed,
    QueueFull,
    Timing,
)

#: A delay no test ever waits for: an answer "well under" it shows the batch did not wait.
LONG_DELAY_US = 10_000_000
#: What "well under LONG_DELAY_US" means: a fifth of it, far above any real run time.
WELL_UNDER_S = LONG_DELAY_US / 1e6 / 5

#: Rows of 1024 features that make a batch too large for the event loop: the compute thread's.
LARGE = INLINE_MAX_WORK // 1024 + 1

Batch = tuple[int, int, float]  # what on_batch sees: (rows, requests, compute seconds)


@functools.cache
def layer_norm(n: int) -> PreparedLayer:
    """A layer norm over ``n`` features with non-trivial affine parameters (cached: the
    kernels are compiled, or read from Numba's cache, once per process)."""
    rng = np.random.default_rng(n)
    return prepare("layer_norm", {"weight": rng.standard_normal(n) + 1.0,
                                  "bias": rng.standard_normal(n)}, normalized_shape=[n])


def rows_of(n: int, rows: int, dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    """Distinct, seeded input rows: a caller given another caller's rows would notice."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, n)) * (1 + seed) + seed).astype(dtype)


def make(executor: ThreadPoolExecutor, n: int = 16, **settings: Any
         ) -> tuple[Batcher, list[Batch]]:
    """A batcher over ``layer_norm(n)`` recording every batch it runs."""
    batches: list[Batch] = []
    kwargs: dict[str, Any] = {"max_batch_size": 8, "max_queue_delay_us": LONG_DELAY_US,
                              "max_queue_size": 64}
    kwargs.update(settings)
    batcher = Batcher(layer_norm(n), executor,
                      on_batch=lambda r, q, s: batches.append((r, q, s)), **kwargs)
    return batcher, batches


def shapes(batches: list[Batch]) -> list[tuple[int, int]]:
    return [(rows, requests) for rows, requests, _ in batches]


def assert_bitwise(out: np.ndarray, layer: PreparedLayer, x: np.ndarray) -> None:
    """``out`` is exactly what the layer gives ``x`` on its own: same dtype, shape, bits."""
    ref = layer.apply(x)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert out.tobytes() == ref.tobytes()


async def queued_then_started(batcher: Batcher, xs: list[np.ndarray], timeout_s: float = 30.0
                              ) -> list[tuple[np.ndarray, Timing]]:
    """Submit every input, let each reach the queue, then start the loop: the batcher sees
    them all at once, in this order, whatever the machine's speed."""
    tasks = [asyncio.create_task(batcher.submit(x, timeout_s)) for x in xs]
    await turns(1)
    assert batcher.depth == len(xs)
    batcher.start()
    try:
        return await asyncio.gather(*tasks)
    finally:
        await batcher.close()


async def turns(k: int) -> None:
    """Let the event loop go round ``k`` times."""
    for _ in range(k):
        await asyncio.sleep(0)


async def after_turns(k: int, submit: Callable[[], Awaitable[Any]]) -> Any:
    await turns(k)
    return await submit()


# --- batch forming -------------------------------------------------------------------------

def test_queued_requests_form_full_batches_and_the_overflow_goes_next(executor) -> None:
    """Six 1-row requests with max_batch_size 4: a batch of 4 (in arrival order), then 2."""
    batcher, batches = make(executor, max_batch_size=4)
    xs = [rows_of(16, 1, seed=i) for i in range(6)]
    results = asyncio.run(queued_then_started(batcher, xs))
    assert shapes(batches) == [(4, 4), (2, 2)]
    assert [t.batch_rows for _, t in results] == [4, 4, 4, 4, 2, 2]
    for x, (out, _) in zip(xs, results, strict=True):
        assert_bitwise(out, batcher.layer, x)


def test_a_batch_takes_only_the_requests_that_fit(executor) -> None:
    """Rows 3, 2, 2 with max 4: the 2s do not fit beside the 3, and go together next."""
    batcher, batches = make(executor, max_batch_size=4)
    xs = [rows_of(16, r, seed=i) for i, r in enumerate((3, 2, 2))]
    results = asyncio.run(queued_then_started(batcher, xs))
    assert shapes(batches) == [(3, 1), (4, 2)]
    for x, (out, _) in zip(xs, results, strict=True):
        assert_bitwise(out, batcher.layer, x)


def test_a_request_larger_than_max_batch_size_runs_alone(executor) -> None:
    """10 rows with max 4 run as one batch of 10; the small ones queued around it do not join."""
    batcher, batches = make(executor, max_batch_size=4)
    xs = [rows_of(16, 1, seed=0), rows_of(16, 10, seed=1), rows_of(16, 1, seed=2)]
    results = asyncio.run(queued_then_started(batcher, xs))
    assert shapes(batches) == [(2, 2), (10, 1)]  # the two 1-row ones batch, ahead of the 10
    for x, (out, _) in zip(xs, results, strict=True):
        assert_bitwise(out, batcher.layer, x)


def test_batching_off_runs_every_request_alone(executor) -> None:
    batcher, batches = make(executor, batching=False)
    xs = [rows_of(16, 2, seed=i) for i in range(3)]
    results = asyncio.run(queued_then_started(batcher, xs))
    assert shapes(batches) == [(2, 1)] * 3
    for x, (out, _) in zip(xs, results, strict=True):
        assert_bitwise(out, batcher.layer, x)


def test_requests_of_different_dtype_or_sample_shape_are_not_mixed(executor) -> None:
    """The batch key is (dtype, per-sample shape): the FP32 (16,) requests batch together,
    the FP64 one and the (2, 16) one each run apart, all in arrival order of their first."""
    batcher, batches = make(executor)
    xs = [rows_of(16, 1, np.float32, 0), rows_of(16, 1, np.float64, 1),
          rows_of(16, 1, np.float32, 2), rows_of(32, 1, np.float32, 3).reshape(1, 2, 16),
          rows_of(16, 1, np.float32, 4)]
    results = asyncio.run(queued_then_started(batcher, xs))
    assert shapes(batches) == [(3, 3), (1, 1), (1, 1)]
    assert [t.batch_rows for _, t in results] == [3, 1, 3, 1, 3]
    for x, (out, _) in zip(xs, results, strict=True):
        assert_bitwise(out, batcher.layer, x)


@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize(("n", "row_counts"), [(16, (1, 3, 2, 5, 1)),
                                               (1024, (LARGE // 4, LARGE // 2, 4, LARGE // 4))],
                         ids=["inline", "compute-thread"])
def test_every_caller_gets_exactly_its_own_rows(executor, datatype: str, n: int,
                                                row_counts: tuple[int, ...]) -> None:
    """One batch of requests of different sizes; each answer is bitwise the layer's answer
    to that request alone. Small batches run on the loop, large ones on the compute thread
    (both paths, every datatype)."""
    dtype = DATATYPES[datatype]
    batcher, batches = make(executor, n=n, max_batch_size=2 * LARGE)
    xs = [rows_of(n, r, dtype, seed=i) for i, r in enumerate(row_counts)]
    total = sum(row_counts)
    inline = batcher.layer.work((total, n)) <= INLINE_MAX_WORK
    assert inline == (n == 16)  # the ids say which path each case takes
    results = asyncio.run(queued_then_started(batcher, xs))
    assert shapes(batches) == [(total, len(xs))]
    for x, (out, timing) in zip(xs, results, strict=True):
        assert_bitwise(out, batcher.layer, x)
        assert timing.batch_rows == total


# --- closing a batch: adaptive idle turns vs the deadline ----------------------------------

def test_adaptive_answers_a_lone_request_without_waiting_the_delay(executor) -> None:
    batcher, batches = make(executor, adaptive=True)
    x = rows_of(16, 1)

    async def main() -> float:
        batcher.start()
        t0 = time.perf_counter()
        out, _ = await batcher.submit(x, 30.0)
        elapsed = time.perf_counter() - t0
        assert_bitwise(out, batcher.layer, x)
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < WELL_UNDER_S
    assert shapes(batches) == [(1, 1)]


def test_a_lone_known_callers_request_runs_in_its_own_task(executor) -> None:
    """With the batcher idle and no one else known, a caller's request runs at once in the
    caller's task (no time queued, the loop never woken); bitwise what the queue gives. Not
    so for a request of no named caller (others may be on their way), nor for one whose
    kernel is too large to run on the event loop (the compute thread's)."""
    batcher, batches = make(executor, n=1024, adaptive=True, max_batch_size=2 * LARGE)
    small, large = rows_of(1024, 1), rows_of(1024, LARGE)
    assert batcher.layer.work(large.shape) > INLINE_MAX_WORK

    async def main() -> list[tuple[np.ndarray, Timing]]:
        batcher.start()
        await turns(1)
        wake = batcher._waiter
        results = [await batcher.submit(small, 30.0, caller="a")]
        assert wake is batcher._waiter and not wake.done()  # the loop slept throughout
        results.append(await batcher.submit(small, 30.0))
        results.append(await batcher.submit(large, 30.0, caller="a"))
        await batcher.close()
        return results

    (now, now_t), (queued, queued_t), (big, big_t) = asyncio.run(main())
    assert now_t.queue_s == 0.0 and now_t.batch_rows == 1
    assert queued_t.queue_s > 0.0 and big_t.queue_s > 0.0
    assert shapes(batches) == [(1, 1), (1, 1), (LARGE, 1)]
    assert now.tobytes() == queued.tobytes()
    assert_bitwise(now, batcher.layer, small)
    assert_bitwise(big, batcher.layer, large)


def test_adaptive_keeps_a_batch_open_while_requests_keep_arriving(executor) -> None:
    """A request every loop turn resets the idle count: all six join one batch."""
    batcher, batches = make(executor, adaptive=True, max_batch_size=64)
    xs = [rows_of(16, 1, seed=i) for i in range(6)]

    async def main() -> list[tuple[np.ndarray, Timing]]:
        batcher.start()
        await turns(1)  # the loop is asleep, waiting for work
        results = await asyncio.gather(*(
            after_turns(i, functools.partial(batcher.submit, x, 30.0))
            for i, x in enumerate(xs)))
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert shapes(batches) == [(6, 6)]
    for x, (out, _) in zip(xs, results, strict=True):
        assert_bitwise(out, batcher.layer, x)


def test_adaptive_closes_after_the_idle_turns(executor) -> None:
    """A request arriving long after the idle turns ran out misses the batch, although the
    delay (10 s) is far from over: the first request did not wait for it."""
    batcher, batches = make(executor, adaptive=True, max_batch_size=64)
    late = 10 * _IDLE_TURNS

    async def main() -> float:
        batcher.start()
        await turns(1)
        t0 = time.perf_counter()
        await asyncio.gather(batcher.submit(rows_of(16, 1), 30.0),
                             after_turns(late, lambda: batcher.submit(rows_of(16, 1), 30.0)))
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < WELL_UNDER_S
    assert shapes(batches) == [(1, 1), (1, 1)]


async def two_rounds(batcher: Batcher, *callers: str) -> None:
    """Each caller asks, is answered, and comes back once: callers seen to return. Batches:
    (1, 1), (1, 1), then one of them all. The first caller, found with the batcher idle and
    no one else known, runs at once in its own task; the others then wait their idle turns
    (an answered caller, never seen back yet, is not waited for); in the second round every
    caller known comes back, and the batch closes when the last one has."""
    for _ in range(2):
        await asyncio.gather(*(batcher.submit(rows_of(16, 1), 30.0, caller=c) for c in callers))


def test_adaptive_waits_for_a_caller_coming_back(executor) -> None:
    """Callers "a" and "b" come back after each answer. "a" asks again; "b" comes back many
    turns later (as a gRPC call does, through grpc's poller thread) and still joins, and
    the batch runs as soon as it has: "a" did not wait out the 10 s delay."""
    batcher, batches = make(executor, adaptive=True, max_batch_size=64)
    xs = [rows_of(16, 1, seed=i) for i in range(4)]

    async def main() -> tuple[float, list[tuple[np.ndarray, Timing]]]:
        batcher.start()
        await turns(1)
        await two_rounds(batcher, "a", "b")
        t0 = time.perf_counter()
        results = await asyncio.gather(
            batcher.submit(xs[2], 30.0, caller="a"),
            after_turns(10 * _IDLE_TURNS, lambda: batcher.submit(xs[3], 30.0, caller="b")))
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed, results

    elapsed, results = asyncio.run(main())
    assert shapes(batches) == [(1, 1), (1, 1), (2, 2), (2, 2)]
    assert elapsed < WELL_UNDER_S
    for x, (out, _) in zip(xs[2:], results, strict=True):
        assert_bitwise(out, batcher.layer, x)


def test_adaptive_does_not_wait_for_the_caller_itself_nor_for_one_gone(
        executor, monkeypatch) -> None:
    """A lone caller's next request runs at once (it cannot come back while it waits), as
    does one whose only other caller has stayed away past its window: neither waits out
    the 10 s delay."""
    monkeypatch.setattr(batcher_module, "MAX_RETURN_S", 0.05)
    batcher, batches = make(executor, adaptive=True, max_batch_size=64)

    async def main() -> list[float]:
        batcher.start()
        await turns(1)
        await two_rounds(batcher, "a", "b")
        await asyncio.sleep(0.2)  # "b" is gone
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            await batcher.submit(rows_of(16, 1), 30.0, caller="a")
            times.append(time.perf_counter() - t0)
        await batcher.close()
        return times

    assert max(asyncio.run(main())) < WELL_UNDER_S
    assert shapes(batches) == [(1, 1), (1, 1), (2, 2), (1, 1), (1, 1), (1, 1)]


def test_adaptive_does_not_wait_for_a_connection_per_request(executor) -> None:
    """A client that opens a connection per request (curl, httpx.post) is a new caller each
    time, and the old one never comes back: one never seen to return is not waited for."""
    batcher, batches = make(executor, adaptive=True, max_batch_size=64)

    async def main() -> float:
        batcher.start()
        await turns(1)
        t0 = time.perf_counter()
        for i in range(4):
            await batcher.submit(rows_of(16, 1), 30.0, caller=("127.0.0.1", 50000 + i))
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < WELL_UNDER_S
    assert shapes(batches) == [(1, 1)] * 4
    assert not batcher._in_progress and not batcher._away  # nothing kept for them


def test_adaptive_does_not_wait_for_callers_expected_after_the_deadline(executor) -> None:
    """"a" and "b" think 0.1 s between requests; the delay is 20 ms. "b", answered a moment
    ago, is expected back ~0.1 s later, long past "a"'s deadline: "a"'s batch closes after
    its idle turns (it does not wait out the 20 ms), and "b" gets a batch of its own. (The
    first round is two batches of one, as in ``two_rounds``.)"""
    batcher, batches = make(executor, adaptive=True, max_batch_size=64,
                            max_queue_delay_us=20_000)

    async def main() -> None:
        batcher.start()
        await turns(1)
        for pause in (0.1, 0.0):
            await asyncio.gather(*(batcher.submit(rows_of(16, 1), 30.0, caller=c)
                                   for c in ("a", "b")))
            await asyncio.sleep(pause)
        await asyncio.gather(
            batcher.submit(rows_of(16, 1), 30.0, caller="a"),
            after_turns(10 * _IDLE_TURNS,
                        lambda: batcher.submit(rows_of(16, 1), 30.0, caller="b")))
        await batcher.close()

    asyncio.run(main())
    assert shapes(batches) == [(1, 1), (1, 1), (2, 2), (1, 1), (1, 1)]


def test_adaptive_closes_at_once_when_every_caller_known_is_in_the_batch(executor) -> None:
    """"a", a lone client (no other caller answered lately), has no one to wait for: its
    batch runs without the idle turns, so "c", a caller never seen before, arriving one
    loop turn later, gets the next batch. Requests of no known caller still wait the idle
    turns (the last batch): one arriving a turn later joins them."""
    batcher, batches = make(executor, adaptive=True, max_batch_size=64)

    async def main() -> None:
        batcher.start()
        await turns(1)
        await batcher.submit(rows_of(16, 1), 30.0, caller="a")
        await asyncio.gather(
            batcher.submit(rows_of(16, 1), 30.0, caller="a"),
            after_turns(1, lambda: batcher.submit(rows_of(16, 1), 30.0, caller="c")))
        await asyncio.gather(
            batcher.submit(rows_of(16, 1), 30.0),
            after_turns(1, lambda: batcher.submit(rows_of(16, 1), 30.0)))
        await batcher.close()

    asyncio.run(main())
    assert shapes(batches) == [(1, 1), (1, 1), (1, 1), (2, 2)]


def test_a_caller_with_requests_in_progress_is_not_waited_for(executor) -> None:
    """"a" has two requests queued that cannot share a batch (FP32 and FP64). The first
    one's answer leaves "a" with one in progress, not a caller to wait for: the second
    batch closes after its idle turns, not at the 10 s delay."""
    batcher, batches = make(executor, adaptive=True, max_batch_size=64)
    xs = [rows_of(16, 1, np.float32), rows_of(16, 1, np.float64)]

    async def main() -> float:
        tasks = [asyncio.create_task(batcher.submit(x, 30.0, caller="a")) for x in xs]
        await turns(1)
        t0 = time.perf_counter()
        batcher.start()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < WELL_UNDER_S
    assert shapes(batches) == [(1, 1), (1, 1)]


def test_deadline_mode_waits_for_the_delay(executor) -> None:
    """A lone request waits the whole max_queue_delay_us for company (Triton's way)."""
    delay_us = 300_000
    batcher, batches = make(executor, adaptive=False, max_queue_delay_us=delay_us)

    async def main() -> tuple[float, Timing]:
        batcher.start()
        t0 = time.perf_counter()
        _, timing = await batcher.submit(rows_of(16, 1), 30.0)
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed, timing

    elapsed, timing = asyncio.run(main())
    assert elapsed >= delay_us / 1e6
    assert timing.queue_s >= delay_us / 1e6
    assert elapsed < delay_us / 1e6 + WELL_UNDER_S
    assert shapes(batches) == [(1, 1)]


def test_deadline_mode_lets_a_late_request_join_and_a_full_batch_closes_at_once(
        executor) -> None:
    """The request that adaptive mode leaves out (many turns late) joins in deadline mode;
    with it the batch is full, so it runs without waiting out the 10 s delay."""
    batcher, batches = make(executor, adaptive=False, max_batch_size=2)
    xs = [rows_of(16, 1, seed=0), rows_of(16, 1, seed=1)]

    async def main() -> tuple[float, list[tuple[np.ndarray, Timing]]]:
        batcher.start()
        await turns(1)
        t0 = time.perf_counter()
        results = await asyncio.gather(
            batcher.submit(xs[0], 30.0),
            after_turns(10 * _IDLE_TURNS, lambda: batcher.submit(xs[1], 30.0)))
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed, results

    elapsed, results = asyncio.run(main())
    assert elapsed < WELL_UNDER_S
    assert shapes(batches) == [(2, 2)]
    for x, (out, _) in zip(xs, results, strict=True):
        assert_bitwise(out, batcher.layer, x)


# --- refusals, expiry, flush and close ------------------------------------------------------

def test_a_full_queue_refuses_at_once_and_close_runs_what_is_queued(executor) -> None:
    batcher, batches = make(executor, adaptive=False, max_queue_size=2)
    depths: list[int] = []
    batcher.on_depth = depths.append
    xs = [rows_of(16, 1, seed=0), rows_of(16, 2, seed=1)]

    async def main() -> list[tuple[np.ndarray, Timing]]:
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(x, 30.0)) for x in xs]
        await turns(1)
        assert batcher.depth == 2
        t0 = time.perf_counter()
        with pytest.raises(QueueFull):
            await batcher.submit(rows_of(16, 1, seed=2), 30.0)
        assert time.perf_counter() - t0 < WELL_UNDER_S
        assert not any(t.done() for t in tasks)  # still waiting out the 10 s delay
        await batcher.close()  # stops the wait: the queued batch runs now
        assert all(t.done() for t in tasks)
        with pytest.raises(Closed):
            await batcher.submit(rows_of(16, 1), 30.0)
        return [t.result() for t in tasks]

    results = asyncio.run(main())
    assert shapes(batches) == [(3, 2)]
    for x, (out, _) in zip(xs, results, strict=True):
        assert_bitwise(out, batcher.layer, x)
    assert depths[:2] == [1, 2] and depths[-1] == 0


def test_an_expired_request_leaves_the_queue_and_costs_nothing(executor) -> None:
    """A queued request past its timeout raises TimeoutError and leaves the queue (the
    depth says so, and the batch that runs holds only the request still waiting)."""
    batcher, batches = make(executor, adaptive=False, max_batch_size=8)
    depths: list[int] = []
    batcher.on_depth = depths.append
    keep = rows_of(16, 2, seed=1)

    async def main() -> tuple[np.ndarray, float]:
        batcher.start()
        t0 = time.perf_counter()
        doomed = asyncio.create_task(batcher.submit(rows_of(16, 1, seed=0), 0.05))
        kept = asyncio.create_task(batcher.submit(keep, 30.0))
        with pytest.raises(TimeoutError):
            await doomed
        assert batcher.depth <= 1
        out, _ = await kept
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return out, elapsed

    out, elapsed = asyncio.run(main())
    assert_bitwise(out, batcher.layer, keep)
    assert shapes(batches) == [(2, 1)]
    assert elapsed < WELL_UNDER_S  # the batch's first request expired: no reason to wait on
    assert depths[:3] == [1, 2, 1] and depths[-1] == 0


def test_a_shorter_timeout_queued_after_a_longer_one_still_expires_on_time(executor) -> None:
    """The batcher keeps one timer, at the earliest deadline in flight: a request with a
    short timeout queued behind one with a long timeout moves it earlier; each expiry sets
    it for the next deadline, and the requests still queued are answered."""
    batcher, batches = make(executor, adaptive=False, max_batch_size=8)
    xs = [rows_of(16, 1, seed=i) for i in range(3)]

    async def main() -> tuple[list[float], np.ndarray]:
        batcher.start()
        t0 = time.perf_counter()
        patient = asyncio.create_task(batcher.submit(xs[0], 30.0))
        short = asyncio.create_task(batcher.submit(xs[1], 0.05))
        shorter = asyncio.create_task(batcher.submit(xs[2], 0.02))
        expired_at = []
        for task in (shorter, short):
            with pytest.raises(TimeoutError):
                await task
            expired_at.append(time.perf_counter() - t0)
        assert batcher.depth == 1 and not patient.done()
        batcher.flush()
        out, _ = await patient
        await batcher.close()
        return expired_at, out

    expired_at, out = asyncio.run(main())
    assert expired_at[0] < WELL_UNDER_S and expired_at[1] < WELL_UNDER_S
    assert expired_at[0] <= expired_at[1]
    assert_bitwise(out, batcher.layer, xs[0])
    assert shapes(batches) == [(1, 1)]


def test_flush_runs_what_is_queued_without_waiting(executor) -> None:
    """SIGTERM's flush: the queued requests run at once, as one batch, and later ones run
    without waiting for company."""
    batcher, batches = make(executor, adaptive=False)
    xs = [rows_of(16, 1, seed=i) for i in range(3)]

    async def main() -> tuple[float, list[tuple[np.ndarray, Timing]]]:
        batcher.start()
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(batcher.submit(x, 30.0)) for x in xs]
        await turns(1)
        batcher.flush()
        results = await asyncio.gather(*tasks)
        results.append(await batcher.submit(xs[0], 30.0))
        elapsed = time.perf_counter() - t0
        await batcher.close()
        return elapsed, results

    elapsed, results = asyncio.run(main())
    assert elapsed < WELL_UNDER_S
    assert shapes(batches) == [(3, 3), (1, 1)]
    for x, (out, _) in zip([*xs, xs[0]], results, strict=True):
        assert_bitwise(out, batcher.layer, x)


def test_close_of_an_idle_batcher_returns_and_refuses_new_requests(executor) -> None:
    batcher, batches = make(executor)

    async def main() -> None:
        batcher.start()
        await turns(2)
        await asyncio.wait_for(batcher.close(), WELL_UNDER_S)
        with pytest.raises(Closed):
            await batcher.submit(rows_of(16, 1), 30.0)

    asyncio.run(main())
    assert batches == []


# --- failures ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad_rows", [1, INLINE_MAX_WORK // 1000 + 1],
                         ids=["inline", "compute-thread"])
def test_a_kernel_failure_fails_only_its_batch(executor, bad_rows: int) -> None:
    """Rows the layer refuses (1000 features for a 16-feature norm) fail their own batch
    with the kernel's error; the good requests queued around them are answered, and the
    batcher goes on serving."""
    batcher, batches = make(executor)
    bad = rows_of(1000, bad_rows, seed=9)
    assert (batcher.layer.work(bad.shape) > INLINE_MAX_WORK) == (bad_rows > 1)
    good = [rows_of(16, 1, seed=0), rows_of(16, 3, seed=1)]

    async def main() -> list[Any]:
        tasks = [asyncio.create_task(batcher.submit(x, 30.0)) for x in (good[0], bad, good[1])]
        await turns(1)
        batcher.start()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        results.append(await batcher.submit(good[0], 30.0))
        await batcher.close()
        return results

    first, failed, second, after = asyncio.run(main())
    assert isinstance(failed, ValueError) and "normalized_shape" in str(failed)
    for x, (out, _) in zip([good[0], good[1], good[0]], [first, second, after], strict=True):
        assert_bitwise(out, batcher.layer, x)
    assert shapes(batches) == [(4, 2), (1, 1)]  # the failed batch is not reported as run


def test_small_batches_run_on_the_loop_and_large_ones_on_the_compute_thread(executor) -> None:
    """With the compute thread held busy, a small batch is still answered (it runs inline)
    while a large one waits for the thread, then finishes once the thread is free."""
    batcher, batches = make(executor, n=1024, max_batch_size=LARGE)
    small, large = rows_of(1024, 2, seed=0), rows_of(1024, LARGE, seed=1)
    assert batcher.layer.work(small.shape) <= INLINE_MAX_WORK < batcher.layer.work(large.shape)
    gate = threading.Event()

    async def main() -> tuple[np.ndarray, np.ndarray]:
        busy = asyncio.get_running_loop().run_in_executor(executor, gate.wait, 30.0)
        batcher.start()
        try:
            small_out, _ = await asyncio.wait_for(batcher.submit(small, 30.0), WELL_UNDER_S)
            waiting = asyncio.create_task(batcher.submit(large, 30.0))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # queued behind the busy compute thread
        finally:
            gate.set()
        await busy
        large_out, _ = await waiting
        await batcher.close()
        return small_out, large_out

    small_out, large_out = asyncio.run(main())
    assert_bitwise(small_out, batcher.layer, small)
    assert_bitwise(large_out, batcher.layer, large)
    assert shapes(batches) == [(2, 1), (LARGE, 1)]


def test_a_request_that_expires_while_its_batch_computes(executor) -> None:
    """Timed out on the compute thread: the caller gets TimeoutError at its deadline, the
    batch still completes, and the batcher keeps serving."""
    batcher, batches = make(executor, n=1024, max_batch_size=LARGE)
    large = rows_of(1024, LARGE, seed=1)
    gate = threading.Event()

    async def main() -> None:
        busy = asyncio.get_running_loop().run_in_executor(executor, gate.wait, 30.0)
        batcher.start()
        try:
            with pytest.raises(TimeoutError):
                await batcher.submit(large, 0.05)
            assert batcher.depth == 0  # it had left the queue: it was running
        finally:
            gate.set()
        await busy
        out, _ = await batcher.submit(large, 30.0)
        assert_bitwise(out, batcher.layer, large)
        await batcher.close()

    asyncio.run(main())
    assert shapes(batches) == [(LARGE, 1), (LARGE, 1)]


# --- what the batcher reports, and where it writes -----------------------------------------

def test_on_batch_and_timing_report_rows_requests_and_compute_time(executor) -> None:
    batcher, batches = make(executor, n=1024, max_batch_size=256)
    xs = [rows_of(1024, r, seed=i) for i, r in enumerate((16, 32, 8))]
    results = asyncio.run(queued_then_started(batcher, xs))
    assert len(batches) == 1
    rows, requests, compute_s = batches[0]
    assert (rows, requests) == (56, 3)
    assert isinstance(compute_s, float) and 0 < compute_s < WELL_UNDER_S
    for _, timing in results:
        assert timing.batch_rows == 56
        assert timing.compute_s == compute_s  # one kernel call, shared by the batch
        assert timing.queue_s >= 0


@pytest.mark.parametrize("n", [16, 1024], ids=["inline", "compute-thread"])
def test_out_targets_are_written_and_returned(executor, n: int) -> None:
    """Shared-memory style ``out=`` targets: a lone request's target (the kernel writes it
    directly), and targets of requests batched with one another and with a request that
    has none; inputs include a read-only view of bytes, as a binary body gives."""
    rows = LARGE // 3 + 1 if n == 1024 else 2
    batcher, batches = make(executor, n=n, max_batch_size=LARGE + 3)
    layer = batcher.layer
    body = rows_of(n, rows, seed=3).tobytes()
    xs = [rows_of(n, rows, seed=0), rows_of(n, rows, seed=1),
          np.frombuffer(body, np.float32).reshape(rows, n)]
    assert not xs[2].flags.writeable
    targets = [np.full((rows, n), np.nan, np.float32), None,
               np.full((rows, n), np.nan, np.float32)]
    alone_x = rows_of(n, rows, seed=4)
    alone = np.full((rows, n), np.nan, np.float32)

    async def main() -> list[np.ndarray]:
        tasks = [asyncio.create_task(batcher.submit(x, 30.0, t))
                 for x, t in zip(xs, targets, strict=True)]
        await turns(1)
        batcher.start()
        outs = [out for out, _ in await asyncio.gather(*tasks)]
        out, _ = await batcher.submit(alone_x, 30.0, alone)
        outs.append(out)
        await batcher.close()
        return outs

    outs = asyncio.run(main())
    assert shapes(batches) == [(3 * rows, 3), (rows, 1)]
    assert outs[0] is targets[0] and outs[2] is targets[2] and outs[3] is alone
    for x, out in zip([*xs, alone_x], outs, strict=True):
        assert_bitwise(out, layer, x)
