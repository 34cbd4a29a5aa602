"""Many deadlines, one timer: what ``asyncio.timeout`` does, for every attempt of a gateway.

``asyncio.timeout`` arms an event-loop timer each time it is used, and on uvloop creating and
cancelling one costs about 2 µs; the whole context manager about 4 µs. Every attempt of every
request used one, for a deadline (600 s by default) that almost never fires: 5% of the CPU of
a small request. Here the attempts of a gateway share one timer, armed for the earliest
deadline pending, and an attempt costs a heap entry.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from types import TracebackType

__all__ = ["Deadline", "SharedDeadlines"]

# A timer firing this close to a deadline counts as on time (uvloop's timers tick in ms).
_SLACK = 0.001
# Ended deadlines stay in the heap until their time comes or they are most of it.
_COMPACT_ABOVE = 64

_PENDING, _ENDED, _EXPIRING, _EXPIRED = "pending", "ended", "expiring", "expired"


class SharedDeadlines:
    """Deadlines for the tasks of one event loop, on one timer (a new loop starts afresh).

    :meth:`within` is a drop-in for ``asyncio.timeout(seconds)`` for a relative delay.
    """

    def __init__(self) -> None:
        # (when, order, deadline): the order breaks ties, since deadlines do not compare.
        self._heap: list[tuple[float, int, Deadline]] = []
        self._pending = 0
        self._order = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def within(self, seconds: float) -> Deadline:
        """An async context manager that cancels the task ``seconds`` after it is entered
        and then raises :class:`TimeoutError` from the block, as ``asyncio.timeout`` does."""
        return Deadline(self, seconds)

    def _add(self, deadline: Deadline, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            # The old loop's timer and tasks are gone with it.
            self._loop, self._heap, self._pending, self._timer = loop, [], 0, None
        heapq.heappush(self._heap, (deadline.when, next(self._order), deadline))
        self._pending += 1
        timer = self._timer
        if timer is None or deadline.when < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline.when, self._fire)

    def _end(self) -> None:
        # Never below 0: a deadline of an older loop may end after a new loop's started.
        self._pending = max(self._pending - 1, 0)
        heap = self._heap
        if len(heap) > _COMPACT_ABOVE and len(heap) > 2 * self._pending:
            self._heap = [entry for entry in heap if entry[2].state is _PENDING]
            heapq.heapify(self._heap)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        heap = self._heap
        now = loop.time() + _SLACK
        while heap and (heap[0][0] <= now or heap[0][2].state is not _PENDING):
            deadline = heapq.heappop(heap)[2]
            if deadline.state is _PENDING:
                deadline.expire()
        if heap:
            self._timer = loop.call_at(heap[0][0], self._fire)


class Deadline:
    """One use of :meth:`SharedDeadlines.within`; not reusable."""

    __slots__ = ("_cancelling", "_deadlines", "_seconds", "_task", "state", "when")

    def __init__(self, deadlines: SharedDeadlines, seconds: float) -> None:
        self._deadlines = deadlines
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.state = ""
        self.when = 0.0

    def expired(self) -> bool:
        """Whether the deadline passed while the block ran (it was cancelled for it)."""
        return self.state is _EXPIRING or self.state is _EXPIRED

    def expire(self) -> None:
        assert self._task is not None
        self.state = _EXPIRING
        self._task.cancel()

    async def __aenter__(self) -> Deadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        self._task = task
        # Cancellations already requested are not ours to turn into a timeout.
        self._cancelling = task.cancelling()
        self.when = loop.time() + self._seconds
        self.state = _PENDING
        self._deadlines._add(self, loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self.state
        if state is _PENDING:
            self.state = _ENDED
        self._deadlines._end()
        if state is _EXPIRING:
            self.state = _EXPIRED
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
