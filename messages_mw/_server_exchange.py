"""One request on a connection of :class:`~messages_mw.server.GatewayHttpProtocol` and the
app's answer to it: ASGI's ``receive`` and ``send``, the request body as it arrives, and the
response's framing (the head held until the body's first bytes join it, Content-Length or
chunked, nothing for HEAD, 204 and 304), with what the app gets wrong answered for it."""

from __future__ import annotations

import asyncio
import http
from collections.abc import Sequence
from typing import Any, Protocol

from ._http11 import head_and_body
from ._http11_parse import TOKEN_CHARS
from .errors import encode_error_body, new_request_id
from .memo import Memo

__all__ = ["Connection", "Exchange", "send_api_error"]

_SHUTTING_DOWN = "The gateway is shutting down; retry the request."


class Connection(Protocol):
    """What an exchange needs of its connection (the protocol)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    logger: Any
    access_log: bool
    writing_paused: bool

    async def drain(self) -> None: ...

    def app_took_body(self, exchange: Exchange) -> None: ...

    def response_done(self, exchange: Exchange) -> None: ...

    def default_head_lines(self) -> bytes: ...

    def log_access(self, scope: dict[str, Any], status: int) -> None: ...


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
# translate() with characters to delete builds a 256-byte table on every call; with a table
# and nothing to delete it only maps, and a string none of whose bytes it changes comes back
# equal. This one changes exactly the bytes a header value may not hold: every control but
# tab (CR and LF included, which would split the head).
_FLAG_BAD_VALUE_BYTES = bytes(
    (c + 1) % 256 if (c < 32 and c != 9) or c == 127 else c for c in range(256)
)
# What _start_response must do with a header beyond writing it.
_PLAIN, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION = range(4)
_FRAMING_NAMES = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
}
_TOKEN_ONLY = bytes(c if c in TOKEN_CHARS else (c + 1) % 256 for c in range(256))


def _check_header_name(name: bytes) -> tuple[bytes, int]:
    """A response header's name, lowercased, and what it means for the framing. Raises
    RuntimeError for a name that is not an RFC 9110 token."""
    lowered = name.lower()
    if not lowered or lowered.translate(_TOKEN_ONLY) != lowered:  # a token has a character
        raise RuntimeError(f"Invalid HTTP header name {lowered!r}.")
    return lowered, _FRAMING_NAMES.get(lowered, _PLAIN)


# Answers repeat the same few names, so each is checked once. Bounded: an upstream may invent
# names.
_checked_names = Memo(_check_header_name, 1024)


def head_lines(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, list[bytes]]:
    """``headers`` as the lines of a head, less those whose name is no token or whose value
    holds a control character (checked as an app's are), and the names of those left out."""
    lines: list[bytes] = []
    left_out: list[bytes] = []
    for name, value in headers:
        try:
            line = _checked_names[name][0] + b": " + value + b"\r\n"
            _check_values(value)
        except (RuntimeError, TypeError):  # TypeError: not bytes, set by hand
            left_out.append(name)
        else:
            lines.append(line)
    return b"".join(lines), left_out


def _check_values(values: bytes) -> None:
    """Refuse header values (all of them, joined) holding a control other than tab: a CR or
    LF (relayed from an upstream, say) would split the head, and no other belongs there. One
    pass over them all, instead of a regular expression per header."""
    if values.translate(_FLAG_BAD_VALUE_BYTES) != values:
        raise RuntimeError("Invalid HTTP header value: it holds a control character.")


def _tokens(value: bytes) -> list[bytes]:
    """The lowercased tokens of a comma-separated header value."""
    return [token.strip() for token in value.lower().split(b",")]


class Exchange:
    """One request on a connection and the app's response to it: ASGI's ``receive`` and
    ``send``, the request body as it arrives, and the response's framing."""

    __slots__ = (
        "bodiless",
        "body",
        "body_backlog",
        "body_parts",
        "body_taken",
        "chunked",
        "connection",
        "disconnected",
        "held_head",
        "keep_alive",
        "length_left",
        "more_body",
        "response_complete",
        "response_started",
        "scope",
        "task",
        "transport",
        "until_close",
        "waiters",
        "waiting_for_continue",
    )

    def __init__(
        self,
        connection: Connection,
        scope: dict[str, Any],
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self.connection = connection
        self.transport = connection.transport
        self.scope = scope
        self.keep_alive = keep_alive
        self.waiting_for_continue = expect_continue
        # The request: body bytes not yet handed to the app, and whether more will come.
        self.body = b""
        # Reads that came before the app took the first, kept apart and joined once when it
        # takes them: each join or bytearray append would copy the whole body again.
        self.body_parts: list[bytes] | None = None
        self.body_backlog = 0  # what the held bytes cost in memory, for the high-water mark
        self.more_body = True
        self.body_taken = False  # the app has had the body's last message
        self.disconnected = False
        self.waiters: list[asyncio.Future[None]] = []
        # Set once created; left None if an eager task factory ran it to the end at once.
        self.task: asyncio.Task[None] | None = None
        # The response.
        self.response_started = False
        self.response_complete = False
        self.held_head: bytes | None = None
        self.chunked = False
        self.until_close = False  # an HTTP/1.0 answer of unknown length: its end is the close
        self.bodiless = False  # a HEAD request's answer, a 204 or a 304: no body goes out
        self.length_left = 0

    def drop_body(self) -> None:
        """Forget the body bytes the app has not taken."""
        self.body, self.body_parts, self.body_backlog = b"", None, 0

    def wake(self) -> None:
        """Tell a ``receive`` waiting for body bytes or a disconnect to look again."""
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def run(self, app: Any, tasks: set[asyncio.Task[None]]) -> None:
        """Run the app on this request, answering for it when it fails or stops short, then
        leave ``tasks`` (uvicorn's, which a graceful shutdown waits for)."""
        logger = self.connection.logger
        try:
            result = await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            # Only a shutdown whose graceful timeout ran out cancels a request here: no fault
            # to trace (uvicorn logs each as an exception), and a client yet to be answered
            # is told to retry, elsewhere, rather than given a 500.
            logger.info("A request was cut short by the server's shutdown.")
            if not self.response_started:
                await send_api_error(self.send, 529, _SHUTTING_DOWN, error_type="overloaded_error")
            elif not self.response_complete:
                self.close()
        except BaseException as exc:  # as uvicorn: whatever the app raises ends here
            logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self._send_500()
            elif not self.response_complete:
                # After a complete answer the next request may be under way: not cut off.
                self.close()
        else:
            if result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
                if not self.response_complete:
                    self.close()
            elif not self.response_started and not self.disconnected:
                logger.error("ASGI callable returned without starting response.")
                await self._send_500()
            elif not self.response_complete and not self.disconnected:
                logger.error("ASGI callable returned without completing response.")
                self.close()
        finally:
            # Here rather than as the task's done callback, which would cost a loop pass.
            if self.task is not None:
                tasks.discard(self.task)

    async def _send_500(self) -> None:
        await send_api_error(self.send, 500, "Internal server error.")

    async def receive(self) -> dict[str, Any]:
        if self.waiting_for_continue:
            self.waiting_for_continue = False
            if self.more_body and not self.transport.is_closing():
                self.transport.write(_CONTINUE)
        while not (self.disconnected or self.response_complete):
            body = self.body
            if body or (not self.more_body and not self.body_taken):
                # A body that came in one read is the parser's own bytes: handed on uncopied.
                if self.body_parts is not None:
                    body = b"".join(self.body_parts)
                self.drop_body()
                more_body = self.more_body
                self.body_taken = not more_body
                self.connection.app_took_body(self)
                return {"type": "http.request", "body": body, "more_body": more_body}
            waiter = self.connection.loop.create_future()
            self.waiters.append(waiter)
            await waiter
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        connection = self.connection
        if connection.writing_paused and not self.disconnected:
            await connection.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{kind}'."
                )
            self._start_response(message["status"], message.get("headers", ()))
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            self._write_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}' sent, after response already completed."
            )

    def _start_response(self, status: int, headers: Any) -> None:
        # Checked before anything is kept: a refused head still leaves room for the 500.
        status_line = _STATUS_LINES.get(status)
        if status_line is None:
            raise RuntimeError(f"Invalid HTTP status code {status!r}.")
        connection = self.connection
        parts = [status_line, connection.default_head_lines()]
        keep_alive = self.keep_alive
        close_named = chunked = False
        length: int | None = None
        for name, value in headers:
            name, kind = _checked_names[name]
            if kind:  # one of the framing headers; most are none of them
                if kind == _CONTENT_LENGTH:
                    if length is None and not chunked:
                        length = int(value.decode())
                elif kind == _TRANSFER_ENCODING:
                    if value.lower() == b"chunked":
                        length, chunked = None, True
                elif b"close" in _tokens(value):  # _CONNECTION
                    keep_alive = False
                    close_named = True
            parts += (name, b": ", value, b"\r\n")
        # The names are tokens (checked above). Only the values are scanned, not the whole
        # head: counting its line ends as well cost twice as much again.
        _check_values(b"".join(parts[4::4]))
        bodiless = self.scope["method"] == "HEAD" or status in (204, 304)
        until_close = False
        if length is None and not chunked and not bodiless:
            if self.scope["http_version"] == "1.0":
                # RFC 9112 6.1: no chunked coding for an HTTP/1.0 client, which may not know
                # it. The body (an SSE stream, say) ends where the connection does.
                until_close, keep_alive = True, False
            else:
                chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        if not keep_alive and not close_named:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        if connection.access_log:
            connection.log_access(self.scope, status)
        self.response_started = True
        self.waiting_for_continue = False
        self.keep_alive, self.chunked, self.bodiless = keep_alive, chunked, bodiless
        self.until_close = until_close
        # A 304's Content-Length describes the representation it stands for, not a body.
        self.length_left = 0 if bodiless else length or 0
        self.held_head = head
        connection.loop.call_soon(self.flush_head)

    def flush_head(self) -> None:
        """Send a head the body has not joined by the end of the loop pass that made it."""
        head = self.held_head
        if head is not None:
            self.held_head = None
            if not self.transport.is_closing():
                self.transport.write(head)

    def _write_body(self, body: bytes, more_body: bool) -> None:
        if self.bodiless:
            data = b""
        elif self.chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += _LAST_CHUNK
        elif self.until_close:
            data = body
        else:
            if len(body) > self.length_left:
                raise RuntimeError("Response content longer than Content-Length")
            self.length_left -= len(body)
            data = body
        head = self.held_head
        if head is not None:
            self.held_head = None
            self.transport.writelines(head_and_body(head, data))
        elif data:
            self.transport.write(data)
        if not more_body:
            if self.length_left != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.wake()
            if not self.keep_alive:
                self.transport.close()
            self.connection.response_done(self)

    def close(self) -> None:
        self.flush_head()
        self.transport.close()


async def send_api_error(
    send: Any, status: int, message: str, *, error_type: str = "api_error"
) -> None:
    """An error of the server's own, closing the connection after it."""
    request_id = new_request_id()
    body = encode_error_body(error_type, message, request_id)
    headers = [
        (b"content-type", b"application/json"),
        (b"request-id", request_id.encode()),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
