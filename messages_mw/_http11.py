"""HTTP/1.1 on one socket, for :mod:`messages_mw.transport`.

:class:`Connection` is the :class:`asyncio.Protocol` that feeds a response parser
(:mod:`messages_mw._http11_parse`) each socket read and lets one task at a time await the
response.
"""

from __future__ import annotations

import asyncio
import math
import select
import socket
from collections import deque
from collections.abc import Iterable
from typing import cast

from ._http11_parse import ProtocolError, ResponseHead, ResponseParserLike, new_response_parser

__all__ = ["Connection", "Origin", "PeerClosedError", "ProtocolError", "head_and_body"]

# Bodies this small are copied behind the head so that both leave in one send(); larger ones
# go as two buffers, which uvloop writes with one writev() and no copy.
_COALESCE_LIMIT = 16 * 1024
# A timer firing this close to its deadline counts as on time (uvloop's timers tick in ms).
_TIMER_SLACK = 0.001
# A slow consumer makes reading pause above the high mark and resume once it drains below the low.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024

Origin = tuple[bytes, bytes, int]


def head_and_body(head: bytes, body: bytes) -> tuple[bytes, ...]:
    """The buffers to hand ``writelines()`` so a message's head and body leave in one syscall."""
    if len(body) <= _COALESCE_LIMIT:
        return (head + body,)
    return (head, body)


class PeerClosedError(Exception):
    """The connection went away before the response was complete."""


def _ended_by_close(parser: ResponseParserLike, exc: Exception | None) -> bool:
    """Whether the response is complete now that the connection has closed (``exc``: why,
    if not cleanly). Only a clean close ends a body that runs until the close: after a reset
    it is cut short, and a cut body must not pass for a whole one."""
    if parser.complete:
        return True
    return exc is None and parser.feed_eof()


class Connection(asyncio.Protocol):
    """One socket carrying one request at a time; the consumer side is awaited, the rest is
    driven by the event loop's callbacks."""

    _transport: asyncio.Transport

    def __init__(self, loop: asyncio.AbstractEventLoop, key: Origin) -> None:
        self.key = key
        self.reused = False
        self._idle_since = 0.0
        self.received_any = False
        self.request_sent = False
        self._loop = loop
        self._parser: ResponseParserLike | None = None
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._unfinished_request = False
        self._closed = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        # The current wait's deadline (loop time), and the one timer that enforces it.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # Asks the kernel whether the idle socket has something to read (see spoke_while_idle).
        self._poller: select.poll | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(select, "poll"):  # not on Windows, where the check is skipped
            self._poller = select.poll()
            self._poller.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            # Nothing may arrive on an idle connection; whatever this is, the socket is spent.
            self._transport.abort()
            return
        self.received_any = True
        try:
            produced = parser.feed(data)
        except ProtocolError as exc:
            self._error = exc
            self._transport.abort()
        else:
            self._buffered += produced
            if self._buffered > _HIGH_WATER and not self._reading_paused:
                self._reading_paused = True
                self._transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        parser = self._parser
        if parser is not None and self._error is None and not _ended_by_close(parser, exc):
            if self.received_any:
                error = PeerClosedError("Server disconnected before the response was complete.")
            else:
                error = PeerClosedError("Server disconnected without sending a response.")
            error.__cause__ = exc
            self._error = error
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    @property
    def usable(self) -> bool:
        """Whether the socket is still open, as checked before an idle connection is reused."""
        return not self._closed and not self._transport.is_closing()

    def spoke_while_idle(self) -> bool:
        """Whether the socket has something to read though no request is under way: the
        server closed it, or sent bytes no request asked for. Either way it must carry no
        other request. The kernel is asked, since the event loop may not have run the read
        yet (a busy loop takes milliseconds to get round to it): a request written to a
        socket the server has closed fails without being answered, and stray bytes would be
        read as its answer."""
        poller = self._poller
        return poller is not None and bool(poller.poll(0))

    @property
    def reusable(self) -> bool:
        """Whether the exchange finished cleanly and the server agreed to keep the socket."""
        parser = self._parser
        return (
            parser is not None
            and parser.complete
            and parser.keep_alive
            and not self._body
            and not self._unfinished_request
            and not self._writing_paused
            and self.usable
        )

    @property
    def read_ready(self) -> bool:
        """Whether :meth:`receive_body` would return (or raise) without waiting."""
        parser = self._parser
        return bool(self._body) or parser is None or parser.complete or self._error is not None

    @property
    def body_complete(self) -> bool:
        """Whether the response has been received whole and every payload handed out."""
        parser = self._parser
        return parser is not None and parser.complete and not self._body

    def start(self, *, head_request: bool) -> None:
        self.received_any = False
        self.request_sent = False
        self._parser = new_response_parser(self._body, head_request=head_request)

    def make_idle(self) -> None:
        self._parser = None
        self.reused = True
        self._idle_since = self._loop.time()

    def idle_seconds(self) -> float:
        return self._loop.time() - self._idle_since

    def send(self, data: bytes) -> None:
        self._check_open()
        self._transport.write(data)

    def send_parts(self, parts: Iterable[bytes]) -> None:
        self._check_open()
        self._transport.writelines(parts)

    def abort(self) -> None:
        """Close the socket now, failing a consumer still waiting for the response."""
        parser = self._parser
        if parser is not None and not parser.complete and self._error is None:
            error = PeerClosedError("The connection was closed before the response was complete.")
            error.__cause__ = ConnectionAbortedError("the client closed the connection")
            self._error = error
        self._transport.abort()

    async def drain(self, write_timeout: float | None) -> bool:
        """Wait until the socket accepts more data; return True if the server has answered
        already, in which case the rest of the request body should not be sent."""
        parser = self._parser
        assert parser is not None
        while True:
            # A server may answer, and even close, before it has read the whole request.
            if parser.head is not None and (self._writing_paused or self._closed):
                self._unfinished_request = True
                return True
            self._check_open()
            if not self._writing_paused:
                return False
            await self._wait(write_timeout)

    async def receive_head(self, read_timeout: float | None) -> ResponseHead:
        parser = self._parser
        assert parser is not None
        while parser.head is None:
            if self._error is not None:
                raise self._error
            await self._wait(read_timeout)
        return parser.head

    async def receive_body(self, read_timeout: float | None) -> bytes:
        """Return the next body payload, or ``b""`` once the body is complete."""
        body = self._body
        while not body:
            parser = self._parser
            if parser is None or parser.complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(read_timeout)
        # Hand over everything already received in one piece: SSE events that arrived in one
        # read then cost one relay step, not one each, and nothing waits that has arrived.
        if len(body) == 1:
            chunk = body.popleft()
        else:
            chunk = b"".join(body)
            body.clear()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= _LOW_WATER:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunk

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise PeerClosedError("Server disconnected without sending a response.")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, seconds: float | None) -> None:
        loop = self._loop
        waiter = loop.create_future()
        self._waiter = waiter
        if seconds is None:
            self._deadline = math.inf
        else:
            self._arm(loop.time() + seconds)
        try:
            await waiter
        finally:
            self._waiter = None

    def _arm(self, deadline: float) -> None:
        # Creating and cancelling a timer per wait costs more on uvloop than the rest of the
        # wait, and a stream waits once per read. So one timer per connection stays armed, is
        # moved only when a deadline comes sooner than it, and when it fires early it re-arms.
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self._deadline == math.inf:
            return
        if self._loop.time() + _TIMER_SLACK >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._arm(self._deadline)
