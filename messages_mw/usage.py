"""Usage sinks: where each finished request's :class:`~messages_mw.context.UsageEvent` goes.

The gateway hands every event to a :class:`UsageDispatcher`, which queues it and returns at
once; a background task delivers queued events to the sinks. A slow, blocking or failing sink
therefore never delays or breaks a request: at worst the queue fills and events are dropped
(and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import math
import os
import stat
import sys
import time
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, TextIO

import msgspec

from .context import UsageEvent, valid_traceparent, valid_tracestate

__all__ = ["JsonLinesSink", "UsageDispatcher", "UsageSink"]

logger = logging.getLogger("messages_mw.usage")

_DROP_LOG_INTERVAL = 10.0
# Events handed to the sync sinks per trip to their thread: amortises the hop under load.
_MAX_BATCH = 256
# Nonblocking sinks get the events of requests that end close together in one delivery, at
# most one delivery per this many seconds: sparse traffic is delivered at once, and under load
# a file sink writes tens of lines per write(2) instead of one.
_INLINE_DELIVERY_INTERVAL = 0.01
# ... or as soon as this many are waiting. Held for the whole interval, the events of about a
# hundred requests have left the CPU's caches by the time they are encoded: measured in
# process at 32 connections, delivering every 32 saved 1.5 to 9 µs a request.
_INLINE_BATCH = 32
_encoder = msgspec.json.Encoder()

_Pending = list[tuple[object, UsageEvent, Awaitable[None]]]


class UsageSink(Protocol):
    """Receives each finished request's event, once, in the order requests finished.

    A plain function, a coroutine function or an object with ``__call__``. Sync sinks run in
    the dispatcher's own worker thread (one thread, one call at a time), so they may block on
    files or sockets without stalling the event loop; async sinks run in the dispatcher's
    background task on the event loop. An exception is logged and the sink gets the next event.
    If the sink also has an ``aclose()`` method (sync or async), the dispatcher calls it once at
    shutdown, after delivering what was queued. A sink with a ``current_trace()`` method (the
    OpenTelemetry sink) is asked, in each request's own task as its event is built, for the
    W3C ``(traceparent, tracestate)`` of the span active there; a well-formed answer becomes
    the event's ``traceparent`` and ``tracestate``.

    Shutdown waits at most ``shutdown_timeout`` seconds (5 s in a gateway) for queued events.
    Past that, an async sink still running gets :class:`asyncio.CancelledError` at its current
    ``await``; a sync sink's call already running in the worker thread is not interrupted and
    may still be running when ``aclose()`` is called. The events not delivered to every sink
    are counted in :attr:`UsageDispatcher.dropped`.
    """

    def __call__(self, event: UsageEvent, /) -> Awaitable[None] | None: ...


def _is_async(sink: object) -> bool:
    # An object whose __call__ is a coroutine function is async too; plain functions and
    # partials are caught by the first test.
    return inspect.iscoroutinefunction(sink) or inspect.iscoroutinefunction(type(sink).__call__)


def _is_nonblocking(sink: object) -> bool:
    return getattr(sink, "nonblocking", False) is True


def _never_blocks(stream: IO[bytes] | TextIO) -> bool:
    """Whether a write to ``stream`` cannot stall the event loop: memory, a regular file or a
    device that is not a terminal (``/dev/null``). A pipe, FIFO, socket or terminal blocks
    once its reader stops reading."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):  # no descriptor: an in-memory stream
        return True
    except AttributeError:  # not a file-like object at all: nothing is known of it
        return False
    try:
        mode = os.fstat(descriptor).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not os.isatty(descriptor))


def _handlers_never_block(logger: logging.Logger) -> bool:
    """Whether ``logger`` has handlers, and each one its records reach is a stream handler
    writing where :func:`_never_blocks` says a write cannot stall."""
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers += current.handlers
        current = current.parent if current.propagate else None
    # A handler opened with delay=True has no stream until its first record: unknown.
    return bool(handlers) and all(
        isinstance(handler, logging.StreamHandler)
        and handler.stream is not None
        and _never_blocks(handler.stream)
        for handler in handlers
    )


