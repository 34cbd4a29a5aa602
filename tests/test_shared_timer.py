"""SharedTimer: asyncio.timeout's behaviour, with every deadline on one timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from messages_mw.shared_timer import SharedTimer

from .inprocess import run


def test_a_block_that_ends_in_time_is_left_alone() -> None:
    timer = SharedTimer()

    async def main() -> bool:
        async with timer.timeout(5) as deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)  # nothing is cancelled later either
        return deadline.expired()

    assert run(main()) is False


def test_a_block_that_overruns_raises_timeout_error_at_its_deadline() -> None:
    timer = SharedTimer()

    async def main() -> tuple[float, bool]:
        started = time.monotonic()
        deadline = timer.timeout(0.05)
        with pytest.raises(TimeoutError):
            async with deadline:
                await asyncio.sleep(10)
        return time.monotonic() - started, deadline.expired()

    elapsed, expired = run(main())
    assert expired
    assert 0.045 <= elapsed < 0.5


def test_each_of_many_deadlines_fires_at_its_own_time() -> None:
    timer = SharedTimer()
    fired: dict[str, float] = {}

    async def wait(name: str, seconds: float, started: float) -> None:
        try:
            async with timer.timeout(seconds):
                await asyncio.sleep(10)
        except TimeoutError:
            fired[name] = time.monotonic() - started

    async def quick(seconds: float) -> None:
        async with timer.timeout(seconds):
            await asyncio.sleep(0.001)

    async def main() -> None:
        started = time.monotonic()
        # The later deadline first, then an earlier one that must move the timer forward,
        # and blocks that end early, whose entries must not fire anything.
        await asyncio.gather(
            wait("late", 0.15, started),
            wait("early", 0.05, started),
            *(quick(0.01) for _ in range(20)),
        )

    run(main())
    assert fired.keys() == {"late", "early"}
    assert 0.045 <= fired["early"] < 0.14
    assert 0.145 <= fired["late"] < 0.6


def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    timer = SharedTimer()

    async def guarded() -> None:
        async with timer.timeout(5):
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(guarded())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())


def test_the_task_can_wait_again_after_a_timeout() -> None:
    timer = SharedTimer()

    async def main() -> str:
        with pytest.raises(TimeoutError):
            async with timer.timeout(0.01):
                await asyncio.sleep(10)
        # The timeout's cancellation was taken back: later awaits run normally.
        await asyncio.sleep(0.01)
        async with timer.timeout(5):
            await asyncio.sleep(0.01)
        return "done"

    assert run(main()) == "done"


def test_ended_deadlines_do_not_pile_up() -> None:
    timer = SharedTimer()

    async def main() -> int:
        for _ in range(10_000):
            async with timer.timeout(600):
                pass
        return len(timer._heap)

    # Each ended entry would otherwise wait 600 s for its turn in the heap.
    assert run(main()) <= 130


def test_one_instance_serves_one_event_loop_after_another() -> None:
    timer = SharedTimer()
    old_loop = asyncio.new_event_loop()

    async def stuck() -> None:
        async with timer.timeout(0.5):
            await asyncio.Event().wait()

    # A deadline still pending when its loop is dropped: its timer never fires anywhere.
    stuck_task = old_loop.create_task(stuck())
    old_loop.run_until_complete(asyncio.sleep(0.01))
    old_loop.close()
    # Left pending on purpose, as a dropped loop leaves it: nothing to report when collected.
    stuck_task._log_destroy_pending = False  # type: ignore[attr-defined]

    async def overrun() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with timer.timeout(0.6):
                await asyncio.sleep(10)
        return time.monotonic() - started

    # Later than the dropped one: it must get a timer of its own in the new loop.
    assert run(overrun()) < 2.0
    assert not stuck_task.done()


def test_a_failing_callback_is_reported_and_the_others_still_run() -> None:
    timer = SharedTimer()
    called: list[str] = []
    reported: list[object] = []

    def fail() -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: reported.append(context["exception"]))
        timer.call_later(loop, 0.01, fail)
        timer.call_later(loop, 0.01, lambda: called.append("after"))
        await asyncio.sleep(0.05)

    run(main())
    assert called == ["after"]
    assert [str(error) for error in reported] == ["boom"]


def test_callbacks_run_in_time_order_and_cancelled_ones_never() -> None:
    timer = SharedTimer()
    called: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        timer.call_later(loop, 0.03, lambda: called.append("third"))
        timer.call_later(loop, 0.01, lambda: called.append("first"))
        dropped = timer.call_later(loop, 0.02, lambda: called.append("dropped"))
        timer.call_later(loop, 0.02, lambda: called.append("second"))
        dropped.cancel()
        await asyncio.sleep(0.06)

    run(main())
    assert called == ["first", "second", "third"]
