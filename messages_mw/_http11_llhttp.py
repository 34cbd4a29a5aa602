"""An HTTP/1.1 response parser on llhttp (through httptools), for when httptools is installed.

:class:`LlhttpResponseParser` behaves like
:class:`~messages_mw._http11_parse.ResponseParser` and reads a streamed answer about three times
faster: llhttp splits the head and strips the chunked framing
in C, and each body slice goes straight from C to ``deque.append``. The framing rules stay ours:
the wrapper reads the framing headers with ResponseParser's own functions and keeps llhttp only
where llhttp frames the body the same way (one plain Content-Length, a lone ``chunked`` coding,
or neither, on a final status of 200 or more, or 101). Any other head, any 1xx or sub-100 status,
and anything llhttp refuses before the first payload byte (a bare LF in the first chunk-size
line, say) is replayed into a ResponseParser, which then decides. Once payload has reached the
consumer llhttp stays strict: malformed chunk framing after it raises ProtocolError.
"""

from __future__ import annotations

import itertools
from collections import deque

import httptools

from ._http11_parse import (
    MAX_HEAD_SIZE,
    MAX_LINE_SIZE,
    UNTIL_CLOSE,
    ProtocolError,
    ResponseHead,
    ResponseParser,
    frame,
    framing_fields,
    plan_body,
)

__all__ = ["LlhttpResponseParser"]

_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)
# httptools 0.6.2 and later; older ones stay strict about spaces after a chunk size.
_HAS_LENIENCIES = hasattr(httptools.HttpResponseParser, "set_dangerous_leniencies")
_STATUS_LINE_STARTS = (b"HTTP/1.1 ", b"HTTP/1.0 ")


class _StopParsing(Exception):
    """Raised from a callback to make llhttp stop where it is."""


