"""Noticing a client that leaves mid-request, so that its upstream request ends at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from .context import RequestContext
from .types import Receive

__all__ = ["run_watching_disconnect"]

_WATCH_AFTER = 0.05  # seconds


class _DisconnectWatch:
    """Reads ``receive`` until the client disconnects, then cancels the request's task."""

    def __init__(self, receive: Receive, work_task: asyncio.Task[Any], context: RequestContext):
        self._receive = receive
        self._work_task = work_task
        self._context = context
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def fired(self) -> bool:
        return self._task is not None and self._task.done() and not self._task.cancelled()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._context.client_disconnected = True
        self._work_task.cancel()


async def run_watching_disconnect(
    receive: Receive, work: Awaitable[None], context: RequestContext
) -> None:
    """Run ``work`` while watching for the client to leave; if it does, cancel the work,
    which closes the upstream request at once so no tokens are generated for nobody.

    The work runs in this task. The watcher, which needs a task of its own, starts only
    once the work has run for ``_WATCH_AFTER`` seconds: most quick answers (count_tokens,
    models, cached or short replies) finish before that and never pay for a task and its
    two extra event-loop passes, while a client that leaves is still noticed within a
    few tens of milliseconds.
    """
    this_task = asyncio.current_task()
    assert this_task is not None
    watch = _DisconnectWatch(receive, this_task, context)
    start = asyncio.get_running_loop().call_later(_WATCH_AFTER, watch.start)
    try:
        await work
    except asyncio.CancelledError:
        if not watch.fired():
            raise
    finally:
        start.cancel()
        if watch.fired():
            # Our own watcher cancelled the work (which may have swallowed it): the request
            # ends here, quietly, and later awaits in this task must not be cancelled.
            this_task.uncancel()
        watch.stop()
