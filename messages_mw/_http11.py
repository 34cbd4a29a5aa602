"""HTTP/1.1 on one socket, for :mod:`messages_mw.transport`.

:class:`ResponseParser` is a sans-I/O response parser in pure Python: it is fed each socket read
and appends body payloads to a deque, so a chunk can reach the consumer the moment its bytes
arrive. When httptools is installed, :func:`new_response_parser` hands out its llhttp-backed twin
(:mod:`messages_mw._http11_llhttp`) instead: it reads a streamed answer about three times faster
and hands any response it cannot vouch for to ResponseParser. Both take their framing rules from
the functions here (:func:`_framing_fields`, :func:`_frame`, :func:`_plan_body`), so they frame a
response alike. :class:`Connection` is the :class:`asyncio.Protocol` that feeds a parser and lets
one task at a time await the response. Content-encoding is never decoded; callers get the bytes
on the wire minus the transfer framing.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
from collections import deque
from collections.abc import Iterable
from types import ModuleType
from typing import NamedTuple, Protocol, cast

__all__ = [
    "Connection",
    "Origin",
    "PeerClosedError",
    "ProtocolError",
    "ResponseHead",
    "ResponseParser",
    "ResponseParserLike",
    "head_and_body",
    "new_response_parser",
]

# Larger heads or chunk-size lines are refused instead of buffered without bound.
_MAX_HEAD_SIZE = 64 * 1024
_MAX_LINE_SIZE = 8 * 1024
# Bodies this small are copied behind the head so that both leave in one send(); larger ones
# go as two buffers, which uvloop writes with one writev() and no copy.
_COALESCE_LIMIT = 16 * 1024
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_DECIMAL_DIGITS = b"0123456789"
# A plain chunk-size line, the form servers send; anything else takes the line-by-line path.
_PLAIN_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})\r\n")
# A timer firing this close to its deadline counts as on time (uvloop's timers tick in ms).
_TIMER_SLACK = 0.001
# A slow consumer makes reading pause above the high mark and resume once it drains below the low.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024

Origin = tuple[bytes, bytes, int]

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


def head_and_body(head: bytes, body: bytes) -> tuple[bytes, ...]:
    """The buffers to hand ``writelines()`` so a message's head and body leave in one syscall."""
    if len(body) <= _COALESCE_LIMIT:
        return (head + body,)
    return (head, body)


