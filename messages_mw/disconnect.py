"""Noticing a client that leaves mid-request, so that its upstream request ends at once."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable
from typing import Any

from .context import RequestContext
from .types import Receive

__all__ = ["DisconnectWatcher"]

_WATCH_AFTER = 0.05  # seconds


class _DisconnectWatch:
    """Reads ``receive`` until the client disconnects, then cancels the request's task."""

    def __init__(self, receive: Receive, work_task: asyncio.Task[Any], context: RequestContext):
        self._receive = receive
        self._work_task = work_task
        self._context = context
        self._task: asyncio.Task[None] | None = None
        self._fired = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def fired(self) -> bool:
        """Whether the client left and the work was cancelled for it."""
        return self._fired

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if self._context.response_sent:
            # The whole answer went out (uvicorn reports a disconnect once it has): only
            # closing the upstream response remains, and an HTTP/2 close can take a while.
            return
        self._context.client_disconnected = True
        self._fired = True
        self._work_task.cancel()


class DisconnectWatcher:
    """Runs a gateway's requests while watching for their clients to leave; if one does, its
    work is cancelled, which closes the upstream request at once so no tokens are generated
    for nobody.

    The work runs in the caller's task. The watcher, which needs a task of its own,
    starts only once the work has run for between ``after / 2`` and ``after`` seconds: most
    quick answers (count_tokens, models, cached or short replies) finish before that and never
    pay for a task and its two extra event-loop passes, while a client that leaves is still
    noticed within a few tens of milliseconds. A request already ``after`` seconds old when its
    work begins (its hooks were slow) is watched at once, and a client that left meanwhile
    is noticed before the work begins. One timer serves every request: it ticks every
    ``after / 2`` seconds while any request runs, and a request pays two dict operations
    instead of a timer of its own (about 2 µs on uvloop). One event loop at a time, as the
    gateway's connection pool: used from a new loop, it forgets the old loop's requests.
    """

    def __init__(self, after: float = _WATCH_AFTER) -> None:
        self._tick_seconds = after / 2
        # Requests that began since the last tick, and those that began before it.
        self._newer: dict[_DisconnectWatch, None] = {}
        self._older: dict[_DisconnectWatch, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, receive: Receive, work: Awaitable[None], context: RequestContext) -> None:
        """Await ``work`` in this task, cancelling it if the client leaves meanwhile (the
        request then ends quietly, with ``context.client_disconnected`` set)."""
        loop = asyncio.get_running_loop()
        this_task = asyncio.current_task(loop)
        assert this_task is not None
        watch = _DisconnectWatch(receive, this_task, context)
        # A request this old already (slow hooks before it) is watched at once, and the
        # watch gets one pass first: a client that left meanwhile is noticed before the
        # work sends anything upstream.
        late = time.perf_counter() - context.started_at >= self._tick_seconds * 2
        if late:
            watch.start()
        else:
            self._register(watch, loop)
        try:
            if late:
                await asyncio.sleep(0)
            await work
        except asyncio.CancelledError:
            if not watch.fired():
                raise
        finally:
            if inspect.iscoroutine(work):
                work.close()  # never started, if the client had left: no warning for it
            self._newer.pop(watch, None)
            self._older.pop(watch, None)
            if watch.fired():
                # Our own watcher cancelled the work (which may have swallowed it): the request
                # ends here, quietly, and later awaits in this task must not be cancelled.
                this_task.uncancel()
            watch.stop()

    def _register(self, watch: _DisconnectWatch, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            # A new event loop: the old one's requests (and timer) are gone with it.
            self._loop, self._newer, self._older = loop, {}, {}
            self._timer = None
        self._newer[watch] = None
        if self._timer is None:
            self._timer = loop.call_later(self._tick_seconds, self._tick)

    def _tick(self) -> None:
        due, self._older, self._newer = self._older, self._newer, {}
        for watch in due:
            watch.start()
        if self._older and self._loop is not None:
            self._timer = self._loop.call_later(self._tick_seconds, self._tick)
        else:
            self._timer = None
