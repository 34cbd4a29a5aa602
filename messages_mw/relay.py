"""Relaying an upstream answer to the ASGI client: whole bodies, and SSE chunk by chunk.

A stream is relayed byte for byte as chunks arrive, each event as soon as its last byte has
(the start of an event waits for its end, which no client could act on sooner), while a
:class:`StreamObserver` reads usage along the way. Failures after the response started end the
stream with an SSE ``error`` event, and so does an upstream stream that ends without
``message_stop``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import msgspec

from .context import RequestContext
from .errors import (
    GatewayError,
    InternalGatewayError,
    OverloadedError,
    UpstreamUnavailableError,
    error_class,
)
from .protocol import DECODE_ERRORS, ObservedResponse
from .providers.base import ProviderResponse
from .request_body import ClientDisconnectedError
from .streaming import MAX_EVENT_BYTES, StreamObserver, frame_event, merge_usage
from .types import Send

__all__ = ["HeaderBuilder", "relay_body", "relay_stream"]

logger = logging.getLogger("messages_mw")

HeaderBuilder = Callable[[ProviderResponse, RequestContext], list[tuple[bytes, bytes]]]
_response_decoder = msgspec.json.Decoder(ObservedResponse)

# How long the body may go on after the stream's end (message_stop or an error event) before
# the gateway ends the response itself: the end of the body follows at once, as a rule.
AFTER_END_SECONDS = 1.0
# How long a stream cut short may wait for its client to take the error event that ends it.
_CUT_STREAM_SEND_SECONDS = 0.5


async def relay_body(
    response: ProviderResponse,
    send: Send,
    context: RequestContext,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    """Send a complete response (``body`` may differ from ``response.body``, e.g. with cost)."""
    context.status = response.status
    context.response_started = True
    # The length is known: a client then reads one plain body instead of chunked framing.
    headers.append((b"content-length", b"%d" % len(body)))
    # Before the sends: a client slow to read a large body must not count as a slow answer.
    context.first_byte_at = time.perf_counter()
    try:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except OSError as exc:
        raise ClientDisconnectedError from exc  # the server's word that the client left
    context.response_sent = True


def observe_response_body(body: bytes, context: RequestContext) -> None:
    """Read usage and stop reason, or the error type, from a JSON response, if it parses."""
    try:
        observed = _response_decoder.decode(body)
    except DECODE_ERRORS:
        return
    merge_usage(context.usage, observed.usage)
    context.stop_reason = observed.stop_reason
    context.response_id, context.response_model = observed.id, observed.model
    if observed.error is not None and observed.error.type:
        context.error_type = observed.error.type


class _Sends:
    """One stream's sends to its client, numbered: ``started`` before each, ``done`` after."""

    __slots__ = ("done", "last", "stalled", "started", "task")

    def __init__(self, task: asyncio.Task[object] | None) -> None:
        self.task = task
        self.started = self.done = self.last = 0
        self.stalled = False


class StallWatch:
    """Notices clients that stopped reading: a stream whose same send is still under way a
    whole ``timeout`` after it was last looked at. One timer serves every stream of a gateway,
    so a stream pays a dict entry and two stores per send, not a timer of its own; a stall is
    noticed between one and two ``timeout`` after it began.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._streams: dict[_Sends, None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> _Sends:
        """Start watching the current task's stream."""
        sends = _Sends(asyncio.current_task())
        self._streams[sends] = None
        loop = asyncio.get_running_loop()
        if self._timer is None or self._loop is not loop:
            if self._loop is not loop:
                # A new event loop: the old one's streams (and timer) are gone with it.
                self._streams = {sends: None}
            self._loop = loop
            self._timer = loop.call_later(self.timeout, self._check)
        return sends

    def unwatch(self, sends: _Sends) -> None:
        self._streams.pop(sends, None)

    def _check(self) -> None:
        self._timer = None
        for sends in list(self._streams):
            started = sends.started
            if started != sends.done and started == sends.last and sends.task is not None:
                sends.stalled = True
                del self._streams[sends]
                sends.task.cancel()
            else:
                sends.last = started
        if self._streams and self._loop is not None:
            self._timer = self._loop.call_later(self.timeout, self._check)