class PeerClosedError(Exception):
    """The connection went away before the response was complete."""


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid HTTP/1.x response."""


class ResponseHead(NamedTuple):
    """The status line and headers of a response, with header names and values as raw bytes."""

    http_version: bytes
    status_code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]


class ResponseParserLike(Protocol):
    """What :class:`Connection` needs of a response parser; both implementations provide it."""

    head: ResponseHead | None
    keep_alive: bool

    @property
    def complete(self) -> bool: ...

    def feed(self, data: bytes) -> int: ...

    def feed_eof(self) -> bool: ...


class ResponseParser:
    """Parse one response incrementally, appending body payloads to ``body`` as they arrive.

    ``feed`` takes each read from the socket and returns how many payload bytes it appended, so
    the owner can apply back-pressure. Interim 1xx responses (other than 101) are skipped, as a
    client that never sent ``Expect`` has no use for them. ``feed`` raises :class:`ProtocolError`
    on malformed input; the parser is then unusable and the connection must be closed.
    """

    __slots__ = (
        "_body",
        "_head_request",
        "_pending",
        "_remaining",
        "_state",
        "head",
        "keep_alive",
    )

    def __init__(self, body: deque[bytes], *, head_request: bool = False) -> None:
        self._body = body
        self._head_request = head_request
        self._pending = b""
        self._remaining = 0
        self._state = _HEAD
        self.head: ResponseHead | None = None
        self.keep_alive = False

    @property
    def complete(self) -> bool:
        """Whether the whole response, body included, has been received."""
        return self._state == _DONE

    def feed(self, data: bytes) -> int:
        """Consume one read from the socket; return the number of body bytes appended."""
        produced = 0
        while data:
            state = self._state
            if state in (_LENGTH, _CHUNK_DATA):
                size = len(data)
                if size < self._remaining:
                    self._body.append(data)
                    self._remaining -= size
                    return produced + size
                payload, data = data[: self._remaining], data[self._remaining :]
                self._body.append(payload)
                produced += len(payload)
                self._state = _DONE if state == _LENGTH else _CHUNK_END
            elif state == _UNTIL_CLOSE:
                self._body.append(data)
                return produced + len(data)
            elif state == _HEAD:
                data = self._feed_head(data)
            elif state == _DONE:
                # Bytes past the end of the message leave the connection in an unknown state.
                self.keep_alive = False
                return produced
            else:
                if state == _CHUNK_SIZE and not self._pending:
                    count, data = self._feed_whole_chunks(data)
                    produced += count
                    if not data:
                        break
                data = self._feed_chunk_framing(data)
        return produced

    def feed_eof(self) -> bool:
        """Note that the peer closed the connection; return whether the response is complete."""
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
        return self._state == _DONE

    def _feed_head(self, data: bytes) -> bytes:
        buffered = self._pending + data if self._pending else data
        start = len(self._pending) - 3 if len(self._pending) > 3 else 0
        end = buffered.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffered) > _MAX_HEAD_SIZE:
                raise ProtocolError("response head is too large")
            self._pending = buffered
            return b""
        self._pending = b""
        self._start_body(*_parse_head(buffered[:end]))
        return buffered[end + 4 :]

    def _start_body(self, head: ResponseHead, framing: _Framing) -> None:
        status = head.status_code
        if _is_interim(status):
            return
        self.head = head
        self._state, self.keep_alive = _plan_body(status, framing, head_request=self._head_request)
        if self._state == _LENGTH:
            self._remaining = cast(int, framing[0])

    def _feed_whole_chunks(self, data: bytes) -> tuple[int, bytes]:
        """Decode the complete, plainly framed chunks at the start of ``data`` in one loop.

        An SSE stream arrives as dozens of small chunks per read, and the line-by-line state
        machine costs three times as much per chunk. This stops at the first chunk it cannot
        finish here (partial, last, or unusually framed) and returns the bytes from that
        chunk's size line on, for the line-by-line path to decide.
        """
        body = self._body
        match = _PLAIN_CHUNK_SIZE.match
        produced = position = 0
        while (found := match(data, position)) is not None:
            start = found.end()
            size = int(found[1], 16)
            stop = start + size
            if not size or data[stop : stop + 2] != b"\r\n":
                break
            body.append(data[start:stop])
            produced += size
            position = stop + 2
        return produced, data[position:] if position else data

    def _feed_chunk_framing(self, data: bytes) -> bytes:
        line, data = self._read_line(data)
        if line is None:
            return data
        state = self._state
        if state == _CHUNK_SIZE:
            size = _parse_chunk_size(line)
            self._remaining = size
            self._state = _CHUNK_DATA if size else _TRAILERS
        elif state == _CHUNK_END:
            if line:
                raise ProtocolError("chunk data is longer than its declared size")
            self._state = _CHUNK_SIZE
        elif not line:
            self._state = _DONE
        return data

    def _read_line(self, data: bytes) -> tuple[bytes | None, bytes]:
        buffered = self._pending + data if self._pending else data
        end = buffered.find(b"\n")
        if end < 0:
            if len(buffered) > _MAX_LINE_SIZE:
                raise ProtocolError("chunk framing line is too long")
            self._pending = buffered
            return None, b""
        self._pending = b""
        line = buffered[:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        return line, buffered[end + 1 :]


# How a body is framed: its Content-Length (None without one), whether it is chunked, and
# whether the server lets the connection persist. Plain tuples: a NamedTuple costs 0.5 µs here.
_Framing = tuple[int | None, bool, bool]
# The values of the three headers that affect framing: Content-Length, Transfer-Encoding and
# Connection, each in the order received.
_FramingFields = tuple[list[bytes], list[bytes], list[bytes]]


_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_INVALID_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _parse_head(raw: bytes) -> tuple[ResponseHead, _Framing]:
    lines = raw.split(b"\r\n")
    version, status_code, reason = _parse_status_line(lines[0])
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # A name is a token; a value holds no control but tab (RFC 9110 5.1, 5.5). A bare CR
        # or LF, a NUL or a space in a name would otherwise reach the client's server, which
        # refuses them mid-response (or, a lax one, splits them into headers of their own).
        if not colon or not name or name.translate(None, _TOKEN_CHARS):
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        if _INVALID_VALUE.search(value):
            raise ProtocolError(f"control character in header {name[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    head = ResponseHead(version, status_code, reason, headers)
    return head, _frame(version, _framing_fields(headers))


def _framing_fields(headers: list[tuple[bytes, bytes]]) -> _FramingFields:
    lengths: list[bytes] = []
    codings: list[bytes] = []
    options: list[bytes] = []
    for name, value in headers:
        # Comparing lengths first skips most lower() calls.
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            lengths.append(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            codings.append(value)
        elif size == 10 and name.lower() == b"connection":
            options.append(value)
    return lengths, codings, options


def _frame(version: bytes, fields: _FramingFields) -> _Framing:
    """Read how the body is framed and whether the connection persists; raise ProtocolError
    on a malformed or conflicting Content-Length."""
    lengths, codings, options = fields
    keep_alive = _is_keep_alive(version, options)
    if codings:
        # A final coding other than chunked means the body runs until the connection closes.
        # Transfer-Encoding wins over a Content-Length sent too, but such a response may be
        # an attempt at smuggling: its connection is not used again (RFC 9112 6.3).
        chunked = _last_token(codings) == b"chunked"
        return None, chunked, keep_alive and chunked and not lengths
    length = _parse_content_length(lengths) if lengths else None
    return length, False, keep_alive


def _is_interim(status: int) -> bool:
    # A client that never sent Expect has no use for 1xx answers; 101 ends HTTP on the socket.
    return 100 <= status < 200 and status != 101


def _plan_body(status: int, framing: _Framing, *, head_request: bool) -> tuple[int, bool]:
    """Return the state a final response's body starts in, and whether the connection can
    carry another exchange after it."""
    content_length, chunked, keep_alive = framing
    keep_alive = keep_alive and status != 101
    if head_request or status < 200 or status == 204 or status == 304:
        return _DONE, keep_alive
    if chunked:
        return _CHUNK_SIZE, keep_alive
    if content_length is not None:
        return (_LENGTH if content_length else _DONE), keep_alive
    return _UNTIL_CLOSE, False


def _parse_status_line(line: bytes) -> tuple[bytes, int, bytes]:
    version, _, rest = line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"malformed status line {line[:80]!r}")
    return version, int(code), reason


def _is_keep_alive(version: bytes, options: list[bytes]) -> bool:
    if not options:
        return version == b"HTTP/1.1"
    tokens = {token.strip().lower() for value in options for token in value.split(b",")}
    if b"close" in tokens:
        return False
    return version == b"HTTP/1.1" or b"keep-alive" in tokens


def _last_token(values: list[bytes]) -> bytes:
    return values[-1].rsplit(b",", 1)[-1].strip(b" \t").lower()


def _parse_content_length(values: list[bytes]) -> int:
    if len(values) == 1 and values[0].isdigit() and len(values[0]) <= 18:
        return int(values[0])
    # Repeated or comma-joined values are allowed only when they all agree (RFC 9110 8.6).
    found = {item.strip(b" \t") for value in values for item in value.split(b",")}
    if len(found) != 1:
        raise ProtocolError("conflicting Content-Length values")
    (text,) = found
    if not text or len(text) > 18 or text.translate(None, _DECIMAL_DIGITS):
        raise ProtocolError(f"malformed Content-Length {text[:40]!r}")
    return int(text)


def _parse_chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip(b" \t")
    if not text or len(text) > 16 or text.translate(None, _HEX_DIGITS):
        raise ProtocolError(f"malformed chunk size line {line[:80]!r}")
    return int(text, 16)


def new_response_parser(body: deque[bytes], *, head_request: bool = False) -> ResponseParserLike:
    """Return a parser for one response, appending its payloads to ``body``: the llhttp-backed
    one when httptools is installed, else :class:`ResponseParser`. An answer to HEAD always gets
    ResponseParser, as httptools cannot tell llhttp that such a response has no body."""
    if head_request or _LLHTTP_WRAPPER is None:
        return ResponseParser(body, head_request=head_request)
    parser: ResponseParserLike = _LLHTTP_WRAPPER.LlhttpResponseParser(body)
    return parser


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
        if parser is not None and not parser.feed_eof() and self._error is None:
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


def _import_llhttp_wrapper() -> ModuleType | None:
    try:
        from . import _http11_llhttp
    except ModuleNotFoundError as exc:
        if exc.name != "httptools":
            raise
        return None
    return _http11_llhttp


# Chosen once, last, as that module builds on everything above; new_response_parser looks its
# class up per call, so this also works when that module is the one imported first.
_LLHTTP_WRAPPER = _import_llhttp_wrapper()
