"""The uvicorn HTTP protocol ``messages-mw serve`` runs: uvicorn's httptools protocol with the
response head sent together with the first body bytes, and request bodies handed to the app
without uvicorn's two copies (see ``on_body``).

uvicorn writes a response head the moment the app sends ``http.response.start`` and the body
with the next message, and uvloop sends each write at once: two ``write(2)`` calls for every
answer, where one would do. On loopback and in VMs a syscall costs as much as a few thousand
Python instructions, so the head is held until the app's next write joins it, or until the
current loop pass ends, whichever comes first. A client therefore receives the same bytes in
the same order, no later than the next pass of the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ._http11 import head_and_body
from .errors import encode_error_body, new_request_id

__all__ = ["HeadJoiningHttpToolsProtocol"]

_HEAD_PREFIX = b"HTTP/1.1 "


class _HeadJoiningTransport:
    """Forwards everything to ``transport``, holding a response head until the next write."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines(head_and_body(held, data))
        elif data.startswith(_HEAD_PREFIX):
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Everything else (extra info, flow control, abort, set_protocol) is the transport's.
        return getattr(self._transport, name)


# What a client gets to send its request: a head of at most _MAX_HEAD_BYTES, whole within
# _HEAD_SECONDS of its first byte (or of connecting), and a body with no pause longer than
# _BODY_IDLE_SECONDS. uvicorn's httptools protocol bounds none of them, so one client could
# grow the server's memory with an endless head, or hold sockets open by trickling bytes.
_MAX_HEAD_BYTES = 64 * 1024
_HEAD_SECONDS = 30.0
_BODY_IDLE_SECONDS = 60.0


class HeadJoiningHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol, sending each response head with the body's first
    bytes, and bounding how large and how slow a request's head, and how slow its body, may
    be: a head over 64 KB gets a 431, and a head not whole 30 s after it began or a body
    silent for 60 s (while the app is reading it) closes the connection.

    What is being read follows from uvicorn's own request cycle (none yet, or its body done:
    a head; else a body), and one timer per connection checks the clocks a few times per
    limit: a request pays one method and a few attribute stores, not timers of its own.

    uvicorn builds the protocol itself, so the time limits are class attributes: a subclass
    may set ``head_seconds`` (how long a head may take, from its first byte) and
    ``body_idle_seconds`` (how long a body may pause) to other values.
    """

    head_seconds: ClassVar[float] = _HEAD_SECONDS
    body_idle_seconds: ClassVar[float] = _BODY_IDLE_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        joining: Any = _HeadJoiningTransport(transport, self.loop)
        super().connection_made(joining)
        self._head_bytes = 0
        self._head_tail = b""
        self._head_started: float | None = self.loop.time()
        self._body_reads = self._body_reads_seen = 0
        self._body_quiet_since = self.loop.time()
        self._period = min(self.head_seconds, self.body_idle_seconds) / 4
        self._watch: asyncio.TimerHandle | None = self.loop.call_later(self._period, self._check)
        # The request still being answered when a pipelined one arrived (see connection_lost).
        self._answering: RequestResponseCycle | None = None

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body:  # a body is being read
            self._body_reads += 1
            # Named, not super(): this runs for every read.
            HttpToolsProtocol.data_received(self, data)
            return
        if self._head_started is None:  # the first bytes of a head after an earlier request
            self._head_started = self.loop.time()
        # Counted before parsing, up to the head's blank line (which may straddle reads): a
        # whole head in one read would reach the app otherwise.
        end = data.find(b"\r\n\r\n")
        tail = self._head_tail
        if end < 0 and tail:
            joint = (tail + data[:3]).find(b"\r\n\r\n")
            if joint >= 0:
                end = joint - len(tail)
        if end < 0:
            self._head_tail = data[-3:]
            self._head_bytes += len(data)
        else:
            self._head_tail = b""
            self._head_bytes += end + 4
        if self._head_bytes > _MAX_HEAD_BYTES:
            self._refuse_head()
            return
        HttpToolsProtocol.data_received(self, data)
        if self.cycle is not cycle:  # the head was whole: a request began
            self._head_bytes = 0
            self._head_started = None
            # The read that ended the head may have brought some of its body (SDKs send both
            # together), uncounted as a body read: the next check takes the body as heard
            # from then, as after any read, rather than silent since an older check.
            self._body_reads_seen = -1

    def on_body(self, body: bytes) -> None:
        """uvicorn's ``on_body``, without copying a body that comes in one read.

        uvicorn appends every chunk to a ``bytearray`` and copies that again into ``bytes`` for
        the app: two fresh copies of each request body. Under a bare app at 32 connections
        with the 57 KB agent turn, a request cost 49 µs of CPU with them and 43 µs without
        (the two lines held 56% of the profile's samples, most of it page faults on the fresh
        buffers, which :func:`messages_mw.tuning.tune_malloc_for_serving` removes). A first
        chunk is kept as the ``bytes`` the parser made, which uvicorn's ``receive`` hands on
        as it is (``bytes()`` of a ``bytes`` is itself); only a second chunk before the app's
        next read starts a ``bytearray``, as before. uvloop reads at most 256 KB at a time, so
        a larger body comes in several reads, each handed on uncopied if the app reads
        between them.
        """
        cycle = self.cycle
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return
        held: bytes | bytearray = cycle.body
        if not held:
            held = body
        else:
            if isinstance(held, bytes):  # the second chunk: from here on, append in place
                held = bytearray(held)
            held += body
        # uvicorn declares a bytearray; its receive hands either kind on as bytes.
        cycle.body = held  # type: ignore[assignment]
        if len(held) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_headers_complete(self) -> None:
        answering = self.cycle
        # Named, not super(): this runs for every request.
        HttpToolsProtocol.on_headers_complete(self)
        if answering is not None and not answering.response_complete:
            # Pipelined: uvicorn now holds only the queued request's cycle.
            self._answering = answering

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        answering, self._answering = self._answering, None
        if answering is not None and not answering.response_complete:
            # uvicorn tells only the newest cycle, a queued pipelined request's; the one still
            # running would write to the closed transport (a logged traceback) and keep its
            # upstream request going for nobody.
            answering.disconnected = True
            answering.message_event.set()
        super().connection_lost(exc)

    def _check(self) -> None:
        if self.transport.is_closing():
            self._watch = None
            return
        if self._too_slow(self.loop.time()):
            self._watch = None
            self.transport.close()
            return
        self._watch = self.loop.call_later(self._period, self._check)

    def _too_slow(self, now: float) -> bool:
        cycle = self.cycle
        in_body = cycle is not None and cycle.more_body
        started = self._head_started
        if not in_body and started is not None and now - started > self.head_seconds:
            # Unless a response is still going out (the next head arrived early).
            return cycle is None or cycle.response_complete
        if not in_body or self.flow.read_paused:
            # Paused reading is the app's doing (it has not taken the body so far).
            self._body_reads_seen, self._body_quiet_since = self._body_reads, now
            return False
        if self._body_reads != self._body_reads_seen:
            self._body_reads_seen, self._body_quiet_since = self._body_reads, now
            return False
        return now - self._body_quiet_since > self.body_idle_seconds

    def _refuse_head(self) -> None:
        cycle = self.cycle
        if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
            # A response is still going out (the head is a pipelined request's): a 431 now
            # would land inside it. Closing ends both.
            self.transport.close()
            return
        message = f"Request headers exceed {_MAX_HEAD_BYTES} bytes."
        self._answer_and_close(b"431 Request Header Fields Too Large", message)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse (a bad request line or header,
        conflicting lengths, a refused upgrade), in Anthropic's error envelope rather than
        uvicorn's plain text."""
        self._answer_and_close(b"400 Bad Request", msg)

    def _answer_and_close(self, status: bytes, message: str) -> None:
        """An ``invalid_request_error`` the server gives before any request reaches the app,
        with the request-id header every answer of the gateway's carries."""
        request_id = new_request_id()
        body = encode_error_body("invalid_request_error", message, request_id)
        head = [b"HTTP/1.1 " + status + b"\r\n"]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head.append(
            b"content-type: application/json\r\nconnection: close\r\n"
            b"request-id: %s\r\ncontent-length: %d\r\n\r\n" % (request_id.encode(), len(body))
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()
