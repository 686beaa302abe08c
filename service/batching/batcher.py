"""Dynamic batching for one model (SPEC 4): concurrent requests with the same per-sample shape
and dtype are joined along axis 0, run as one kernel call off the event loop, and split back.
A model of several inputs (a fused residual add + norm: ``input`` and ``residual``) has
every input joined row-aligned, and every output split back the same way.

A batch closes when it holds ``max_batch_size`` rows or when its oldest request has waited
``max_queue_delay_us``, or earlier in adaptive mode (``_gather`` says when). A request larger
than ``max_batch_size`` runs alone. The queue is bounded: a full queue refuses at once (the
caller answers 503). Each request gets the rows at its own offsets of the output, so every
client gets exactly its own rows back.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normserve.kernels import PreparedLayer

from .callers import CallerReturns
from .compute import compute


class QueueFull(Exception):
    """The model's queue holds ``max_queue_size`` requests already."""


class Closed(Exception):
    """The model is being removed or the server is shutting down."""


@dataclass(slots=True)
class Timing:
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_rows: int = 0


@dataclass(eq=False, slots=True)
class _Pending:
    xs: tuple[np.ndarray, ...]  # one array per input of the layer, rows aligned
    key: tuple
    future: asyncio.Future
    enqueued: float
    deadline: float  # perf_counter() after which the caller gets TimeoutError
    out: tuple[np.ndarray | None, ...] | None = None  # where the caller wants its rows
    timing: Timing = field(default_factory=Timing)

    @property
    def rows(self) -> int:
        return self.xs[0].shape[0]


#: Batches of up to this much work (``PreparedLayer.work``: about one unit per element, or per
#: multiply-add for the linear layers) run on the event loop itself: their (serial) kernel
#: is quicker than handing them to the compute thread and back while the other core is busy
#: with requests (bench-results/notes.md has the runs that set it). Larger ones go to
#: the compute thread, so that the event loop goes on reading requests meanwhile.
INLINE_MAX_WORK = 1 << 18

#: Turns of the event loop without a new request after which an adaptive batch closes.
_IDLE_TURNS = 3

#: The adaptive wait for callers coming back (``callers.CallerReturns`` says how they are
#: used): a caller not back within RETURN_GAPS mean return gaps (at least MIN_RETURN_DELAYS
#: times ``max_queue_delay_us``, at most MAX_RETURN_S) is taken to have gone; GAP_WEIGHT is
#: the newest gap's weight in the running mean.
RETURN_GAPS = 2
MIN_RETURN_DELAYS = 4
MAX_RETURN_S = 1.0
GAP_WEIGHT = 1 / 8

BatchObserver = Callable[[int, int, float], None]  # (rows, requests, compute seconds)


