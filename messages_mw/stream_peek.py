"""Holding a streamed answer back until its first content event decides whether it failed.

:func:`~messages_mw.fallback.run_chain` reads a stream's opening events (``message_start``,
pings) with :func:`peek_stream` before committing to it, then hands the client
:func:`replay_stream`: the held chunks followed by the rest, with nothing read twice or lost.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Literal

import msgspec

from .errors import GatewayError, UpstreamTimeoutError, UpstreamUnavailableError, error_class
from .protocol import DECODE_ERRORS, ObservedEvent

__all__ = ["drop_read", "peek_stream", "replay_stream"]

_event_decoder = msgspec.json.Decoder(ObservedEvent)
# The event separators the SDKs accept; a regex finds the earliest in one left-to-right pass.
_SEPARATOR = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# Events that precede the first content block; every other named event commits a stream.
_PREAMBLE_EVENTS = frozenset({b"message_start", b"ping"})
# A stream still without content after this much is committed anyway rather than buffered on.
_MAX_PEEK_BYTES = 1 << 20

_Verdict = GatewayError | Literal["content"] | None


def _judge_event(block: bytes) -> _Verdict:
    """``content`` for a content event, the error of an ``error`` event, else ``None``.

    Events without an ``event:`` line count for nothing: the SDKs drop them.
    """
    name: bytes | None = None
    data: list[bytes] = []
    for line in block.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            data.append(line[5:].strip())
    if name is None or name in _PREAMBLE_EVENTS:
        return None
    if name != b"error":
        return "content"
    try:
        error = _event_decoder.decode(b"\n".join(data)).error
    except DECODE_ERRORS:
        error = None
    kind = (error.type if error else None) or ""
    message = (error.message if error else None) or "The upstream stream failed before content."
    return error_class(kind, UpstreamUnavailableError)(message)


class _PeekScanner:
    """Splits SSE bytes into events incrementally until one decides the stream's fate."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> _Verdict:
        pending = self._pending
        pending += chunk
        start, verdict = 0, None
        while verdict is None:
            separator = _SEPARATOR.search(pending, start)
            if separator is None:
                break
            verdict = _judge_event(bytes(pending[start : separator.start()]))
            start = separator.end()
        del pending[:start]
        return verdict

    def finish(self) -> _Verdict:
        """Judge an unterminated last event, once the stream has ended."""
        return _judge_event(bytes(self._pending))


async def peek_stream(
    chunks: AsyncIterator[bytes],
    retry_statuses: tuple[int, ...],
    hold: float,
    buffered: list[bytes],
    first_byte_timeout: float | None = None,
) -> tuple[GatewayError | None, asyncio.Future[bytes] | None]:
    """Read until the first content event, or for at most ``hold`` seconds, into ``buffered``
    (which holds the chunks read even if this raises or is cancelled); return the failure if
    any, and the read still under way when the hold ran out (for the caller to await next).
    With ``first_byte_timeout``, a stream that has sent nothing when the hold runs out is
    waited for until that many seconds from the start, then is a timeout failure.

    Raises a non-retryable ``GatewayError`` from the stream, and anything else it raises.
    """
    scanner, size = _PeekScanner(), 0
    hold_timer = _HoldTimer(asyncio.get_running_loop(), hold)
    read: asyncio.Future[bytes] | None = None
    try:
        while True:
            # A read of its own, so that the hold running out leaves it under way: cancelling
            # it would end the upstream's stream.
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
        if read is not None:
            drop_read(read)


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
    with a timeout per read cost a stream 3% of its CPU)."""

    __slots__ = ("_timer", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, hold: float) -> None:
        self._waiter: asyncio.Future[None] | None = loop.create_future()
        self._timer = loop.call_later(hold, self._wake)

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, read: asyncio.Future[bytes]) -> bool:
        """Whether ``read`` finished before the hold ran out."""
        waiter = self._waiter
        if waiter is None or waiter.done():  # the hold is over
            return read.done()
        read.add_done_callback(self._wake)
        await waiter
        if not read.done():
            self._waiter = None
            return False
        self._waiter = read.get_loop().create_future()
        return True

    def stop(self) -> None:
        self._timer.cancel()


def drop_read(read: asyncio.Future[bytes]) -> None:
    """Stop a read nobody will await: cancel it, or take its error so none is logged unseen."""
    if not read.done():
        read.cancel()
    elif not read.cancelled():
        read.exception()


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
        if pending is not None:
            drop_read(pending)
