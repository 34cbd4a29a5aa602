"""Holding a streamed answer back until its first content event decides whether it failed.

:func:`~messages_mw.fallback.run_chain` reads a stream's opening events (``message_start``,
pings, a ``message_delta`` ahead of any block) with :func:`peek_stream` before committing to
it, then hands the client
:func:`replay_stream`: the held chunks followed by the rest, with nothing read twice or lost.
"""

from __future__ import annotations

import asyncio
from asyncio import Future
from collections.abc import AsyncIterator, Callable
from typing import Literal

import msgspec

from .errors import (
    GatewayError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    error_class,
)
from .protocol import DECODE_ERRORS, ObservedError
from .providers.base import never_ready
from .shared_timer import SharedTimer
from .streaming import SSE_SEPARATOR

__all__ = ["peek_stream", "replay_stream", "stop_read", "telling_first_verdict"]


class _ErrorEvent(msgspec.Struct):
    """An ``error`` event's data: its ``error`` object kept whole, to answer as it came."""

    error: msgspec.Raw = msgspec.Raw()  # empty when absent (msgspec takes no Raw | None)


_error_event_decoder = msgspec.json.Decoder(_ErrorEvent)
_error_decoder = msgspec.json.Decoder(ObservedError)
# How long a cancelled read may take to end before its stream is closed all the same.
_READ_STOP_SECONDS = 1.0
# The longest event separator, with the byte that tells a lone CR from a CRLF.
_LONGEST_SEPARATOR = 4
# Events that carry no content; every other named event commits a stream. A message_delta
# is among them for the one that can come before any content block: the usage a stream
# reports ahead of its error (a translated upstream abort), which must not turn that error
# into a 200. An answer with no content at all is committed by its message_stop.
_PREAMBLE_EVENTS = frozenset({b"message_start", b"ping", b"message_delta"})
# A stream still without content after this much is committed anyway rather than buffered on.
_MAX_PEEK_BYTES = 1 << 20

_Verdict = GatewayError | Literal["content"] | None


def _judge_event(data: bytes, start: int, end: int) -> _Verdict:
    """``content`` for a content event, the error of an ``error`` event, else ``None``: the
    event is ``data[start:end]``.

    Events without an ``event:`` line count for nothing: the SDKs drop them.
    """
    name = _leading_name(data, start, end)
    if name is None:
        block = data[start:end]
        names = [line[6:].strip() for line in block.splitlines() if line.startswith(b"event:")]
        name = names[-1] if names else None
    if name is None or name in _PREAMBLE_EVENTS:
        return None
    if name != b"error":
        return "content"
    lines = data[start:end].splitlines()
    payload = b"\n".join(line[5:].strip() for line in lines if line.startswith(b"data:"))
    try:
        raw = _error_event_decoder.decode(payload).error
        error = _error_decoder.decode(raw) if raw else None
    except DECODE_ERRORS:
        raw, error = None, None
    kind = (error.type if error else None) or ""
    message = (error.message if error else None) or "The upstream stream failed before content."
    failure = error_class(kind, UpstreamUnavailableError)(message)
    if error is not None and raw:
        failure.upstream_error = bytes(raw)
    return failure


def _leading_name(data: bytes, start: int, end: int) -> bytes | None:
    """The event's name when its first line names it and no later line does (Anthropic's
    framing), found without splitting the event into lines; else ``None``."""
    if not data.startswith(b"event:", start):
        return None
    line_end = end
    for newline in (b"\n", b"\r"):
        found = data.find(newline, start, line_end)
        if found >= 0:
            line_end = found
    # A later event: line would be the one that counts.
    if data.find(b"\nevent:", line_end, end) >= 0 or data.find(b"\revent:", line_end, end) >= 0:
        return None
    return data[start + 6 : line_end].strip()