class LlhttpResponseParser:
    """Parse one response incrementally with llhttp, appending body payloads to ``body``.

    The interface is ResponseParser's (without ``head_request``): ``feed`` returns how many
    payload bytes it appended and raises :class:`ProtocolError` on malformed input, after which
    the parser is unusable. The callbacks ``on_*`` are for llhttp only.
    """

    __slots__ = (
        "_body",
        "_headers",
        "_llhttp",
        "_pure",
        "_quiet",
        "_saved",
        "_until_close",
        "complete",
        "head",
        "keep_alive",
        "on_body",
    )

    def __init__(self, body: deque[bytes]) -> None:
        self._body = body
        # httptools looks its callbacks up once, here; a bound C method costs no Python frame.
        self.on_body = body.append
        self._headers: list[tuple[bytes, bytes]] = []
        # Every read until the first payload byte, to replay into a ResponseParser if need be.
        self._saved: list[bytes] | None = []
        # Bytes received since the head or the last payload, bounded like ResponseParser's buffers.
        self._quiet = 0
        self._until_close = False
        self._pure: ResponseParser | None = None
        self.head: ResponseHead | None = None
        self.keep_alive = False
        self.complete = False
        self._llhttp: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> int:
        """Consume one read from the socket; return the number of body bytes appended."""
        if self._pure is not None:
            return self._feed_pure(data)
        if self.complete:
            # Bytes past the end of the message leave the connection in an unknown state.
            self.keep_alive = False
            return 0
        body = self._body
        queued = len(body)
        head_known = self.head is not None
        saved = self._saved
        if saved is not None:
            saved.append(data)
        llhttp = self._llhttp
        assert llhttp is not None  # dropped only once complete or handed over
        try:
            llhttp.feed_data(data)
        except _PARSER_ERRORS as exc:
            return self._recover(exc, queued)
        if len(body) == queued:
            self._note_quiet_read(len(data), head_known)
            return 0
        if saved is not None:
            self._saved = None
            _allow_spaces_after_chunk_sizes(llhttp)
        self._quiet = 0
        return _appended_size(body, queued)

    def feed_eof(self) -> bool:
        """Note that the peer closed the connection; return whether the response is complete."""
        if self._pure is not None:
            complete = self._pure.feed_eof()
            self._copy_state(self._pure)
            return complete
        if self._until_close:
            self.complete = True
        return self.complete

    @property
    def uses_pure_parser(self) -> bool:
        """Whether this response was handed over to ResponseParser (for tests and diagnosis)."""
        return self._pure is not None

    def on_message_begin(self) -> None:
        if self.complete:
            # A second message in the same read: stop before its callbacks touch this one.
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops whitespace before a value but keeps it after; ResponseParser drops both.
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        assert self._llhttp is not None
        status = self._llhttp.get_status_code()
        if status < 200 and status != 101:
            # ResponseParser skips 1xx answers and gives codes under 100 no body, whatever
            # their headers say; llhttp reads a body after some and closes after others.
            raise _StopParsing
        version, reason = self._version_and_reason()
        headers = self._headers
        # Trailers arrive through on_header too; they must not land in the head.
        self._headers = []
        fields = framing_fields(headers)
        codings = fields[1]
        if codings and (len(codings) > 1 or codings[0].lower() != b"chunked"):
            # llhttp's reading of coding lists may differ from ours; servers send just chunked.
            raise _StopParsing
        state, self.keep_alive = plan_body(status, frame(version, fields), head_request=False)
        self._until_close = state == UNTIL_CLOSE
        self.head = ResponseHead(version, status, reason, headers)

    def on_message_complete(self) -> None:
        self.complete = True
        # llhttp holds our bound methods: dropping it now spares the cycle collector the cycle.
        self._llhttp = None

    def _version_and_reason(self) -> tuple[bytes, bytes]:
        # Interim answers go to ResponseParser, so a final head starts the first read. llhttp
        # has checked the status line as ResponseParser would, except that it also takes other
        # versions and skips empty lines before it.
        saved = self._saved
        assert saved is not None
        raw = saved[0]
        end = raw.find(b"\r\n")
        if end < 0:
            raw = b"".join(saved)
            end = raw.find(b"\r\n")
        if not raw.startswith(_STATUS_LINE_STARTS):
            raise _StopParsing
        return raw[:8], raw[13:end]

    def _note_quiet_read(self, size: int, head_known: bool) -> None:
        if self.complete:
            self._saved = None
        elif not head_known:
            if self.head is None:
                self._quiet += size
                if self._quiet > MAX_HEAD_SIZE:
                    raise ProtocolError("response head is too large")
            else:
                self._quiet = 0
        else:
            # llhttp buffers no framing, but a peer sending only framing must not stall us.
            self._quiet += size
            if self._quiet > MAX_LINE_SIZE:
                raise ProtocolError("chunk framing line is too long")

    def _recover(self, exc: Exception, queued: int) -> int:
        cause = exc.__context__
        if isinstance(exc, httptools.HttpParserCallbackError) and not isinstance(
            cause, _StopParsing | ProtocolError
        ):
            raise exc  # a bug in a callback, not a verdict on the input
        body = self._body
        if self.complete:
            # llhttp read on past the end of the message.
            self.keep_alive = False
            self._saved = None
            return _appended_size(body, queued)
        if self._saved is None:
            self._llhttp = None
            raise ProtocolError(f"malformed response: {exc}") from exc
        # Nothing has reached the consumer yet: take back this read's payload, if any, and let
        # ResponseParser decide on everything received so far.
        while len(body) > queued:
            body.pop()
        return self._hand_over()

    def _hand_over(self) -> int:
        saved = self._saved
        assert saved is not None
        self._saved = None
        self._llhttp = None
        self._pure = ResponseParser(self._body)
        return self._feed_pure(b"".join(saved))

    def _feed_pure(self, data: bytes) -> int:
        pure = self._pure
        assert pure is not None
        produced = pure.feed(data)
        self._copy_state(pure)
        return produced

    def _copy_state(self, pure: ResponseParser) -> None:
        self.head = pure.head
        self.keep_alive = pure.keep_alive
        self.complete = pure.complete


def _appended_size(body: deque[bytes], queued: int) -> int:
    # Nothing is taken from the deque during a feed, so the new payloads are its last entries.
    added = len(body) - queued
    if added == 1:
        return len(body[-1])
    if not queued:
        return sum(map(len, body))
    return sum(map(len, itertools.islice(reversed(body), added)))


def _allow_spaces_after_chunk_sizes(llhttp: httptools.HttpResponseParser) -> None:
    """Accept "5 \\r\\n", "5\\t\\r\\n" and "5 ;ext" once payload has gone out, as ResponseParser
    (which reads such lines before it) and h11 (what an SDK reads a stream with) do: refused
    then, they broke mid-way a stream any client reads."""
    if _HAS_LENIENCIES:
        llhttp.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