async def relay_stream(
    response: ProviderResponse,
    send: Send,
    context: RequestContext,
    headers: list[tuple[bytes, bytes]],
    stalls: StallWatch | None = None,
) -> None:
    """Relay SSE chunks as they arrive; always ends the response, cleanly or with an error
    event. Cancellation (client gone) leaves the usage read so far in ``context``.

    A client that reads nothing while the stream waits on it is taken for gone by ``stalls``
    (:class:`ClientDisconnectedError`): it would hold its upstream connection, one of a
    bounded pool, for as long as it kept its socket open.
    """
    observer = StreamObserver()
    stall = stalls.watch() if stalls is not None else None
    try:
        await _pump(response, send, context, headers, observer, stall)
    except OSError as exc:
        # An ASGI server may tell that the client left by raising OSError from send(), as
        # the ASGI spec suggests (providers raise GatewayError for the upstream's failures).
        raise ClientDisconnectedError from exc
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if stall is None or not stall.stalled or task is None:
            if not context.client_disconnected:
                await _end_cut_stream(send, observer, context)
            raise
        task.uncancel()
        assert stalls is not None
        logger.warning(
            "request %s: the client read nothing for %g s; the stream is dropped",
            context.request_id,
            stalls.timeout,
        )
        raise ClientDisconnectedError from None
    finally:
        if stall is not None:
            assert stalls is not None
            stalls.unwatch(stall)
        context.usage = observer.settled_usage()
        context.stop_reason = observer.stop_reason
        context.response_id, context.response_model = observer.message_id, observer.model
        if observer.error_type is not None and context.error_type is None:
            context.error_type = observer.error_type


async def _pump(
    response: ProviderResponse,
    send: Send,
    context: RequestContext,
    headers: list[tuple[bytes, bytes]],
    observer: StreamObserver,
    stall: _Sends | None,
) -> None:
    assert response.chunks is not None
    # Each body send is numbered (stall.started before, stall.done after), inline: the stall
    # timer tells a send that does not end from a client simply waiting for the upstream.
    context.status = response.status
    context.response_started = True
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    ended = response.ended
    # The last chunk, held back only once the upstream body is complete (so nothing waits on
    # it): it leaves with the end of the response, in one write instead of two.
    last = b""
    # The start of an event not complete yet. A client cannot dispatch it before its end
    # anyway, and should the upstream break off inside it, the client must not get half an
    # event: any terminator would make it parse as broken JSON instead of the error after it.
    unfinished = bytearray()
    error: GatewayError | None = None
    try:
        async for chunk in response.chunks:
            if last:
                if stall is not None:
                    stall.started += 1
                await send({"type": "http.response.body", "body": last, "more_body": True})
                if stall is not None:
                    stall.done = stall.started
                last = b""
            if context.first_byte_at is None:
                context.first_byte_at = time.perf_counter()
            observer.feed(chunk)
            if unfinished or observer.unfinished_bytes:
                chunk = _complete_events(chunk, unfinished, observer.unfinished_bytes)
                if unfinished[:1] == b":" and (taken := observer.take_leading_comments()):
                    # Keep-alive comments with no event after them yet: the client's read
                    # timeout must see them now, not when the next event ends.
                    chunk += bytes(unfinished[:taken])
                    del unfinished[:taken]
                if observer.unfinished_bytes > MAX_EVENT_BYTES:
                    # The whole events read with it still go out; the endless one does not.
                    last = chunk
                    del unfinished[:]
                    raise UpstreamUnavailableError(
                        f"The upstream sent an event over {MAX_EVENT_BYTES} bytes without "
                        "ending it; the gateway reads no more."
                    )
                if not chunk:
                    continue
            if ended():
                last = chunk
            else:
                if stall is not None:
                    stall.started += 1
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if stall is not None:
                    stall.done = stall.started
                if observer.finished and not unfinished:
                    await _relay_rest(response.chunks, send, context)
                    break
    except GatewayError as exc:
        error = exc
    except OSError:
        raise  # from send(): the client has gone, and nothing more can reach it
    except Exception:
        logger.exception("request %s: relaying the stream failed", context.request_id)
        error = InternalGatewayError(f"Internal gateway error (request {context.request_id}).")
    last += _ending(bytes(unfinished), error, observer, context)
    if stall is not None:
        stall.started += 1
    await send({"type": "http.response.body", "body": last, "more_body": False})
    context.response_sent = True