def _next_separator(data: bytes, start: int, lf_only: bool) -> tuple[int, int] | None:
    """Where the earliest event separator at or after ``start`` begins and ends; ``lf_only``:
    ``data`` holds no CR from ``start`` on."""
    if lf_only:
        blank_line = data.find(b"\n\n", start)
        return None if blank_line < 0 else (blank_line, blank_line + 2)
    found = SSE_SEPARATOR.search(data, start)
    return None if found is None else found.span()


class _PeekScanner:
    """Splits SSE bytes into events incrementally until one decides the stream's fate.

    Events are judged where they lie in the chunk, without copying them out; only an
    unterminated last event is kept for the next chunk, which is searched from just before
    its end (a separator may straddle the two)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> _Verdict:
        pending = self._pending
        data = pending + chunk if pending else chunk
        search_from = max(len(pending) - _LONGEST_SEPARATOR + 1, 0)
        # Without a CR (Anthropic's framing) an event can only end at a blank line, which
        # bytes.find finds four times faster than the regex that looks for every form.
        lf_only = data.find(b"\r", search_from) < 0
        start, verdict = 0, None
        while verdict is None:
            separator = _next_separator(data, max(start, search_from), lf_only)
            if separator is None:
                break
            verdict = _judge_event(data, start, separator[0])
            start = separator[1]
        self._pending = data[start:] if verdict is None else b""
        return verdict

    def finish(self) -> _Verdict:
        """Judge an unterminated last event, once the stream has ended."""
        return _judge_event(self._pending, 0, len(self._pending))


async def peek_stream(
    chunks: AsyncIterator[bytes],
    retry_statuses: tuple[int, ...],
    hold: float,
    buffered: list[bytes],
    first_byte_timeout: float | None = None,
    *,
    timer: SharedTimer | None = None,
    ready: Callable[[], bool] = never_ready,
) -> tuple[GatewayError | None, asyncio.Future[bytes] | None]:
    """Read until the first content event, or for at most ``hold`` seconds, into ``buffered``
    (which holds the chunks read even if this raises or is cancelled); return the failure if
    any, and the read still under way when the hold ran out (for the caller to await next).
    With ``first_byte_timeout``, a stream that has sent nothing when the hold runs out is
    waited for until that many seconds from the start, then is a timeout failure. The hold
    is timed on ``timer`` (a gateway's, shared by its requests), or on a timer of its own.
    ``ready`` is the provider's word that the next read will not wait (see
    :class:`~messages_mw.providers.base.ProviderResponse`).

    Raises a non-retryable ``GatewayError`` from the stream, and anything else it raises.
    """
    scanner, size = _PeekScanner(), 0
    loop = asyncio.get_running_loop()
    hold_timer = _HoldTimer(loop, hold, timer or SharedTimer())
    read: asyncio.Future[bytes] | None = None
    try:
        while True:
            if ready():
                read = await _read_at_once(chunks, loop)
            else:
                # A read of its own, so that the hold running out leaves it under way:
                # cancelling it would end the upstream's stream.
                read = asyncio.ensure_future(anext(chunks))
            if not await hold_timer.wait(read):
                if buffered or first_byte_timeout is None:
                    pending, read = read, None
                    return None, pending
                # Not one byte since the head: relaying it would only give up the fallback.
                if not await _done_within(read, first_byte_timeout - hold):
                    return _silent(first_byte_timeout), None
            try:
                chunk = read.result()
            except StopAsyncIteration:
                verdict = scanner.finish()
                if verdict is None:
                    message = "The upstream stream ended before any content."
                    verdict = UpstreamUnavailableError(message)
                return None if verdict == "content" else verdict, None
            except GatewayError as exc:
                if exc.status not in retry_statuses:
                    raise
                return exc, None
            buffered.append(chunk)
            size += len(chunk)
            verdict = scanner.feed(chunk)
            if isinstance(verdict, GatewayError):
                return verdict, None
            if verdict == "content" or size > _MAX_PEEK_BYTES:
                return None, None
    finally:
        hold_timer.stop()
        if read is not None and not read.done():
            await stop_read(read)
        elif read is not None:
            _drop_read(read)  # as most have ended: no coroutine for them


async def _read_at_once(
    chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop
) -> Future[bytes]:
    """The next chunk, read in this task, as a settled future: for a read the provider says
    will not wait (a task of its own, which a read that may wait needs, costs about 5 µs)."""
    read: Future[bytes] = loop.create_future()
    try:
        read.set_result(await anext(chunks))
    except Exception as exc:  # StopAsyncIteration, or the stream's own error
        read.set_exception(exc)
    return read


async def _done_within(read: asyncio.Future[bytes], seconds: float) -> bool:
    if seconds > 0:
        await asyncio.wait((read,), timeout=seconds)
    return read.done()


def _silent(first_byte_timeout: float) -> UpstreamTimeoutError:
    return UpstreamTimeoutError(
        f"The upstream sent its response head, then nothing for {first_byte_timeout:g} s "
        "(first_byte_timeout)."
    )


class _HoldTimer:
    """Waits for reads until ``hold`` seconds from now, on one timer for all of them (a wait
    with a timeout per read cost a stream 3% of its CPU). Once the hold has run out it stays
    out: that is a flag, so a timer firing while no wait was pending is not lost."""

    __slots__ = ("_entry", "_expired", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, hold: float, timer: SharedTimer) -> None:
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self._expired = False
        self._entry = timer.call_later(loop, hold, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._wake()

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, read: asyncio.Future[bytes]) -> bool:
        """Whether ``read`` finished before the hold ran out."""
        if self._expired or read.done():
            return read.done()
        waiter = self._waiter = self._loop.create_future()
        read.add_done_callback(self._wake)
        try:
            await waiter
        finally:
            self._waiter = None
        return read.done()

    def stop(self) -> None:
        self._entry.cancel()


def _drop_read(read: asyncio.Future[bytes]) -> None:
    """Stop a read nobody will await: cancel it, or take its error so none is logged unseen."""
    if not read.done():
        read.cancel()
    elif not read.cancelled():
        read.exception()


async def stop_read(read: asyncio.Future[bytes]) -> None:
    """:func:`_drop_read`, then wait until the read has ended: the stream it reads may be
    closed only then (closing a generator a read still runs in raises RuntimeError, and its
    connection stays open)."""
    _drop_read(read)
    if not read.done():
        # Bounded: a stream that ignores its cancellation must not hold the request for ever
        # (closing it then may fail as before, which the caller survives).
        await asyncio.wait((read,), timeout=_READ_STOP_SECONDS)
        if read.done():
            _drop_read(read)


async def replay_stream(
    buffered: list[bytes], pending: asyncio.Future[bytes] | None, rest: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    try:
        for chunk in buffered:
            yield chunk
        if pending is not None:
            try:
                chunk = await pending
            except StopAsyncIteration:
                return
            yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        if pending is not None and not pending.done():
            await stop_read(pending)
        elif pending is not None:
            _drop_read(pending)


async def telling_first_verdict(
    chunks: AsyncIterator[bytes], tell: Callable[[GatewayError | None], object]
) -> AsyncIterator[bytes]:
    """``chunks`` as they come, judged as :func:`peek_stream` judges them until one decides
    the stream's fate: ``tell`` hears, once, ``None`` for a first content event, or the error
    of an ``error`` event, of a failing read, or of a stream that ends before any content."""
    scanner: _PeekScanner | None = _PeekScanner()
    try:
        async for chunk in chunks:
            if scanner is not None and (verdict := scanner.feed(chunk)) is not None:
                scanner = None
                tell(None if verdict == "content" else verdict)
            yield chunk
    except GatewayError as exc:  # the connection broke, or went silent, before the content
        if scanner is not None:
            tell(exc)
        raise
    if scanner is not None:
        verdict = scanner.finish()
        if verdict is None:
            verdict = UpstreamUnavailableError("The upstream stream ended before any content.")
        tell(None if verdict == "content" else verdict)
