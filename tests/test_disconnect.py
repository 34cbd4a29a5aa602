"""DisconnectWatcher: a request whose client leaves is cancelled; quick ones are never watched."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from messages_mw.context import RequestContext
from messages_mw.disconnect import DisconnectWatcher

from .inprocess import run


class _Client:
    """An ASGI ``receive`` whose client leaves at ``leaves_after`` seconds (or never)."""

    def __init__(self, leaves_after: float | None = None) -> None:
        self.leaves_after = leaves_after
        self.reads = 0

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        if self.leaves_after is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(self.leaves_after)
        return {"type": "http.disconnect"}


def _context() -> RequestContext:
    return RequestContext("req_test", "POST", "/v1/messages")


def test_quick_work_is_never_watched() -> None:
    watcher = DisconnectWatcher(after=0.05)
    clients = [_Client(leaves_after=0.0) for _ in range(50)]

    async def main() -> None:
        await asyncio.gather(
            *(watcher.run(c.receive, asyncio.sleep(0.001), _context()) for c in clients)
        )
        await asyncio.sleep(0.1)  # the ticks that follow find nothing to watch

    run(main())
    assert [c.reads for c in clients] == [0] * 50
    assert watcher._timer is None  # idle: no timer left ticking


def test_a_client_that_leaves_cancels_its_work_and_only_its_own() -> None:
    watcher = DisconnectWatcher(after=0.05)
    leaving, staying = _context(), _context()
    finished: list[str] = []

    async def work(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        finished.append(name)

    async def request(context: RequestContext, client: _Client, name: str) -> float:
        started = time.monotonic()
        await watcher.run(client.receive, work(name, 0.4), context)
        # The request's task goes on normally after its work was cancelled for the client.
        await asyncio.sleep(0.001)
        return time.monotonic() - started

    async def main() -> tuple[float, float]:
        return await asyncio.gather(
            request(leaving, _Client(leaves_after=0.0), "leaving"),
            request(staying, _Client(), "staying"),
        )

    left_after, stayed_for = run(main())
    assert finished == ["staying"]
    assert leaving.client_disconnected and not staying.client_disconnected
    # Watched once the work has run 25-50 ms, and the client had already gone.
    assert 0.02 <= left_after < 0.2
    assert stayed_for >= 0.4


def test_a_cancellation_from_elsewhere_propagates() -> None:
    watcher = DisconnectWatcher(after=0.05)

    async def main() -> None:
        task = asyncio.create_task(watcher.run(_Client().receive, asyncio.sleep(5), _context()))
        await asyncio.sleep(0.08)  # long enough for the watcher to have started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_one_watcher_serves_one_event_loop_after_another() -> None:
    watcher = DisconnectWatcher(after=0.05)
    old_loop = asyncio.new_event_loop()
    # A request still running when its loop is dropped, with the watcher's ticker armed there.
    running = old_loop.create_task(watcher.run(_Client().receive, asyncio.sleep(10), _context()))
    old_loop.run_until_complete(asyncio.sleep(0.01))
    old_loop.close()
    # Left pending on purpose, as a dropped loop leaves it: nothing to report when collected.
    running._log_destroy_pending = False  # type: ignore[attr-defined]
    assert not running.done()

    async def leave() -> bool:
        context = _context()
        running = watcher.run(_Client(leaves_after=0.0).receive, asyncio.sleep(10), context)
        await asyncio.wait_for(running, 2)
        return context.client_disconnected

    assert run(leave()) is True


def test_a_disconnect_after_the_whole_response_was_sent_is_no_client_leaving() -> None:
    # uvicorn reports http.disconnect once a response is complete; closing an HTTP/2
    # upstream response afterwards takes a while, and every such stream was logged as
    # abandoned by its client (usage events, metrics), its close cancelled half-way.
    watcher = DisconnectWatcher(after=0.02)
    context = _context()
    closed: list[bool] = []

    async def work() -> None:
        await asyncio.sleep(0.03)  # streaming, then the last body message goes out
        context.response_sent = True
        await asyncio.sleep(0.1)  # the upstream response's close
        closed.append(True)

    run(watcher.run(_Client(leaves_after=0.04).receive, work(), context))
    assert closed == [True]
    assert context.client_disconnected is False