class Batcher(CallerReturns):
    """The queue and the batching loop of one model. What it knows of callers coming back
    (for the adaptive wait) is ``CallerReturns``'s job; the kernel call is ``compute``'s."""

    def __init__(self, layer: PreparedLayer, executor: Executor, *, max_batch_size: int,
                 max_queue_delay_us: int, max_queue_size: int, batching: bool = True,
                 adaptive: bool = True, on_batch: BatchObserver | None = None) -> None:
        super().__init__(max_delay_s=max_queue_delay_us / 1e6, return_gaps=RETURN_GAPS,
                         min_return_delays=MIN_RETURN_DELAYS, max_return_s=MAX_RETURN_S,
                         gap_weight=GAP_WEIGHT)
        self.layer = layer
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.batching = batching
        self.adaptive = adaptive
        self.on_batch = on_batch
        #: Told the queue's depth whenever it changes (the pending-requests gauge).
        self.on_depth: Callable[[int], None] | None = None
        self._queue: deque[_Pending] = deque()
        self._running: list[_Pending] = []  # the batch being computed
        self._waiter: asyncio.Future | None = None  # the loop sleeps on this
        #: While the loop gathers a batch: its key, its rows queued, its deadline (submit
        #: wakes the loop only when one of these changes what the loop would do).
        self._gathering: tuple[tuple, float] | None = None
        self._gathered_rows = 0
        #: One timer for every request's timeout, at the earliest deadline in flight (a
        #: timer per request cost each request a heap push and a cancel).
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = 0.0
        self._closing = False
        self._flushing = False  # set on SIGTERM: stop waiting for fuller batches
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, x: np.ndarray | tuple[np.ndarray, ...], timeout_s: float,
                     out: np.ndarray | tuple[np.ndarray | None, ...] | None = None,
                     caller: Hashable | None = None) -> tuple[Any, Timing]:
        """This request's output rows, after batching; QueueFull, Closed or asyncio.TimeoutError.

        ``x``: the input, or a tuple of the inputs (one per ``layer.input_names``, of one
        shape and dtype: their rows are joined row-aligned with other requests'); the
        answer is then a tuple of every output's rows (else the first output's). With
        ``out`` (C-contiguous, the output's shape and dtype; a tuple of them, None for an
        output without one, when ``x`` is a tuple) the rows are written there and ``out``
        is returned: a request alone in its batch has the kernel write into it directly.
        The timeout is kept by one timer of the batcher (``_expire``), not one per request.
        ``caller`` names the client (its connection), for the adaptive wait.
        """
        if self._closing:
            raise Closed
        if len(self._queue) >= self.max_queue_size:
            raise QueueFull
        bare = type(x) is not tuple
        if bare:
            xs, out = (x,), None if out is None else (out,)
        else:
            xs = x
        now = time.perf_counter()
        caller = caller if self.adaptive and self.batching else None  # only its wait uses them
        if caller is not None:
            self.caller_arrived(caller)
        try:
            if self._runs_now(xs, now, caller is not None):
                out, timing = self._run_now(xs, out)
            else:
                first = xs[0]
                key = (first.dtype, first.shape[1:]) if len(xs) == 1 else \
                    tuple((a.dtype, a.shape[1:]) for a in xs)
                item = _Pending(xs, key, asyncio.get_running_loop().create_future(), now,
                                now + timeout_s, out)
                self._queue.append(item)
                self._depth_changed()
                if self._expiry is None or item.deadline < self._expiry_at:
                    self._arm_expiry(item.deadline)
                if self._waiter is not None and self._wakes(item, now):
                    self._wake_loop()
                out, timing = await item.future, item.timing
        finally:
            if caller is not None:
                self.caller_left(caller)
        return (out[0] if bare else out), timing

    def _runs_now(self, xs: tuple[np.ndarray, ...], now: float, counted: bool) -> bool:
        """Whether this request would be a batch of its own, run at once on the event loop:
        the loop idles (nothing queued, running or gathered), the kernel is small enough to
        run inline, and no one is to be waited for (``_gather``'s rules). It then runs in
        the caller's own task: handing it to the loop's task and its answer back costs two
        turns of the event loop, a sizeable part of a lone small request. ``counted``: the
        request's caller is known (an unnamed caller's request waits its idle turns, as
        ``_gather`` has it, since others may be on their way)."""
        if self._waiter is None or self._gathering is not None or self._queue:
            return False
        first = xs[0]
        rows = first.shape[0]
        if self.layer.work((rows, *first.shape[1:])) > INLINE_MAX_WORK:
            return False
        if not self.batching or rows >= self.max_batch_size or self._stopping:
            return True
        return self.adaptive and counted and self.all_here(1) and \
            self.caller_due(now, now + self.max_delay_s) is None

    def _run_now(self, xs: tuple[np.ndarray, ...], out: tuple[np.ndarray | None, ...] | None
                 ) -> tuple[Any, Timing]:
        """``_runs_now``'s request: its outputs and timing, as ``_run`` gives a batch of one."""
        outs, compute_s = compute(self.layer, (xs,), (out,))
        rows = xs[0].shape[0]
        if self.on_batch is not None:
            self.on_batch(rows, 1, compute_s)
        return outs[0], Timing(0.0, compute_s, rows)

    def _wakes(self, item: _Pending, now: float) -> bool:
        """Whether a new request changes what the sleeping loop would do: it idles (any
        request starts a batch), or the batch it gathers is now full, or (adaptive) no
        caller it waits for is still due. Otherwise it would look and sleep again."""
        if self._gathering is None:
            return True
        key, deadline = self._gathering
        if item.key == key:
            self._gathered_rows += item.rows
            if self._gathered_rows >= self.max_batch_size:
                return True
        return self.adaptive and self.caller_due(now, deadline) is None

    def _arm_expiry(self, deadline: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = deadline
        self._expiry = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.perf_counter()), self._expire)

    def _expire(self) -> None:
        """Time out every request in flight past its deadline (one never started leaves the
        queue, so it costs nothing), and set the timer for the next deadline."""
        self._expiry = None
        now = time.perf_counter()
        nearest = None
        left = False
        for item in (*self._queue, *self._running):
            if item.future.done():
                continue
            if item.deadline <= now:
                item.future.set_exception(asyncio.TimeoutError())
                left = True
            elif nearest is None or item.deadline < nearest:
                nearest = item.deadline
        if left and any(p.future.done() for p in self._queue):
            self._queue = deque(p for p in self._queue if not p.future.done())
            self._depth_changed()
            self._wake_loop()
        if nearest is not None:
            self._arm_expiry(nearest)

    def flush(self) -> None:
        """Run what is queued without waiting for fuller batches (the server is stopping)."""
        self._flushing = True
        self._wake_loop()

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running batch, stop the loop."""
        self._closing = True
        self._wake_loop()
        if self._task is not None:
            await self._task
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    @property
    def _stopping(self) -> bool:
        return self._closing or self._flushing

    def _depth_changed(self) -> None:
        if self.on_depth is not None:
            self.on_depth(len(self._queue))

    def _wake_loop(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _sleep(self, timeout_s: float | None, gathering: tuple[tuple, float] | None = None
                     ) -> None:
        """Until woken (a new request that changes something, a flush, a close, an expiry)
        or ``timeout_s`` passes. ``gathering``: the key and deadline of the batch gathered."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._gathering = gathering
        if gathering is not None:
            self._gathered_rows = self._ready_rows(gathering[0])
        timer = None if timeout_s is None else loop.call_later(
            timeout_s, lambda: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None
            self._gathering = None

    # --- the loop -------------------------------------------------------------------------
    def _ready_rows(self, key: tuple) -> int:
        return sum(p.rows for p in self._queue if p.key == key)

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                await self._sleep(None)
            first = self._queue[0]
            if self.batching and first.rows < self.max_batch_size and not self._stopping:
                await self._gather(first)
            batch = self._take()
            self._depth_changed()
            if batch:
                await self._run(batch)

    async def _gather(self, first: _Pending) -> None:
        """Let more requests join ``first``'s batch, until it is full or the wait is over.

        Deadline mode sleeps until ``max_queue_delay_us`` has passed. Adaptive mode yields to
        the event loop instead, which parses whatever requests have arrived, and stops once
        a few turns of the loop bring nothing new: waiting longer would only add latency, as
        no request is on its way (a lone client's request runs at once, and under load the
        batch holds everything that came in meanwhile). Except while a caller seen to come
        back before, and expected back before the batch's deadline (a mean return gap after
        its last answer), has not sent its next request: adaptive mode then sleeps until a
        request comes, and no longer than the deadline (clients that think between requests
        are expected long after it: not waited for). That is what batches gRPC: grpc.aio
        hands the loop one new call per round trip through its poller thread, several loop
        turns apart, so counting idle turns closed nearly every batch at one request
        (bench-results/notes.md). And it closes at once when every request in progress is
        queued and every answer was followed by its caller's next request (``all_here``): no
        one known is on the way, and a lone client's request does not pay the idle turns.
        """
        deadline = first.enqueued + self.max_delay_s
        idle_turns = 0
        while (self._ready_rows(first.key) < self.max_batch_size
               and (left := deadline - (now := time.perf_counter())) > 0
               and not self._stopping and first in self._queue):
            if not self.adaptive:
                await self._sleep(left, (first.key, deadline))
                continue
            if (due := self.caller_due(now, deadline)) is not None:
                await self._sleep(min(left, due - now), (first.key, deadline))
                continue
            if self.all_here(len(self._queue)):
                return
            before = len(self._queue)
            await asyncio.sleep(0)
            idle_turns = 0 if len(self._queue) > before else idle_turns + 1
            if idle_turns >= _IDLE_TURNS:
                return

    def _take(self) -> list[_Pending]:
        """The oldest request and the compatible ones after it that fit, in arrival order."""
        if not self._queue:
            return []
        first = self._queue.popleft()
        batch = [first]
        if not self.batching or first.rows >= self.max_batch_size:
            return batch
        rows = first.rows
        keep: deque[_Pending] = deque()
        while self._queue:
            p = self._queue.popleft()
            if p.key == first.key and rows + p.rows <= self.max_batch_size:
                batch.append(p)
                rows += p.rows
            else:
                keep.append(p)
        keep.extend(self._queue)
        self._queue = keep
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]
        if not live:
            return
        start = time.perf_counter()
        xs = [p.xs for p in live]
        targets = [p.out for p in live]
        self._running = live  # their timeouts still run
        try:
            rows = sum(x[0].shape[0] for x in xs)
            if self.layer.work((rows, *xs[0][0].shape[1:])) <= INLINE_MAX_WORK:
                outs, compute_s = compute(self.layer, xs, targets)
            else:
                outs, compute_s = await asyncio.get_running_loop().run_in_executor(
                    self.executor, compute, self.layer, xs, targets)
        except Exception as exc:  # a kernel failure fails this batch only
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            self._running = []
        rows = sum(p.rows for p in live)
        if self.on_batch is not None:
            self.on_batch(rows, len(live), compute_s)
        for p, out in zip(live, outs, strict=True):
            p.timing.queue_s = start - p.enqueued
            p.timing.compute_s = compute_s
            p.timing.batch_rows = rows
            if not p.future.done():
                p.future.set_result(out)
