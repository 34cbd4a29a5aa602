"""The HTTP/1.1 protocol ``messages-mw serve`` runs under ``uvicorn.Server``.

uvicorn keeps what a server needs around a protocol: sockets, workers, signals, lifespan,
the ``date`` header and graceful shutdown. Its httptools protocol, though, pays per request
for an ``asyncio.Event``, a keep-alive timer, two regular expressions per response header,
a second write for each head and two copies of each request body. Fed the 57 KB agent turn
in process, for an app that only reads the body and answers, it took 13.5-14.3 µs of CPU
per request, and this protocol 11.4.

:class:`GatewayHttpProtocol` speaks the same HTTP/1.1, byte for byte on the wire (the tests
compare it with uvicorn's), and does the rest its own way:

- a response head is held until the body's first bytes join it, or the loop pass ends;
- a body that comes in one read reaches the app as the parser's own ``bytes``;
- one timer per connection, ticking a few times per limit, closes connections whose client
  is too slow with a head (30 s) or a body (60 s, counted while the app is reading it), and
  idle keep-alive connections (uvicorn's ``timeout_keep_alive``, give or take a quarter),
  and drops one whose client has read none of its answer for 60 s, even once the answer
  is complete or the connection closing (a shutdown would wait for it); one reading slowly,
  however long its answer takes, is served to the end;
- a head over 64 KB gets a 431, and a request that cannot be parsed a 400, both in
  Anthropic's error envelope, as is a 500 for an app that fails before it answers; one
  pipelined behind answers still going out gets its refusal after them (uvicorn's closes
  the connection, cutting them short), and a refused connection closes once its client has
  read the answer, or after 2 s (closed at once, a client still sending gets a reset that
  can take the answer with it; over TLS, which cannot half-close, it still is);
- requests pipelined behind one still being answered wait their turn with reading paused,
  all of them learn of a client that leaves, and a graceful shutdown answers every one; past
  128 of them waiting (one read can hold thousands) the rest are refused after their answers;
- an upgrade (WebSocket, h2c) is refused: the request is answered as plain HTTP/1.1 and the
  connection closed after it. The gateway has no WebSocket route.

Where the bytes differ from uvicorn's, on purpose: no ``100 Continue`` once the body has
come anyway, nor to an HTTP/1.0 client (RFC 9110 10.1.1: it knows no 1xx), an envelope
instead of plain text for the server's own errors, a request whose answer names an invalid
status or header gets a 500 rather than a closed connection, and an HTTP/1.0 client gets an
answer of unknown length (a stream) unchunked, ended by the close (RFC 9112 forbids chunked
coding to it).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import select
import struct
import sys
import urllib.parse
from collections import deque
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.utils import (
    get_client_addr,
    get_local_addr,
    get_path_with_query_string,
    get_remote_addr,
    is_ssl,
)
from uvicorn.server import ServerState

from ._server_exchange import Exchange, head_lines, send_api_error
from .errors import encode_error_body, new_request_id

if sys.platform.startswith("linux"):
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ
else:  # pragma: no cover - elsewhere the process's own buffer is all that is watched
    _SIOCOUTQ = None

__all__ = ["GatewayHttpProtocol"]

# What a client gets to send its request: a head of at most _MAX_HEAD_BYTES, whole within
# _HEAD_SECONDS of its first byte (or of connecting), and a body with no pause longer than
# _BODY_IDLE_SECONDS. Unbounded, one client could grow the server's memory with an endless
# head, or hold sockets open by trickling bytes.
_MAX_HEAD_BYTES = 64 * 1024
_HEAD_SECONDS = 30.0
_BODY_IDLE_SECONDS = 60.0
# Reading pauses while this much of a body waits for the app to take it. uvloop reads up to
# 256 KB at a time, so an agent turn of a few hundred KB is taken whole without a pause.
_BODY_HIGH_WATER = 1024 * 1024
# What a held part costs beyond its bytes, counted against the high-water mark: a small
# bytes object's header and allocation rounding, and its slot in the list of parts.
_BODY_PART_OVERHEAD = 64
# The connection's clock checks never come closer together than this, whatever the limits.
_MIN_CHECK_PERIOD = 0.05
# What a chunked body may bring besides its payload, per chunk: its size line and CRLFs.
_FRAMING_PER_CHUNK = 64
# How long a refused client may take to read the refusal and close (see _close_when_read).
_LINGER_SECONDS = 2.0


class GatewayHttpProtocol(asyncio.Protocol):
    """HTTP/1.1 on one connection, for one ASGI app, under ``uvicorn.Server`` (see the
    module's docstring for what it does differently from uvicorn's own).

    uvicorn builds the protocol itself, so the time limits are class attributes: a subclass
    may set ``head_seconds`` (how long a head may take, from its first byte) and
    ``body_idle_seconds`` (how long a body may pause) to other values.
    """

    head_seconds: ClassVar[float] = _HEAD_SECONDS
    body_idle_seconds: ClassVar[float] = _BODY_IDLE_SECONDS

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = logging.getLogger("uvicorn.error")
        self._access_logger = logging.getLogger("uvicorn.access")
        self.access_log = config.access_log and self._access_logger.hasHandlers()
        self._fresh_context = config.reset_contextvars
        self._root_path = config.root_path
        self._raw_root_path = config.root_path.encode("ascii")
        self._keep_alive_seconds = float(config.timeout_keep_alive)
        self._limit_concurrency = config.limit_concurrency
        self.server_state = server_state
        self._app_state = app_state
        self.parser = httptools.HttpRequestParser(self)
        # Answer a request even when the client sent more after a "connection: close" one.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._asgi = {"version": config.asgi_version, "spec_version": "2.3"}
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # The request being answered, the requests parsed behind it, and the newest request
        # (the one the parser's body callbacks feed).
        self._answering: Exchange | None = None
        self._queued: deque[Exchange] = deque()
        self._parsing: Exchange | None = None
        self._upgrade_refused = False
        self._upgrade_body_left = 0
        # A refusal (status line, message) waiting for the answers before it to go out; from
        # the bytes that earned it on, what the client sends is read and dropped.
        self._refusal: tuple[bytes, str] | None = None
        self._discarding = False
        self._linger: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self.writing_paused = False
        # The answer bytes waiting in the write buffer when last seen, and since when that
        # many: bytes that do not move mean a client that stopped reading.
        self._output_left = -1
        self._output_since = 0.0
        self._drainers: list[asyncio.Future[None]] = []
        # The request head being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_continue = False
        # Where the parser is: in a head (from its first byte to its blank line), and, in a
        # body, how much of it was payload and how many chunks it had (see
        # _count_body_framing).
        self._in_head = False
        self._payload_bytes = 0
        self._framing_bytes = 0
        self._chunks = 0
        self._default_headers: object = None
        self._default_head_lines = b""
        self._told_defaults_left_out = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.transport = transport
        self._server = get_local_addr(transport)
        self._client = get_remote_addr(transport)
        self._scheme = "https" if is_ssl(transport) else "http"
        now = self.loop.time()
        self._head_bytes = 0
        self._head_tail = b""
        self._head_started: float | None = now
        self._idle_since: float | None = None
        self._body_reads = self._body_reads_seen = 0
        self._body_quiet_since = now
        limits = (self.head_seconds, self.body_idle_seconds, self._keep_alive_seconds)
        self._period = max(_MIN_CHECK_PERIOD, min(limits) / 4)
        self._watch: asyncio.TimerHandle | None = self.loop.call_later(self._period, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        # Every request still open learns of it: the one answering (its stream would write on
        # into a closed socket and keep its upstream request going for nobody) and any behind.
        for exchange in (self._answering, self._parsing, *self._queued):
            if exchange is not None and not exchange.response_complete:
                exchange.disconnected = True
                exchange.wake()
        self._queued.clear()
        self.resume_writing()
        if exc is None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return  # what follows bytes that could not be parsed cannot be either
        if self._upgrade_refused:
            # What follows a refused upgrade is not HTTP/1.1, but for the rest of its body.
            if self._upgrade_body_left:
                self._body_reads += 1
                self._take_upgrade_body(data)
            return
        parsing = self._parsing
        in_body = parsing is not None and parsing.more_body
        if in_body:
            self._body_reads += 1
            tail = b""
            self._payload_bytes = 0
        else:
            tail = self._head_tail
            if not self._count_head_bytes(tail, data):
                self._refuse(
                    b"431 Request Header Fields Too Large",
                    f"Request headers exceed {_MAX_HEAD_BYTES} bytes.",
                )
                return
        self._feed(data)
        # Only while the body goes on: heads pipelined behind its end, in the same read, are
        # no framing of it (they go uncounted, as behind a head).
        still_in_body = in_body and parsing is not None and parsing.more_body
        if still_in_body and not self._count_body_framing(len(data)):
            self.transport.close()
            return
        if self._parsing is not parsing:  # a head was whole: a request began
            self._head_bytes = 0
            self._head_started = None
            # The read that ended the head may have brought some of its body (SDKs send both
            # together), uncounted as a body read: the next check takes the body as heard
            # from then, as after any read, rather than silent since an older check.
            self._body_reads_seen = -1
        # A read that ends inside a head (this one's, or one pipelined behind it) may end
        # with the first bytes of its blank line; reads may be shorter than that.
        self._head_tail = (tail + data)[-3:] if self._in_head else b""

    def _count_body_framing(self, read: int) -> bool:
        """Count what a read in a body brought besides payload: chunk framing and trailers,
        which llhttp and httptools keep in memory until their lines end, and which reach
        the scope's headers nowhere. Allowed: the head limit, plus a little per chunk.
        Returns whether the body is still within that."""
        self._framing_bytes += read - self._payload_bytes
        return self._framing_bytes <= _MAX_HEAD_BYTES + _FRAMING_PER_CHUNK * self._chunks

    def _count_head_bytes(self, tail: bytes, data: bytes) -> bool:
        """Count ``data`` against the head limit before it is parsed (a whole head in one
        read would reach the app otherwise), up to the head's blank line, which may have
        begun in ``tail``, the last read's end. Heads pipelined behind it in the same read
        go uncounted here, so such a head's fields may run to the limit plus one read (its
        request line is held to the limit in on_headers_complete). Returns whether the head
        is still within the limit."""
        # The first bytes of a head after an earlier request start its clock; empty lines
        # alone (which llhttp skips) leave the connection idle.
        if self._head_started is None and (data[:1] not in b"\r\n" or data.strip(b"\r\n")):
            self._head_started = self.loop.time()
            self._idle_since = None
        joint = (tail + data[:3]).find(b"\r\n\r\n") if tail else -1
        if joint >= 0:
            self._head_bytes += joint - len(tail) + 4
        else:
            start = 0
            if not self._in_head and data[:1] in b"\r\n":
                # Empty lines before a request line, which llhttp skips: not its blank line.
                start = len(data) - len(data.lstrip(b"\r\n"))
            end = data.find(b"\r\n\r\n", start)
            self._head_bytes += end + 4 if end >= 0 else len(data)
        return self._head_bytes <= _MAX_HEAD_BYTES

    def eof_received(self) -> None:
        return None  # the transport closes, as uvicorn's does

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._output_left, self._output_since = -1, self.loop.time()

    def resume_writing(self) -> None:
        self.writing_paused = False
        drainers, self._drainers = self._drainers, []
        for drainer in drainers:
            if not drainer.done():
                drainer.set_result(None)

    async def drain(self) -> None:
        """Wait until the socket's write buffer has room again."""
        drainer = self.loop.create_future()
        self._drainers.append(drainer)
        await drainer

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close an idle connection, let a busy one finish with
        every request it has received (a client cannot tell whether an unanswered POST was
        acted on)."""
        if self._refusal is not None:
            return  # it closes the connection once the answers before it are out
        newest = self._queued[-1] if self._queued else self._answering
        if newest is None:
            self.transport.close()
        else:
            newest.keep_alive = False

    # The parser's callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._framing_bytes = 0
        self._chunks = 0
        self._url = b""
        self._headers = []
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # A trailer, after the app has had the scope: its headers are not rewritten
            # under it (a key added after middleware checked them, say).
            return
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._answering is not None and len(self._queued) >= _MAX_QUEUED:
            # One read of tiny pipelined requests would otherwise queue thousands of them,
            # each with its scope: 13 MB from a 256 KB read. Stops the parser (see _feed).
            raise _TooManyQueued
        parser = self.parser
        http_version = parser.get_http_version()
        url = self._url
        if len(url) > _MAX_HEAD_BYTES:
            # A head pipelined behind another in one read goes uncounted by _count_head_bytes:
            # its request line, where a head grows without bound, is held to the limit here.
            raise _HeadTooLarge
        if url[:1] == b"/" and b"#" not in url:
            raw_path, _, query = url.partition(b"?")
        else:  # absolute-form, or a fragment: the parser's own reading
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = {
            "type": "http",
            "asgi": self._asgi,
            "http_version": http_version,
            "server": self._server,
            "client": self._client,
            "scheme": self._scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": self._root_path,
            "path": self._root_path + path,
            "raw_path": self._raw_root_path + raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": self._app_state.copy(),
        }
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        # RFC 9110 10.1.1: an HTTP/1.0 client knows no 1xx, and would take a 100 Continue
        # for its answer, so its expectation is ignored.
        expect_continue = self._expect_continue and http_version != "1.0"
        exchange = Exchange(self, scope, keep_alive, expect_continue)
        self._parsing = exchange
        if self._answering is None:
            self._start(exchange)
        else:  # pipelined behind a request still being answered
            self._queued.append(exchange)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        self._payload_bytes += len(body)
        exchange = self._parsing
        if exchange is None or exchange.response_complete:
            return
        if not exchange.body:
            exchange.body = body
        elif exchange.body_parts is None:  # a second read before the app took the first
            exchange.body_parts = [exchange.body, body]
        else:
            exchange.body_parts.append(body)
        # Each part costs its object and list slot besides its bytes: a chunked body of
        # 2-byte chunks held as parts would otherwise take 25 times the high-water mark.
        exchange.body_backlog += len(body) + _BODY_PART_OVERHEAD
        if exchange.body_backlog > _BODY_HIGH_WATER:
            self._pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self._parsing
        if exchange is not None:
            exchange.more_body = False
            exchange.wake()

    # Requests and responses

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._refuse_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _TooManyQueued):
                message = f"More than {_MAX_QUEUED} requests pipelined on one connection."
                self._refuse(b"400 Bad Request", message)
                return
            if isinstance(exc.__context__, _HeadTooLarge):
                message = f"Request headers exceed {_MAX_HEAD_BYTES} bytes."
                self._refuse(b"431 Request Header Fields Too Large", message)
                return
            self.logger.warning("Invalid HTTP request received.")
            self._refuse(b"400 Bad Request", "Invalid HTTP request received.")

    def _start(self, exchange: Exchange) -> None:
        self._answering = exchange
        app = self.app
        limit = self._limit_concurrency
        if limit is not None and (
            len(self.server_state.connections) >= limit or len(self.server_state.tasks) >= limit
        ):
            self.logger.warning("Exceeded concurrency limit.")
            app = _service_unavailable
        context = contextvars.Context() if self._fresh_context else None
        tasks = self.server_state.tasks
        task = self.loop.create_task(exchange.run(app, tasks), context=context)
        if not task.done():  # an eager task factory may have run it to the end already
            tasks.add(task)
            exchange.task = task

    def response_done(self, exchange: Exchange) -> None:
        """The app sent the end of ``exchange``'s response: start the next request, if any."""
        self.server_state.total_requests += 1
        # Body the app never read (an early 413 or 401): the rest of it will be dropped as
        # it comes, and what came so far must not keep reading paused.
        exchange.drop_body()
        if self._answering is exchange:
            self._answering = None
        if self.transport.is_closing():
            return
        if self._queued:
            if _peer_hung_up(self.transport):
                # Reading was paused behind the answer, so the close went unseen: the queued
                # requests would go upstream, and be billed, for a client that has gone.
                self.transport.abort()
                return
            self._start(self._queued.popleft())
        elif self._refusal is not None:
            self._send_refusal(*self._refusal)
            return
        elif self._keep_alive_seconds <= 0:
            self.transport.close()  # uvicorn's timeout_keep_alive=0: no keep-alive at all
            return
        else:
            self._idle_since = self.loop.time()
        self._resume_reading_if_due()

    def app_took_body(self, exchange: Exchange) -> None:
        """The app took what had come of ``exchange``'s body: read on, if that was the pause."""
        if self._reading_paused:
            self._resume_reading_if_due()

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading_if_due(self) -> None:
        parsing = self._parsing
        backlog = parsing.body_backlog if parsing is not None else 0
        if self._reading_paused and not self._queued and backlog <= _BODY_HIGH_WATER:
            self._reading_paused = False
            self.transport.resume_reading()

    def default_head_lines(self) -> bytes:
        """uvicorn's default headers (``date``, and any configured) as head lines; uvicorn
        replaces the list each second, so its lines are made once per list. A configured
        header that could split the head is left out, and said once per connection: an
        exception here would fail every answer, the 500 included."""
        defaults = self.server_state.default_headers
        if defaults is not self._default_headers:
            self._default_head_lines, left_out = head_lines(defaults)
            self._default_headers = defaults
            if left_out and not self._told_defaults_left_out:
                self._told_defaults_left_out = True
                self.logger.error(
                    "Default headers %r left out: a name that is no token, or a value with a "
                    "control character.",
                    left_out,
                )
        return self._default_head_lines

    def log_access(self, scope: dict[str, Any], status: int) -> None:
        self._access_logger.info(
            '%s - "%s %s HTTP/%s" %d',
            get_client_addr(scope),  # type: ignore[arg-type]
            scope["method"],
            get_path_with_query_string(scope),  # type: ignore[arg-type]
            scope["http_version"],
            status,
        )

    # Refusals

    def _refuse_upgrade(self, rest: bytes) -> None:
        """An upgrade request is answered as plain HTTP/1.1, and the connection closed after
        it: whatever the client sends next would be in the protocol it asked for.

        httptools has llhttp skip an upgrade request's body (``rest`` is what followed the
        head in this read), yet it is the request's all the same: ``curl --http2 -d ...`` on
        an ``http://`` URL sends ``Upgrade: h2c`` with one. A body of a known length is read
        here; a chunked one is lost, as under uvicorn."""
        self._upgrade_refused = True
        exchange = self._parsing
        if exchange is None:
            return
        exchange.keep_alive = False
        length = _content_length(exchange.scope["headers"])
        if length:
            exchange.more_body = True
            self._upgrade_body_left = length
            self._take_upgrade_body(rest)
        elif exchange.more_body:
            exchange.more_body = False
            exchange.wake()

    def _take_upgrade_body(self, data: bytes) -> None:
        take = data[: self._upgrade_body_left]
        self._upgrade_body_left -= len(take)
        if take:
            self.on_body(take)
        if not self._upgrade_body_left:
            self.on_message_complete()

    def _refuse(self, status: bytes, message: str) -> None:
        """Answer an ``invalid_request_error`` the server gives before the request reaches
        the app, and close. A request pipelined behind one still being answered is refused
        once the answers before it have gone out (written now, it would land inside them).
        A request whose own body breaks once its answer has begun cannot have a second one:
        its connection closes."""
        if self.transport.is_closing():
            return
        answering, parsing = self._answering, self._parsing
        if parsing is not None and parsing.more_body:  # the broken bytes were its body
            if parsing is answering:
                if parsing.response_started:
                    self.transport.close()  # its answer is going out: cut short
                    return
                # Its app has not answered: the refusal is the answer, and the app hears
                # that the client has gone (what it would send next goes nowhere).
                parsing.disconnected = True
                parsing.wake()
                self._parsing = None
                self._send_refusal(status, message)
                return
            if parsing.response_complete:  # answered early (a 401, a 413) as it came
                self._close_when_read()
                return
            if parsing in self._queued:  # never started: the refusal is its answer
                self._queued.remove(parsing)
            self._parsing = None
        if answering is None:
            self._send_refusal(status, message)
            return
        self._refusal = (status, message)
        self._discard_input()

    def _send_refusal(self, status: bytes, message: str) -> None:
        """The refusal, with the request-id header every answer of the gateway's carries."""
        request_id = new_request_id()
        body = encode_error_body("invalid_request_error", message, request_id)
        head = b"HTTP/1.1 %b\r\n%bcontent-type: application/json\r\nconnection: close\r\n" % (
            status,
            self.default_head_lines(),
        )
        head += b"request-id: %b\r\ncontent-length: %d\r\n\r\n" % (request_id.encode(), len(body))
        self.transport.write(head + body)
        self._close_when_read()

    def _discard_input(self) -> None:
        """Read on and drop what comes: input left unread when the socket closes makes the
        kernel reset the connection, and a reset throws away output not yet sent."""
        self._discarding = True
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _close_when_read(self) -> None:
        """Close without losing what was written: a client still sending (the rest of a
        large head, requests pipelined behind a refused one) would otherwise get a reset in
        place of the answer. As nginx's lingering close: the answer is followed by a FIN,
        input is dropped, and the connection closes when the client closes its side, or
        after _LINGER_SECONDS."""
        transport = self.transport
        try:
            half_close = transport.can_write_eof()
        except NotImplementedError:
            half_close = False
        if not half_close:
            transport.close()
            return
        self._discard_input()
        transport.write_eof()
        # The linger bounds the connection from here: the watchdog's limits (a head begun
        # during a long stream, say) would cut it short.
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._linger = self.loop.call_later(_LINGER_SECONDS, self._end_linger)

    def _end_linger(self) -> None:
        """The client has had its time to stop sending: close, which sends what is still
        buffered first. close() waits for that to drain, forever for a client that reads
        nothing, so the connection is dropped body_idle_seconds later all the same."""
        self.transport.close()
        self._linger = self.loop.call_later(self.body_idle_seconds, self.transport.abort)

    # Slow clients and idle connections

    def _check(self) -> None:
        if self.transport.is_closing():
            # close() waits for the output to drain: a client that reads none of it would
            # keep the connection, and a graceful shutdown waiting for it, for good.
            if self.transport.get_write_buffer_size() == 0:
                self._watch = None
            elif self._output_stalled(self.loop.time()):
                self._watch = None
                self.transport.abort()
            else:
                self._watch = self.loop.call_later(self._period, self._check)
            return
        if self._reading_paused and _peer_hung_up(self.transport):
            # Paused reading (requests queued behind the one answered) sees no close: asked
            # of the socket instead, so that the request under way ends with its client.
            self._watch = None
            self.transport.abort()
            return
        if self._too_slow(self.loop.time()):
            self._watch = None
            if self.writing_paused:
                # close() would wait for the unread output to drain, which a client that
                # reads nothing never lets happen: the connection would stay for good.
                self.transport.abort()
            else:
                self.transport.close()
            return
        self._watch = self.loop.call_later(self._period, self._check)

    def _output_stalled(self, now: float) -> bool:
        """Whether the answer bytes waiting to be sent have not moved for body_idle_seconds:
        the client stopped reading. One that reads slowly, slower than a large body message
        drains, still moves them, and is not cut off. The kernel's share counts too: its
        send buffer grows to megabytes, and the socket turns writable again only once a
        third of it has drained, which a client reading a few KB/s takes minutes to do."""
        left = self.transport.get_write_buffer_size() + _unsent_in_kernel(self.transport)
        if left != self._output_left:
            self._output_left, self._output_since = left, now
            return False
        return now - self._output_since > self.body_idle_seconds

    def _too_slow(self, now: float) -> bool:
        if self.writing_paused:
            # An answer is still going out, complete or not as the app sees it: too slow only
            # if the client stopped reading it (its stream would wait forever).
            return self._output_stalled(now)
        parsing = self._parsing
        if parsing is not None and parsing.more_body:  # a body is being read
            if self._reading_paused or parsing.waiting_for_continue:
                # Paused reading is the app's doing (it has not taken the body so far, or
                # not yet asked for it with a 100 Continue).
                self._body_reads_seen, self._body_quiet_since = self._body_reads, now
                return False
            if self._body_reads != self._body_reads_seen:
                self._body_reads_seen, self._body_quiet_since = self._body_reads, now
                return False
            if parsing.response_complete:
                # A body already answered (an early 401 to "Expect: 100-continue", say) that
                # the client stopped sending: an idle connection, from the answer at least.
                quiet_since = max(self._body_quiet_since, self._idle_since or 0.0)
                return now - quiet_since > self._keep_alive_seconds
            return now - self._body_quiet_since > self.body_idle_seconds
        if self._answering is not None or self._queued:
            return False  # a response is still going out
        started = self._head_started
        if started is not None:
            return now - started > self.head_seconds
        idle = self._idle_since
        return idle is not None and now - idle > self._keep_alive_seconds