async def _end_cut_stream(send: Send, observer: StreamObserver, context: RequestContext) -> None:
    """End a stream cancelled while its client still reads: the server shutting down (its
    graceful timeout ran out) or a host's own deadline. An ``overloaded_error`` event, which
    the SDKs raise as a retryable error, tells the client what a bare close would not. The
    client has only whole events: the unfinished one was held back."""
    if observer.finished:
        return
    context.error_type = context.error_type or "cancelled"
    request_id = context.upstream_request_id or context.request_id
    error = OverloadedError("The gateway stopped this stream: it is shutting down. Retry.")
    ending = frame_event("error", error.body(request_id))
    try:
        async with asyncio.timeout(_CUT_STREAM_SEND_SECONDS):
            await send({"type": "http.response.body", "body": ending, "more_body": False})
    except (OSError, TimeoutError):
        return  # the client is gone or not reading: the close will do
    context.response_sent = True


async def _relay_rest(chunks: AsyncIterator[bytes], send: Send, context: RequestContext) -> None:
    """Relay what follows the stream's end (message_stop, or an error event) for at most
    :data:`AFTER_END_SECONDS`: the end of the body, as a rule, soon after. An upstream, or a
    proxy before it, that keeps the body open after the answer (silent, or sending pings)
    would otherwise hold the client, whose SDK reads to the end of the body, until the read
    timeout or forever; the gateway ends the response instead, and the upstream connection,
    its body unfinished, is not reused."""
    try:
        async with asyncio.timeout(AFTER_END_SECONDS):
            async for chunk in chunks:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except TimeoutError:
        logger.info(
            "request %s: the upstream kept its body open %g s after the stream ended; "
            "the response is ended here",
            context.request_id,
            AFTER_END_SECONDS,
        )


def _complete_events(chunk: bytes, unfinished: bytearray, still_unfinished: int) -> bytes:
    """The bytes that complete events, from what was unfinished plus ``chunk``; keeps the
    last ``still_unfinished`` of them in ``unfinished``."""
    unfinished += chunk
    cut = len(unfinished) - still_unfinished
    complete = bytes(unfinished[:cut])
    del unfinished[:cut]
    return complete


def _ending(
    tail: bytes, error: GatewayError | None, observer: StreamObserver, context: RequestContext
) -> bytes:
    """What follows the relayed events: an unterminated last event if it ends the stream, an
    ``error`` event if the stream did not end as the grammar requires, or nothing."""
    if observer.finished:
        if error is not None:
            # The client has the whole stream already (message_stop, or the upstream's own
            # error event). SDKs read past message_stop and raise on an error event, so adding
            # one would turn a complete answer into an exception.
            logger.info(
                "request %s: upstream failed after the stream ended: %s", context.request_id, error
            )
        return tail
    ending = b""
    if tail:
        # An upstream that left out the last blank line: an event the gateway reads (a
        # message_delta, a message_stop) that misses only its terminator is relayed with one.
        read = observer.events_read
        observer.feed(b"\n\n")
        if observer.events_read > read:
            ending = tail + b"\n\n"
            if observer.finished:
                return ending
        else:
            logger.warning(
                "request %s: dropped %d bytes of an unfinished event", context.request_id, len(tail)
            )
    if error is None and observer.error_type is not None:
        # The upstream's error came in an event its client drops (no ``event:`` line).
        message = observer.error_message or "The upstream stream failed."
        error = error_class(observer.error_type, UpstreamUnavailableError)(message)
    if error is None:
        error = UpstreamUnavailableError("The upstream stream ended before message_stop.")
    context.error_type = error.error_type
    logger.warning("request %s: stream failed: %s", context.request_id, error)
    # The id the response's request-id header carries (the upstream's, when it sent one): an
    # SDK reports the header's, and the body must not name another request.
    request_id = context.upstream_request_id or context.request_id
    return ending + frame_event("error", error.body(request_id))
