"""The adaptive wait's knowledge of callers coming back (``Batcher._gather`` asks it).

A closed-loop client sends its next request once it has its answer, about one return gap
later (the gap grows with the load; a running mean is kept over the callers). A caller not
back within ``return_gaps`` mean gaps (at least ``min_return_delays`` times the batch delay,
at most ``max_return_s``) is taken to have gone. Callers are connections (HTTP's scope
client, gRPC's peer): one that never came back before (a connection per request) is never
waited for.
"""

from __future__ import annotations

import time
from collections.abc import Hashable


class CallerReturns:
    """Per caller: its requests in progress and whether it was seen to come back; of callers
    with none in progress, when their last answer went (kept ``max_return_s``, oldest first)
    and, of those seen to come back before, the same (the ones a batch may wait for); and
    the mean return gap. ``Batcher`` is one (its queue and loop beside this)."""

    def __init__(self, *, max_delay_s: float, return_gaps: float, min_return_delays: float,
                 max_return_s: float, gap_weight: float) -> None:
        self.max_delay_s = max_delay_s  # the batch delay (max_queue_delay_us), seconds
        self.return_gaps = return_gaps
        self.min_return_delays = min_return_delays
        self.max_return_s = max_return_s
        self.gap_weight = gap_weight  # of the newest gap in the running mean
        self._in_progress: dict[Hashable, tuple[int, bool]] = {}
        self._requests = 0  # in progress, of every caller
        #: Per caller, answers it has not yet followed with a request (a closed-loop client
        #: sends one per answer; a channel several clients share owes several), forgotten
        #: with its ``_answered`` entry; and their sum.
        self._owed: dict[Hashable, int] = {}
        self._owed_total = 0
        self._answered: dict[Hashable, float] = {}
        self._away: dict[Hashable, float] = {}
        self._gap = 0.0

    def caller_arrived(self, caller: Hashable) -> None:
        """``caller`` sent a request (back after a gap, when it was answered before)."""
        self._requests += 1
        if (owed := self._owed.get(caller)) is not None:
            self._owed_total -= 1
            if owed > 1:
                self._owed[caller] = owed - 1
            else:
                del self._owed[caller]
        count, returns = self._in_progress.get(caller, (0, False))
        if not count and (answered := self._answered.pop(caller, None)) is not None:
            gap = time.perf_counter() - answered
            self._gap += (gap - self._gap) * self.gap_weight if self._gap else gap
            self._away.pop(caller, None)
            returns = True
        self._in_progress[caller] = (count + 1, returns)

    def caller_left(self, caller: Hashable) -> None:
        """``caller`` has its answer (or gave up)."""
        self._requests -= 1
        self._owed[caller] = self._owed.get(caller, 0) + 1
        self._owed_total += 1
        count, returns = self._in_progress.pop(caller)
        if count > 1:
            self._in_progress[caller] = (count - 1, returns)
            return
        now = time.perf_counter()
        answered = self._answered
        answered[caller] = now
        while (oldest := next(iter(answered.items())))[1] < now - self.max_return_s:
            del answered[oldest[0]]
            self._owed_total -= self._owed.pop(oldest[0], 0)
        if returns:  # not a connection per request: it may come back
            self._away[caller] = now
        self.caller_due(now, now)  # forgets those gone

    def caller_due(self, now: float, deadline: float) -> float | None:
        """Until when to wait for a caller expected back by ``deadline`` (give or take
        ``max_queue_delay_us``), or None when none is. The one answered first is due first
        (one mean gap after its answer): when it is not due by then, none is. A caller late
        by more than its window is forgotten."""
        away, gap = self._away, self._gap
        window = min(max(self.return_gaps * gap, self.min_return_delays * self.max_delay_s),
                     self.max_return_s)
        while away:
            caller, answered = next(iter(away.items()))
            if now < answered + window:
                return answered + window if answered + gap <= deadline + self.max_delay_s \
                    else None
            del away[caller]
        return None

    def all_here(self, held: int) -> bool:
        """Whether no request of a caller known is on its way: the ``held`` requests the
        batcher holds are every one in progress, and every answer given lately was followed
        by its caller's next request. A batch then has no one to wait for, not even a few
        loop turns: a lone client's requests run at once. (A caller never seen before may
        still be arriving: it gets the next batch.)"""
        return self._requests == held and not self._owed_total