def _unsent_in_kernel(transport: asyncio.BaseTransport) -> int:
    """The bytes the kernel holds for the client, sent but not acknowledged or not sent yet
    (Linux's SIOCOUTQ); 0 where that cannot be asked."""
    sock = transport.get_extra_info("socket")
    if _SIOCOUTQ is None or sock is None:
        return 0
    try:
        answer = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):  # closed meanwhile, or no such request here
        return 0
    unsent: int = struct.unpack("i", answer)[0]
    return unsent


def _peer_hung_up(transport: asyncio.BaseTransport) -> bool:
    """Whether the client closed its side of the connection (or it failed): what a paused
    transport, which reads nothing, cannot tell."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(select, "poll"):
        return False
    poller = select.poll()
    try:
        poller.register(sock.fileno(), _HUNG_UP)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile
        return False


_HUNG_UP = (
    getattr(select, "POLLRDHUP", 0) | getattr(select, "POLLHUP", 0) | getattr(select, "POLLERR", 0)
)


# Requests pipelined behind the one being answered that wait their turn; past this many
# the connection is refused (after the answers before) rather than queue every one.
_MAX_QUEUED = 128


class _TooManyQueued(Exception):
    """Raised from a parser callback: httptools stops, and reports it as its cause."""


class _HeadTooLarge(Exception):
    """Raised from a parser callback, as :class:`_TooManyQueued` is."""


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """A request's Content-Length (the parser has checked it), or 0."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def _service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    """The answer over uvicorn's ``limit_concurrency``, in Anthropic's error envelope."""
    await send_api_error(send, 503, "The server is handling too many requests.")