def _call_inline(sink: UsageSink, event: UsageEvent) -> None:
    try:
        sink(event)
    except Exception:
        logger.exception("usage sink %r failed on request %s", sink, event.request_id)


def _deliver_inline(sink: UsageSink, events: Sequence[UsageEvent]) -> None:
    """Hand ``events`` to a nonblocking sink: all at once where it takes batches (the JSON
    lines sink writes them with one call), one by one otherwise."""
    write_events = getattr(sink, "write_events", None)
    if write_events is None:
        for event in events:
            _call_inline(sink, event)
        return
    try:
        write_events(events)
    except Exception:
        logger.exception("usage sink %r failed on %d requests", sink, len(events))


class LogUsageSink:
    """Each event as one JSON line on the ``messages_mw.usage`` logger, at INFO; does no
    work at all while that logger is disabled. The gateway's default sink.

    Written on the event loop only when every handler the logger has when the sink is built
    writes where a write cannot stall (a file, ``/dev/null``); otherwise, from the
    dispatcher's worker thread. A handler writing to a pipe (``messages-mw serve | tee``, a
    container's log collector) would otherwise stop every request the moment its reader
    stops reading. No handler yet counts as a stall risk: a host may add one later.
    """

    def __init__(self) -> None:
        self._logger = logging.getLogger("messages_mw.usage")
        self._encoder = msgspec.json.Encoder()
        self.nonblocking = _handlers_never_block(self._logger)

    def wants_events(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def __call__(self, event: UsageEvent) -> None:
        if self._logger.isEnabledFor(logging.INFO):
            self._logger.info("%s", self._encoder.encode(event).decode())


@dataclass(slots=True)
class _Unfinished:
    """An event whose delivery a cancellation cut short: still due to the sync sinks (or
    not), and to the async sinks from ``first_async_sink`` on. The nonblocking sinks had it
    at once."""

    event: UsageEvent
    sync_sinks: bool
    first_async_sink: int


def _unfinished(rest: list[UsageEvent], synced: bool, async_sink: int) -> list[_Unfinished]:
    """What is left of a batch's delivery, ``rest`` being its events from the one under way
    on; ``async_sink`` the async sink that one was cut in (if the sync sinks had them)."""
    if not synced:
        return [_Unfinished(event, True, 0) for event in rest]
    return [_Unfinished(rest[0], False, async_sink)] + [
        _Unfinished(event, False, 0) for event in rest[1:]
    ]


class UsageDispatcher:
    """Delivers usage events to sinks in the background, off the request path.

    :meth:`emit` never blocks and never raises: it puts the event on a bounded queue (created on
    the first emit, in the running loop) and returns. One background task drains the queue:
    sync sinks get each batch in the dispatcher's worker thread, then each async sink is awaited
    per event. Every sink sees events in emission order. A slow sink holds back the others and
    lets the queue fill, but never a request; when the queue is full, new events are dropped,
    counted in :attr:`dropped` and logged (at most once per 10 s). A sync sink that sets
    ``nonblocking = True`` (the built-in sinks, when they only touch memory or write to a file
    or ``/dev/null``) is called on the loop instead, outside the queue, so that no slow sink
    costs it events: the events of requests ending within 10 ms of each other are delivered
    to it together, 32 at most (sparse traffic at once, in the next pass of the loop).

    ``shutdown_timeout`` bounds how long :meth:`aclose` waits for queued events. Raises
    :class:`TypeError` at construction if a sink is not callable.
    """

    def __init__(
        self,
        sinks: Sequence[UsageSink],
        *,
        queue_size: int = 10_000,
        shutdown_timeout: float = 5.0,
    ) -> None:
        for sink in sinks:
            if not callable(sink):
                raise TypeError(f"usage sink {sink!r} is not callable")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._sinks = tuple(sinks)
        self._async_sinks = tuple(sink for sink in sinks if _is_async(sink))
        self._inline_sinks = tuple(s for s in sinks if not _is_async(s) and _is_nonblocking(s))
        self._sync_sinks = tuple(s for s in sinks if not _is_async(s) and not _is_nonblocking(s))
        self._queue_size = queue_size
        self._shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[UsageEvent] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._dropped = 0
        self._last_drop_log = -_DROP_LOG_INTERVAL
        # With only nonblocking sinks there is nothing to wait for: events collected during
        # one loop pass are delivered by one callback, with no queue and no task.
        self._only_inline = bool(self._inline_sinks) and not (self._sync_sinks or self._async_sinks)
        self._pending: list[UsageEvent] = []
        self._flush_scheduled = False
        # The loop the inline sinks run on (where another thread's events go, see emit).
        self._inline_loop: asyncio.AbstractEventLoop | None = None
        self._last_flush = -math.inf
        # Asked on every request: sinks without a wants_events() always want them.
        self._always_wanted = any(getattr(s, "wants_events", None) is None for s in sinks)
        self._wants_checks = tuple(s.wants_events for s in sinks if hasattr(s, "wants_events"))
        self._trace_readers = tuple(s.current_trace for s in sinks if hasattr(s, "current_trace"))
        # Whether a sink can tell the trace context a request runs in (the OpenTelemetry
        # sink): then current_trace() is worth asking. Read on every request.
        self.reads_traces: bool = bool(self._trace_readers)
        self._trace_read_failures = 0
        self._last_trace_log = -_DROP_LOG_INTERVAL

    def wants_events(self) -> bool:
        """False when every sink says it would ignore an event right now (the default log
        sink with its logger disabled), so the caller can skip building one."""
        if self._always_wanted:
            return True
        return any(wants() for wants in self._wants_checks)

    def current_trace(self) -> tuple[str, str | None] | None:
        """The W3C ``(traceparent, tracestate)`` of the span active in the calling context, as
        the first sink with a ``current_trace()`` that knows one tells it (a malformed
        ``tracestate`` becomes ``None``); ``None`` otherwise (a sink that raises is skipped,
        and logged at most once per 10 s). Ask in the request's own task."""
        for read in self._trace_readers:
            try:
                found = read()
                # Only a well-formed one: it reaches the usage lines and a span's parent.
                if type(found) is tuple and len(found) == 2:
                    traceparent = found[0] if type(found[0]) is str else None
                    tracestate = found[1] if type(found[1]) is str else None
                    if valid := valid_traceparent(traceparent):
                        return valid, valid_tracestate(tracestate)
            except Exception:  # a failing sink never breaks a request
                self._trace_read_failed(read)
        return None

    @property
    def dropped(self) -> int:
        """Events not delivered to every sink: queue full, emitted after close, or still
        queued or in delivery when :meth:`aclose` gave up."""
        return self._dropped

    def emit(self, event: UsageEvent) -> None:
        """Queue ``event`` for the sinks and return at once; never raises.

        Call it from the event loop. From another thread it is handed to the loop the
        dispatcher runs in; with no such loop the event is dropped.
        """
        if not self._sinks:
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._only_inline and loop is not None:
            self._collect(event, loop)
        elif loop is not None and loop is self._loop:
            self._accept(event, loop)
        else:
            self._emit_from_elsewhere(event, loop)

    def _accept(self, event: UsageEvent, loop: asyncio.AbstractEventLoop) -> None:
        """On the dispatcher's loop: the nonblocking sinks get ``event`` as inline-only
        dispatchers give it, the others through the queue. A slow sink that fills the queue
        then costs the others their events, never the nonblocking ones (the Prometheus
        counters, the log line)."""
        if self._closed:
            self._drop("the dispatcher is closed")
            return
        if self._inline_sinks:
            self._collect(event, loop)
        self._put(event)

    def _collect(self, event: UsageEvent, loop: asyncio.AbstractEventLoop) -> None:
        if self._closed:
            self._drop("the dispatcher is closed")
            return
        self._pending.append(event)
        if loop is not self._inline_loop:
            # The first event in this loop. Events still waiting were left by another loop,
            # whose timer may never go off (a host's test client closes its loop after each
            # request): they are delivered now, with this one.
            self._inline_loop = loop
            contextvars.Context().run(self._flush_pending)
        elif len(self._pending) >= _INLINE_BATCH:
            # The timer already set goes off later, and finds what has come since.
            contextvars.Context().run(self._deliver_pending)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            wait = self._last_flush + _INLINE_DELIVERY_INTERVAL - time.monotonic()
            if wait > 0:
                loop.call_later(wait, self._flush_pending, context=contextvars.Context())
            else:
                loop.call_soon(self._flush_pending, context=contextvars.Context())

    def _flush_pending(self) -> None:
        self._flush_scheduled = False
        self._last_flush = time.monotonic()
        self._deliver_pending()

    def _deliver_pending(self) -> None:
        events, self._pending = self._pending, []
        if events:
            for sink in self._inline_sinks:
                _deliver_inline(sink, events)

    def _emit_from_elsewhere(
        self, event: UsageEvent, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        if self._only_inline:  # and no loop runs in this thread
            inline = self._inline_loop
            if inline is not None and inline.is_running():
                with contextlib.suppress(RuntimeError):  # the loop closed in between
                    inline.call_soon_threadsafe(self._collect, event, inline)
                    return
            self._drop("no running event loop")
            return
        home = self._loop
        if home is not None and home.is_running():
            try:
                home.call_soon_threadsafe(self._accept, event, home)
            except RuntimeError:  # the loop closed in between
                self._drop("its event loop closed")
        elif loop is not None:
            # First emit, or the previous loop is gone: its drain task went with it, and the
            # events it left queued go to this loop's queue (a host's test client that runs
            # each request in an event loop of its own).
            left, self._queue = self._queue, asyncio.Queue(self._queue_size)
            self._loop, self._task = loop, None
            while left is not None and not left.empty():
                self._queue.put_nowait(left.get_nowait())
            self._accept(event, loop)
        else:
            self._drop("no running event loop")

    def _put(self, event: UsageEvent) -> None:
        if self._closed or self._queue is None or self._loop is None:
            self._drop("the dispatcher is closed")
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop("the queue is full")
            return
        if self._task is None or self._task.done():
            # A fresh context: the drain task must not inherit the first request's context
            # variables (trace context, correlation ids) and stamp them on every later event.
            self._task = self._loop.create_task(
                self._drain(self._queue),
                name="messages_mw usage dispatcher",
                context=contextvars.Context(),
            )

    def _trace_read_failed(self, read: object) -> None:
        # Asked on every request: a reader that always fails must not log every time, on the
        # event loop, as often as requests arrive.
        self._trace_read_failures += 1
        now = time.monotonic()
        if now - self._last_trace_log >= _DROP_LOG_INTERVAL:
            self._last_trace_log = now
            logger.exception(
                "reading the trace context failed in %r (%d failures so far)",
                read,
                self._trace_read_failures,
            )

    def _drop(self, reason: str, count: int = 1) -> None:
        self._dropped += count
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            self._last_drop_log = now
            logger.warning("usage event dropped: %s (%d dropped so far)", reason, self._dropped)

    async def _drain(self, queue: asyncio.Queue[UsageEvent]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < _MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            # How far delivery got: the sync sinks, then event by event, sink by sink.
            synced, delivered, async_sink = False, 0, 0
            try:
                if self._sync_sinks and not await self._deliver_to_sync_sinks(batch):
                    # Cancelled while the worker thread delivered: the sync sinks lose none
                    # of it, the async sinks are still to have it.
                    synced = True
                    if not self._async_sinks:
                        delivered = len(batch)
                    raise asyncio.CancelledError
                synced = True
                for event in batch:
                    async_sink = 0
                    while async_sink < len(self._async_sinks):
                        if queue is not self._queue:
                            # Shutdown gave up on this delivery (a sink ignored its
                            # cancellation) and closed the sinks: write to none, wait no more.
                            self._drop("shutdown had given up on it", len(batch) - delivered)
                            return
                        await _call_guarded(self._async_sinks[async_sink], event)
                        async_sink += 1
                    delivered += 1
            except asyncio.CancelledError:
                if delivered < len(batch):
                    if self._closed:
                        self._drop("shutdown cut its delivery short", len(batch) - delivered)
                    else:
                        rest = _unfinished(batch[delivered:], synced, async_sink)
                        await self._deliver_as_the_loop_ends(rest, queue)
                raise
            finally:
                for _ in batch:
                    queue.task_done()

    async def _deliver_as_the_loop_ends(
        self, unfinished: list[_Unfinished], queue: asyncio.Queue[UsageEvent]
    ) -> None:
        """Deliver what a cancellation that is not :meth:`aclose`'s cut short, and what is
        still queued, for at most ``shutdown_timeout`` seconds: the event loop is ending (a
        host running each request in a loop of its own, such as ``asyncio.run`` per call or
        a test framework's loop per test), and waits for this before it closes. Sync sinks
        are called on the loop's thread: the worker thread may not get another turn."""
        while not queue.empty():
            unfinished.append(_Unfinished(queue.get_nowait(), True, 0))
            queue.task_done()
        delivered = 0
        try:
            async with asyncio.timeout(self._shutdown_timeout):
                for item in unfinished:
                    if item.sync_sinks:
                        for sink, event, awaitable in self._call_sync_sinks([item.event]):
                            await _await_guarded(sink, event, awaitable)
                    for sink in self._async_sinks[item.first_async_sink :]:
                        await _call_guarded(sink, item.event)
                    delivered += 1
        except TimeoutError:
            self._drop("its event loop ended before it was delivered", len(unfinished) - delivered)

    async def _deliver_to_sync_sinks(self, batch: list[UsageEvent]) -> bool:
        """Hand ``batch`` to the sync sinks in the worker thread; ``False`` if cancelled
        once the thread had it (it delivers the batch all the same, and the cancellation is
        the caller's to raise)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="messages_mw-usage")
        work = self._executor.submit(self._call_sync_sinks, batch)
        try:
            pending = await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            if work.cancel():  # still waiting for the thread: never delivered
                raise
            return False
        for sink, event, awaitable in pending:
            await _await_guarded(sink, event, awaitable)
        return True

    def _call_sync_sinks(self, batch: list[UsageEvent]) -> _Pending:
        """Runs in the worker thread. Awaitables returned by sinks that looked sync (a lambda
        around a coroutine function) are handed back to be awaited on the loop."""
        pending: _Pending = []
        for sink in self._sync_sinks:
            if hasattr(sink, "write_events"):
                _deliver_inline(sink, batch)
                continue
            for event in batch:
                try:
                    result = sink(event)
                except Exception:
                    logger.exception("usage sink %r failed on request %s", sink, event.request_id)
                    continue
                if inspect.isawaitable(result):
                    pending.append((sink, event, result))
        return pending

    async def aclose(self) -> None:
        """Deliver what is queued (waiting at most ``shutdown_timeout`` seconds, and as long
        again for an async sink to take its cancellation; one that ignores it is left
        running, and delivers nothing more), then close the sinks.

        Call it at shutdown, in the loop that emitted. Events still queued after the timeout,
        or emitted while this runs, are dropped and counted. Sink ``aclose()`` failures are
        logged, not raised. If this coroutine is cancelled, delivery stops there and the sinks
        are not closed. Once it has returned, the next :meth:`emit` starts delivery afresh: a
        gateway may outlive one lifespan of its host (a test client opened twice), and its
        usage must not stop with the first.
        """
        if self._closed:
            return
        self._closed = True
        self._flush_pending()
        task = self._task
        try:
            if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
                await self._wait_for_queue()
        finally:
            if task is not None:
                task.cancel()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
        if task is not None and self._loop is asyncio.get_running_loop():
            # A sink that swallows the cancellation would otherwise hold shutdown for ever.
            _, still_running = await asyncio.wait([task], timeout=self._shutdown_timeout)
            if still_running:
                logger.warning("a usage sink ignored its cancellation at shutdown; left running")
        if self._queue is not None and self._queue.qsize():
            self._drop("it was still queued at shutdown", self._queue.qsize())
        for sink in self._sinks:
            await _close_guarded(sink)
        self._loop = self._queue = self._task = self._executor = None
        self._closed = False

    async def _wait_for_queue(self) -> None:
        assert self._queue is not None
        try:
            await asyncio.wait_for(self._queue.join(), self._shutdown_timeout)
        except TimeoutError:
            logger.warning(
                "usage sinks did not finish within %.1f s of shutdown", self._shutdown_timeout
            )


async def _call_guarded(sink: UsageSink, event: UsageEvent) -> None:
    try:
        result = sink(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("usage sink %r failed on request %s", sink, event.request_id)


async def _await_guarded(sink: object, event: UsageEvent, awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("usage sink %r failed on request %s", sink, event.request_id)


async def _close_guarded(sink: object) -> None:
    close = getattr(sink, "aclose", None)
    if close is None:
        return
    try:
        result = close()
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("closing usage sink %r failed", sink)


class JsonLinesSink:
    """Writes each event as one JSON object per line, each line on disk as soon as it is
    written (no buffering in the process).

    The dispatcher hands over the events of requests that end close together as one batch
    (:meth:`write_events`), written with one system call, at most 10 ms after the first of
    them ended.

    ``target`` is a path (opened for appending at construction, closed by :meth:`aclose`) or
    an open text stream, which is never closed here; ``None`` means ``sys.stdout`` as it is
    when the sink is built. A target that is a pipe, FIFO, socket or terminal is written from
    the dispatcher's worker thread, so a reader that stops reading stalls the sink, never the
    gateway. Raises :class:`OSError` at construction if the path cannot be opened. The line
    holds only what :class:`UsageEvent` holds: no credentials.
    """

    def __init__(self, target: str | Path | TextIO | None = None) -> None:
        self._path: str | Path | None = None
        self._file: IO[bytes] | None = None
        self._stream: TextIO | None = None
        if isinstance(target, str | Path):
            self._path = target
            self._file = _open_for_appending(target)
        else:
            self._stream = sys.stdout if target is None else target
        # Written on the event loop only where a write cannot stall it; a pipe (stdout into a
        # log shipper that stopped reading) gets the dispatcher's worker thread instead.
        self.nonblocking = _never_blocks(self._file or self._stream or sys.stdout)

    def __call__(self, event: UsageEvent) -> None:
        self._write(_encoder.encode(event) + b"\n")

    def write_events(self, events: Sequence[UsageEvent]) -> None:
        """Write several events, one line each, in one write: how the dispatcher delivers."""
        self._write(_encoder.encode_lines(events))

    def _write(self, lines: bytes) -> None:
        if self._file is None and self._path is not None:
            self._file = _open_for_appending(self._path)  # closed by aclose(), written again
        if self._file is not None:
            # A raw file may take less than it is given (a pipe, a signal): finish the lines,
            # so a reader never sees half an event.
            view = memoryview(lines)
            while view:
                view = view[self._file.write(view) or 0 :]
        elif self._stream is not None:
            self._stream.write(lines.decode())
            self._stream.flush()

    async def aclose(self) -> None:
        """Close the file this sink opened (a later write opens it again); streams handed in
        stay open."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_for_appending(path: str | Path) -> IO[bytes]:
    # Owned until aclose(), so not a with-block. Unbuffered binary append: each line is one
    # write(2), on disk at once, with no flush step.
    return open(path, "ab", buffering=0)
