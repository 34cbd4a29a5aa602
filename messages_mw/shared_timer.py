"""Many timeouts, one timer: the event-loop timers of a gateway's requests, shared.

On uvloop, arming and cancelling an event-loop timer costs about 2 µs, and
``asyncio.timeout`` about 4 µs in all. Every request used two or three: the attempt's
deadline (600 s by default, which almost never fires), the stream's hold, and the disconnect
watch; together 5% of the CPU of a small request. Here the attempts' deadlines and the
streams' holds of a gateway share one timer, armed for the earliest pending, and each costs a
heap entry (the disconnect watch has a ticker of its own: see ``disconnect.py``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from types import TracebackType

__all__ = ["Deadline", "SharedTimer", "TimerEntry"]

# A timer firing this close to a deadline counts as on time (uvloop's timers tick in ms).
_SLACK = 0.001
# Cancelled entries stay in the heap until their time comes or they are most of it.
_COMPACT_ABOVE = 64


class TimerEntry:
    """A callback :class:`SharedTimer` will call at ``when`` unless cancelled first."""

    __slots__ = ("_timer", "callback", "pending", "when")

    def __init__(self, timer: SharedTimer, when: float, callback: Callable[[], object]) -> None:
        self._timer = timer
        self.when = when
        self.callback = callback
        self.pending = True

    def cancel(self) -> None:
        """Never call the callback (nothing, if it has been called already)."""
        if self.pending:
            self.pending = False
            # The entry may wait in the heap a while: let go of what the callback holds.
            self.callback = _nothing
            self._timer._cancelled()


def _nothing() -> None:
    pass


class SharedTimer:
    """Callbacks at given times of one event loop, on one of its timers.

    An instance serves one loop at a time, as the gateway's connection pool does: used from
    a new loop it starts afresh, and what the old loop had pending never runs (the old loop
    is expected to be gone, as between test cases). It is not thread-safe.
    """

    def __init__(self) -> None:
        # (when, order, entry): the order breaks ties, since entries do not compare.
        self._heap: list[tuple[float, int, TimerEntry]] = []
        self._pending = 0
        self._order = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def call_later(
        self, loop: asyncio.AbstractEventLoop, seconds: float, callback: Callable[[], object]
    ) -> TimerEntry:
        """Call ``callback`` from ``loop`` (the running one) ``seconds`` from now."""
        if loop is not self._loop:
            self._loop, self._heap, self._pending, self._handle = loop, [], 0, None
        entry = TimerEntry(self, loop.time() + seconds, callback)
        heapq.heappush(self._heap, (entry.when, next(self._order), entry))
        self._pending += 1
        handle = self._handle
        if handle is None or entry.when < handle.when():
            if handle is not None:
                handle.cancel()
            self._handle = loop.call_at(entry.when, self._fire)
        return entry

    def timeout(self, seconds: float) -> Deadline:
        """An async context manager that cancels the task ``seconds`` after it is entered
        and then raises :class:`TimeoutError` from the block: ``asyncio.timeout(seconds)``."""
        return Deadline(self, seconds)

    def _cancelled(self) -> None:
        # Never below 0: an entry of an older loop may be cancelled after a new loop's began.
        self._pending = max(self._pending - 1, 0)
        heap = self._heap
        if len(heap) > _COMPACT_ABOVE and len(heap) > 2 * self._pending:
            self._heap = [item for item in heap if item[2].pending]
            heapq.heapify(self._heap)

    def _fire(self) -> None:
        self._handle = None
        loop = self._loop
        assert loop is not None
        heap = self._heap
        now = loop.time() + _SLACK
        due = []
        while heap and (heap[0][0] <= now or not heap[0][2].pending):
            entry = heapq.heappop(heap)[2]
            if entry.pending:
                entry.pending = False
                self._pending = max(self._pending - 1, 0)
                due.append(entry)
        if heap:
            self._handle = loop.call_at(heap[0][0], self._fire)
        for entry in due:
            try:
                entry.callback()
            except Exception as exc:
                # As the loop treats a failing callback: reported, and the others still run.
                context = {"message": "SharedTimer callback failed", "exception": exc}
                loop.call_exception_handler(context)


class Deadline:
    """One use of :meth:`SharedTimer.timeout`; not reusable."""

    __slots__ = ("_cancelling", "_entry", "_seconds", "_state", "_task", "_timer")

    def __init__(self, timer: SharedTimer, seconds: float) -> None:
        self._timer = timer
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None
        self._entry: TimerEntry | None = None
        self._cancelling = 0
        # "" until entered, then "pending", "expiring" (the task is being cancelled for it)
        # and "expired" (the block has seen it), as asyncio.Timeout's states.
        self._state = ""

    def expired(self) -> bool:
        """Whether the deadline passed while the block ran (it was cancelled for it)."""
        return self._state == "expiring" or self._state == "expired"

    def _expire(self) -> None:
        assert self._task is not None
        self._state = "expiring"
        self._task.cancel()

    async def __aenter__(self) -> Deadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        self._task = task
        # Cancellations already requested are not ours to turn into a timeout.
        self._cancelling = task.cancelling()
        self._state = "pending"
        self._entry = self._timer.call_later(loop, self._seconds, self._expire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._entry is not None and self._task is not None
        self._entry.cancel()
        if self._state == "expiring":
            self._state = "expired"
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
