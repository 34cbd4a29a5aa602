"""A sans-I/O HTTP/1.x response parser in pure Python, for :class:`~messages_mw._http11.Connection`.

:class:`ResponseParser` is fed each socket read and appends body payloads to a deque, so a chunk
can reach the consumer the moment its bytes arrive. When httptools is installed,
:func:`new_response_parser` hands out its llhttp-backed twin (:mod:`messages_mw._http11_llhttp`)
instead: it reads a streamed answer about three times faster and hands any response it cannot
vouch for to ResponseParser. Both take their framing rules from the functions here
(:func:`framing_fields`, :func:`frame`, :func:`plan_body`), so they frame a response alike.
Content-encoding is never decoded; callers get the bytes on the wire minus the transfer framing.
"""

from __future__ import annotations

import re
from collections import deque
from types import ModuleType
from typing import NamedTuple, Protocol, cast

__all__ = [
    "MAX_HEAD_SIZE",
    "MAX_LINE_SIZE",
    "TOKEN_CHARS",
    "UNTIL_CLOSE",
    "ProtocolError",
    "ResponseHead",
    "ResponseParser",
    "ResponseParserLike",
    "frame",
    "framing_fields",
    "new_response_parser",
    "plan_body",
]

# Larger heads or chunk-size lines are refused instead of buffered without bound.
MAX_HEAD_SIZE = 64 * 1024
MAX_LINE_SIZE = 8 * 1024
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_DECIMAL_DIGITS = b"0123456789"
# A plain chunk-size line, the form servers send; anything else takes the line-by-line path.
_PLAIN_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,16})\r\n")

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, UNTIL_CLOSE, _DONE = range(8)


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
            elif state == UNTIL_CLOSE:
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
        if self._state == UNTIL_CLOSE:
            self._state = _DONE
        return self._state == _DONE

    def _feed_head(self, data: bytes) -> bytes:
        buffered = self._pending + data if self._pending else data
        start = len(self._pending) - 3 if len(self._pending) > 3 else 0
        end = buffered.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffered) > MAX_HEAD_SIZE:
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
        self._state, self.keep_alive = plan_body(status, framing, head_request=self._head_request)
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
            if len(buffered) > MAX_LINE_SIZE:
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


# RFC 9110's token characters, which methods and header names are made of.
TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
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
        if not colon or not name or name.translate(None, TOKEN_CHARS):
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        if _INVALID_VALUE.search(value):
            raise ProtocolError(f"control character in header {name[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    head = ResponseHead(version, status_code, reason, headers)
    return head, frame(version, framing_fields(headers))


def framing_fields(headers: list[tuple[bytes, bytes]]) -> _FramingFields:
    """The values of the headers that frame a body: Content-Length, Transfer-Encoding and
    Connection, in the order received."""
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


def frame(version: bytes, fields: _FramingFields) -> _Framing:
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


def plan_body(status: int, framing: _Framing, *, head_request: bool) -> tuple[int, bool]:
    """Return the state a final response's body starts in, and whether the connection can
    carry another exchange after it."""
    content_length, chunked, keep_alive = framing
    # After a 101 the socket speaks another protocol; a code under 100 gets no body here
    # whatever its headers say, so any it had would be read as the next answer.
    keep_alive = keep_alive and status >= 200
    if head_request or status < 200 or status == 204 or status == 304:
        return _DONE, keep_alive
    if chunked:
        return _CHUNK_SIZE, keep_alive
    if content_length is not None:
        return (_LENGTH if content_length else _DONE), keep_alive
    return UNTIL_CLOSE, False


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
