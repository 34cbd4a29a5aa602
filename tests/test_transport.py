"""FastHTTPTransport against real loopback servers (its parsers: test_http11_parsers.py).

Every server here is a plain asyncio server written for the test, so each one can misbehave in
exactly the way a test needs: split framing across writes, close idle connections, stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import ipaddress
import itertools
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from messages_mw import _connect
from messages_mw.transport import FastHTTPTransport, origin_of

from .servers import serve

_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
with contextlib.suppress(ImportError):  # uvloop is optional; the asyncio loop is always tested
    import uvloop

    _LOOPS["uvloop"] = uvloop.new_event_loop

Request = tuple[bytes, dict[bytes, bytes], bytes]
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[["Upstream", Reader, Writer], Awaitable[None]]


def async_test(
    test: Callable[[], Coroutine[Any, Any, None]],
) -> Callable[[str], None]:
    """Run an async test to completion on each available event loop, with a time limit."""

    def run(loop_name: str) -> None:
        with asyncio.Runner(loop_factory=_LOOPS[loop_name]) as runner:
            runner.run(asyncio.wait_for(test(), 20))

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return pytest.mark.parametrize("loop_name", list(_LOOPS))(run)


class Upstream:
    """A loopback server running ``handler(server, reader, writer)`` once per connection."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[Request] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(self, reader, writer)
        # Cancellation at teardown is ended here so asyncio's stream callback does not log it.
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> Request | None:
        """Read one request, its body de-chunked; None if the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            body = await reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = await _read_chunked(reader)
        else:
            body = b""
        self.requests.append((lines[0], headers, body))
        return lines[0], headers, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def response(body: bytes = b"", status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def keep_alive(answer: Callable[[Request], bytes]) -> Handler:
    """A handler answering every request on the connection with ``answer(request)``."""

    async def handle(
        server: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (request := await server.read_request(reader)) is not None:
            writer.write(answer(request))
            await writer.drain()

    return handle


def serving(answer: Callable[[Request], bytes], tls: ssl.SSLContext | None = None) -> Upstream:
    return Upstream(keep_alive(answer), tls)


async def send(
    transport: FastHTTPTransport,
    method: str,
    url: str,
    *,
    timeouts: Mapping[str, float | None] | None = None,
    **options: Any,
) -> httpx.Response:
    request = httpx.Request(method, url, **options)
    if timeouts is not None:
        request.extensions["timeout"] = timeouts
    return await transport.handle_async_request(request)


async def fetch(transport: FastHTTPTransport, method: str, url: str, **options: Any) -> bytes:
    response = await send(transport, method, url, **options)
    try:
        return await response.aread()
    finally:
        await response.aclose()


@async_test
async def test_content_length_body() -> None:
    answer = response(b"hello", b"201 Created", b"X-Raw-Case: A  b\r\n")
    async with serving(lambda request: answer) as server, FastHTTPTransport() as transport:
        resp = await send(transport, "GET", server.url + "/path?q=1")
        assert await resp.aread() == b"hello"
        await resp.aclose()
    assert resp.status_code == 201
    assert resp.reason_phrase == "Created"
    assert resp.http_version == "HTTP/1.1"
    assert (b"X-Raw-Case", b"A  b") in resp.headers.raw
    request_line, headers, _ = server.requests[0]
    assert request_line == b"GET /path?q=1 HTTP/1.1"
    assert headers[b"host"] == server.url.removeprefix("http://").encode()


def two_chunks(second_wanted: asyncio.Event) -> Handler:
    """A handler answering with one chunk, then, once ``second_wanted`` is set, another and
    the end of the body."""

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b"data: one\n\n"))
        await second_wanted.wait()
        writer.write(chunk(b"data: two\n\n") + b"0\r\n\r\n")
        await reader.read()

    return handle


@async_test
async def test_chunks_are_yielded_before_the_next_one_is_sent() -> None:
    first_seen = asyncio.Event()

    async with Upstream(two_chunks(first_seen)) as server, FastHTTPTransport() as transport:
        resp = await send(transport, "GET", server.url)
        received = []
        async for part in resp.aiter_raw():
            received.append(part)
            first_seen.set()
        await resp.aclose()
    assert received == [b"data: one\n\n", b"data: two\n\n"]


@async_test
async def test_chunk_ready_says_whether_the_next_read_would_wait() -> None:
    second_wanted = asyncio.Event()

    async with Upstream(two_chunks(second_wanted)) as server, FastHTTPTransport() as transport:
        resp = await send(transport, "GET", server.url)
        stream: Any = resp.stream
        # The first chunk may come a read after the head.
        readiness = [await _once_ready(stream)]
        parts = aiter(stream)
        assert await anext(parts) == b"data: one\n\n"
        readiness.append(stream.chunk_ready())
        second_wanted.set()
        assert await anext(parts) == b"data: two\n\n"
        readiness.append(await _once_ready(stream))  # the end of the body
        await resp.aclose()
    assert readiness == [True, False, True]


async def _once_ready(stream: Any) -> bool:
    """``stream.chunk_ready()`` once true, or after 100 ms."""
    for _ in range(100):
        if stream.chunk_ready():
            return True
        await asyncio.sleep(0.001)
    return bool(stream.chunk_ready())


async def write_slowly(writer: Writer, pieces: list[bytes]) -> None:
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.005)


@async_test
async def test_chunk_framing_split_across_writes() -> None:
    pieces = [b"HTTP/1.1 200 OK\r\nTransfer-", b"Encoding: chunked\r", b"\n\r\n", b"5", b";ext"]
    pieces += [b"=1\r", b"\nhel", b"lo\r", b"\n", b"1", b"0\r\n0123456789", b"abcdef\r\n0\r"]
    pieces += [b"\nTrailer-Sum: x\r\n", b"\r", b"\n"]

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await write_slowly(writer, pieces)
        await keep_alive(lambda request: response(b"again"))(server, reader, writer)

    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "GET", server.url) == b"hello0123456789abcdef"
        assert await fetch(transport, "GET", server.url) == b"again"
    assert server.connections == 1


@async_test
async def test_keep_alive_reuses_one_connection() -> None:
    echo = serving(lambda request: response(request[2]))
    async with echo as server, FastHTTPTransport() as transport:
        for index in range(5):
            body = b"request %d" % index
            assert await fetch(transport, "POST", server.url, content=body) == body
    assert server.connections == 1


@async_test
async def test_connection_close_is_not_reused() -> None:
    answer = response(b"bye", extra=b"Connection: close\r\n")
    async with serving(lambda request: answer) as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "GET", server.url) == b"bye"
        assert await fetch(transport, "GET", server.url) == b"bye"
    assert server.connections == 2


@async_test
async def test_body_without_framing_runs_until_close() -> None:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await write_slowly(writer, [b"HTTP/1.1 200 OK\r\n\r\nfirst ", b"second"])

    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "GET", server.url) == b"first second"
        assert await fetch(transport, "GET", server.url) == b"first second"
    assert server.connections == 2


@async_test
async def test_head_204_and_304_have_no_body() -> None:
    def answer(request: Request) -> bytes:
        path = request[0].split(b" ")[1]
        if path == b"/204":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if path == b"/304":
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
        if request[0].startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
        return response(b"body")

    async with serving(answer) as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "HEAD", server.url + "/") == b""
        assert await fetch(transport, "GET", server.url + "/204") == b""
        assert await fetch(transport, "GET", server.url + "/304") == b""
        assert await fetch(transport, "GET", server.url + "/") == b"body"
    assert server.connections == 1


@async_test
async def test_interim_responses_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
    upstream = serving(lambda request: answer + response(b"final"))
    async with upstream as server, FastHTTPTransport() as transport:
        resp = await send(transport, "GET", server.url)
        assert resp.status_code == 200
        assert await resp.aread() == b"final"


@async_test
async def test_refused_connection_raises_connect_error() -> None:
    async with serving(lambda request: b"") as server:
        url = server.url
    async with FastHTTPTransport() as transport:
        with pytest.raises(httpx.ConnectError) as caught:
            await send(transport, "GET", url)
    assert caught.value.request.url == url
    assert isinstance(caught.value.__cause__, OSError)


@async_test
async def test_read_timeout_between_chunks() -> None:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b"first"))
        await asyncio.sleep(30)  # far past any bound below: a missed timeout cannot pass

    timeout = {"connect": 1.0, "read": 0.2, "write": 1.0, "pool": 1.0}
    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        resp = await send(transport, "GET", server.url, timeouts=timeout)
        stream = resp.aiter_raw()
        assert await anext(stream) == b"first"
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as caught:
            await anext(stream)
        assert 0.15 < time.monotonic() - started < 3.0
        assert caught.value.request.url == server.url
        await resp.aclose()


def _read_timeout(seconds: float | None) -> dict[str, float | None]:
    return {"connect": 1.0, "read": seconds, "write": 1.0, "pool": 1.0}


@async_test
async def test_each_request_on_a_reused_connection_gets_its_own_read_timeout() -> None:
    """A connection keeps one timer across requests; every request must still time out on
    its own deadline: sooner than the last one's, later than it, or never."""
    delays = iter([0.0, 0.0, 0.4, 0.4, 30.0])

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        while await server.read_request(reader) is not None:
            await asyncio.sleep(next(delays))
            writer.write(response(b"ok"))

    async with Upstream(handle) as server, FastHTTPTransport() as transport:

        async def fetch_within(seconds: float | None) -> bytes:
            return await fetch(transport, "GET", server.url, timeouts=_read_timeout(seconds))

        # The first arms the connection's timer far ahead; the second moves it much closer.
        assert await fetch_within(30.0) == await fetch_within(0.2) == b"ok"
        # That timer fires during the third, whose own deadline is later: not a timeout.
        assert await fetch_within(0.6) == b"ok"
        # And the third's fires during the fourth, which has no read timeout at all.
        assert await fetch_within(None) == b"ok"
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await send(transport, "GET", server.url, timeouts=_read_timeout(0.2))
        assert 0.15 < time.monotonic() - started < 3.0
    assert server.connections == 1


@async_test
async def test_write_timeout_when_server_does_not_read() -> None:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await asyncio.sleep(5)

    timeout = {"connect": 1.0, "read": 1.0, "write": 0.2, "pool": 1.0}
    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        with pytest.raises(httpx.WriteTimeout):
            await send(transport, "POST", server.url, content=b"x" * 64_000_000, timeouts=timeout)


@async_test
async def test_idle_connection_closed_by_server_is_replaced() -> None:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(response(b"once"))

    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "GET", server.url) == b"once"
        await asyncio.sleep(0.05)
        assert await fetch(transport, "GET", server.url) == b"once"
    assert server.connections == 2


def closes_second_request_unanswered() -> Upstream:
    """The first connection answers one request, then reads the next and closes: the race of a
    server timing out an idle connection just as the client reuses it."""

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        first_connection = server.connections == 1
        await server.read_request(reader)
        writer.write(response(b"answered"))
        if first_connection:
            await server.read_request(reader)
            return
        await keep_alive(lambda request: response(b"answered"))(server, reader, writer)

    return Upstream(handle)


@async_test
async def test_a_replayable_request_on_a_reused_connection_dying_unanswered_is_retried() -> None:
    # An idempotent method, or an idempotency key: sending it twice is harmless.
    for method, headers in (
        ("PUT", {}),
        ("POST", {"idempotency-key": "k-1"}),
        ("POST", {"x-idempotency-key": "k-1"}),
    ):
        async with closes_second_request_unanswered() as server, FastHTTPTransport() as transport:
            assert await fetch(transport, "GET", server.url) == b"answered"
            answer = await fetch(transport, method, server.url, content=b"b", headers=headers)
            assert answer == b"answered"
        assert server.connections == 2
        assert [body for _, _, body in server.requests] == [b"", b"b", b"b"]


async def send_raw(
    transport: FastHTTPTransport,
    method: str,
    url: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> bytes:
    """The body of an answer to a request sent through ``send_raw``, with the given headers
    after ``Host`` (and ``Content-Length`` for a body)."""
    parsed = httpx.URL(url)
    fields = [(b"Host", parsed.netloc), *headers]
    if body:
        fields.append((b"Content-Length", b"%d" % len(body)))
    head, stream = await transport.send_raw(
        method, origin_of(parsed), parsed.raw_path, fields, body, {"read": 5.0}
    )
    assert head.status_code == 200
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()


@async_test
async def test_send_raw_sends_the_headers_as_given_and_pools_the_connection() -> None:
    answer = response(b"hello", extra=b"X-Answer: A  b\r\n")
    async with serving(lambda request: answer) as server, FastHTTPTransport() as transport:
        for body in (b"ping", b""):
            method = "POST" if body else "GET"
            path = f"{server.url}/v1/messages?beta=true"
            sent = await send_raw(transport, method, path, [(b"X-Case", b"Kept")], body)
            assert sent == b"hello"
    assert server.connections == 1
    first, second = server.requests
    assert first[0] == b"POST /v1/messages?beta=true HTTP/1.1"
    assert first[1][b"x-case"] == b"Kept" and first[2] == b"ping"
    assert second[0].startswith(b"GET ") and second[2] == b""


@async_test
async def test_send_raw_refuses_a_header_that_would_smuggle_in_another() -> None:
    async with FastHTTPTransport() as transport:
        with pytest.raises(httpx.LocalProtocolError):
            headers = [(b"X-Bad", b"a\r\nX-Smuggled: 1")]
            await send_raw(transport, "GET", "http://127.0.0.1:9/", headers, b"")


@async_test
async def test_send_raw_resends_on_a_dead_reused_connection_only_when_replayable() -> None:
    # The raw path judges an idempotency key by its name in any case, as httpx's headers do.
    for headers, resent in (([(b"Idempotency-Key", b"k-1")], True), ([], False)):
        async with closes_second_request_unanswered() as server, FastHTTPTransport() as transport:
            assert await send_raw(transport, "POST", server.url, [], b"a") == b"answered"
            if resent:
                assert await send_raw(transport, "POST", server.url, headers, b"b") == b"answered"
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    await send_raw(transport, "POST", server.url, headers, b"b")
        assert server.connections == (2 if resent else 1)


@async_test
async def test_a_post_on_a_reused_connection_dying_unanswered_is_not_sent_twice() -> None:
    # The upstream may have read it and died before answering: a second copy of a messages
    # request is billed again, so the failure goes to the client, whose SDK decides.
    async with closes_second_request_unanswered() as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "POST", server.url, content=b"a") == b"answered"
        with pytest.raises(httpx.RemoteProtocolError):
            await send(transport, "POST", server.url, content=b"b")
    assert server.connections == 1
    assert [body for _, _, body in server.requests] == [b"a", b"b"]


@async_test
async def test_streamed_request_body_is_not_retried() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"

    async with closes_second_request_unanswered() as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "GET", server.url) == b"answered"
        with pytest.raises(httpx.RemoteProtocolError):
            await send(transport, "POST", server.url, content=body())
    assert server.connections == 1


@async_test
async def test_fresh_connection_dying_before_answer_is_not_retried() -> None:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)

    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await send(transport, "GET", server.url)
    assert server.connections == 1


@async_test
async def test_pool_limit_raises_pool_timeout_then_recovers() -> None:
    timeout = {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 0.1}
    single = FastHTTPTransport(max_connections=1)
    async with serving(lambda request: response(b"x" * 10)) as server, single as transport:
        held = await send(transport, "GET", server.url)
        with pytest.raises(httpx.PoolTimeout):
            await send(transport, "GET", server.url, timeouts=timeout)
        await held.aread()
        await held.aclose()
        assert await fetch(transport, "GET", server.url, timeouts=timeout) == b"x" * 10
    assert server.connections == 1


@async_test
async def test_pool_waiters_share_one_connection() -> None:
    single = FastHTTPTransport(max_connections=1)
    bodies = [b"%d" % index for index in range(10)]
    async with serving(lambda request: response(request[2])) as server, single as transport:
        results = await asyncio.gather(
            *(fetch(transport, "POST", server.url, content=body) for body in bodies)
        )
    assert results == bodies
    assert server.connections == 1


@async_test
async def test_cancelled_pool_wait_does_not_leak_its_slot() -> None:
    timeout = {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0}
    single = FastHTTPTransport(max_connections=1)
    async with serving(lambda request: response(b"ok")) as server, single as transport:
        held = await send(transport, "GET", server.url)
        waiting = asyncio.create_task(fetch(transport, "GET", server.url))
        await asyncio.sleep(0.02)
        waiting.cancel()
        await held.aread()
        await held.aclose()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert await fetch(transport, "GET", server.url, timeouts=timeout) == b"ok"


@async_test
async def test_connection_handed_to_a_cancelled_waiter_goes_back_to_the_pool() -> None:
    single = FastHTTPTransport(max_connections=1)
    async with serving(lambda r: response(b"ok")) as server, single as transport:
        held = await send(transport, "GET", server.url)
        waiting = asyncio.create_task(send(transport, "GET", server.url))
        await asyncio.sleep(0.02)
        # Reading the body to its end hands the connection over without suspending, so the
        # waiter is cancelled after it was given the connection but before it could run.
        assert isinstance(held.stream, httpx.AsyncByteStream)
        async for _ in held.stream:
            pass
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert await fetch(transport, "GET", server.url) == b"ok"
    assert server.connections == 1


@async_test
async def test_full_pool_evicts_an_idle_connection_to_another_origin() -> None:
    first, second = serving(lambda r: response(b"a")), serving(lambda r: response(b"b"))
    async with first, second, FastHTTPTransport(max_connections=1) as transport:
        assert await fetch(transport, "GET", first.url) == b"a"
        assert await fetch(transport, "GET", second.url) == b"b"
        assert await fetch(transport, "GET", first.url) == b"a"
    assert (first.connections, second.connections) == (2, 1)


@async_test
async def test_released_connection_to_another_origin_frees_a_slot_for_a_waiter() -> None:
    first, second = serving(lambda r: response(b"a")), serving(lambda r: response(b"b"))
    async with first, second, FastHTTPTransport(max_connections=1) as transport:
        held = await send(transport, "GET", first.url)
        waiting = asyncio.create_task(fetch(transport, "GET", second.url))
        await asyncio.sleep(0.02)
        await held.aread()
        await held.aclose()
        assert await waiting == b"b"


@async_test
async def test_discarded_connection_frees_a_slot_for_a_waiter() -> None:
    single = FastHTTPTransport(max_connections=1)
    async with serving(lambda r: response(b"x" * 100)) as server, single as transport:
        held = await send(transport, "GET", server.url)
        waiting = asyncio.create_task(fetch(transport, "GET", server.url))
        await asyncio.sleep(0.02)
        await held.aclose()
        assert await waiting == b"x" * 100
    assert server.connections == 2


# The upstreams below stream forever: a transport that drained the rest of the response or
# kept the socket open would never close it, so the bound need not be tight to catch that.
PROMPTLY = 3.0


def endless_events(seen_close: asyncio.Future[float]) -> Handler:
    """Stream an event every 10 ms and note when the client's side of the socket went away."""

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(CHUNKED_HEAD)

        async def watch() -> None:
            with contextlib.suppress(ConnectionError):
                await reader.read()
            seen_close.set_result(time.monotonic())

        watcher = asyncio.create_task(watch())
        with contextlib.suppress(ConnectionError):
            while not watcher.done():
                writer.write(chunk(b"data: tick\n\n"))
                await writer.drain()
                await asyncio.sleep(0.01)

    return handle


@async_test
async def test_aclose_mid_stream_closes_the_socket_promptly() -> None:
    seen_close: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    async with Upstream(endless_events(seen_close)) as server, FastHTTPTransport() as transport:
        resp = await send(transport, "GET", server.url)
        stream = resp.aiter_raw()
        assert await anext(stream) == b"data: tick\n\n"
        closed_at = time.monotonic()
        await resp.aclose()
        await resp.aclose()
        assert await asyncio.wait_for(seen_close, PROMPTLY) - closed_at < PROMPTLY


@async_test
async def test_aclose_from_a_cancelled_task_closes_the_socket() -> None:
    seen_close: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    first_event = asyncio.Event()

    async def relay(resp: httpx.Response) -> None:
        try:
            async for _ in resp.aiter_raw():
                first_event.set()
        finally:
            await resp.aclose()

    async with Upstream(endless_events(seen_close)) as server, FastHTTPTransport() as transport:
        resp = await send(transport, "GET", server.url)
        task = asyncio.create_task(relay(resp))
        await first_event.wait()
        task.cancel()
        cancelled_at = time.monotonic()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(seen_close, PROMPTLY) - cancelled_at < PROMPTLY


@async_test
async def test_five_megabytes_each_way() -> None:
    payload = bytes(range(256)) * (5 * 1024 * 1024 // 256)

    def echo_chunked(request: Request) -> bytes:
        body = request[2]
        pieces = [chunk(body[i : i + 65536]) for i in range(0, len(body), 65536)]
        return CHUNKED_HEAD + b"".join(pieces) + b"0\r\n\r\n"

    async def streamed() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 100_000):
            yield payload[start : start + 100_000]

    async with serving(echo_chunked) as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "POST", server.url, content=payload) == payload
        assert await fetch(transport, "POST", server.url, content=streamed()) == payload
    assert server.requests[1][1][b"transfer-encoding"] == b"chunked"
    assert server.connections == 1


@async_test
async def test_slow_consumer_pauses_reading() -> None:
    total = 32 * 1024 * 1024
    sent = 0

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        nonlocal sent
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        resp = await send(transport, "GET", server.url)
        stream = resp.aiter_raw()
        received = len(await anext(stream))
        await asyncio.sleep(0.5)
        # Kernel socket buffers hold a few MB; without pausing, the whole body would be read.
        assert sent < total * 3 // 4
        async for part in stream:
            received += len(part)
        await resp.aclose()
    assert received == total


@async_test
async def test_streamed_body_with_content_length_is_sent_unframed() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b""
        yield b"world"

    headers = {"Content-Length": "11"}
    echo = serving(lambda request: response(request[2]))
    async with echo as server, FastHTTPTransport() as transport:
        sent = await fetch(transport, "PUT", server.url, content=body(), headers=headers)
    assert sent == b"hello world"
    assert b"transfer-encoding" not in server.requests[0][1]


def answers_before_reading_body() -> Handler:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response(b"too large", b"413 Content Too Large", b"Connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(2)

    return handle


@async_test
async def test_early_response_stops_the_upload() -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"x" * 65536

    upstream = Upstream(answers_before_reading_body())
    async with upstream as server, FastHTTPTransport() as transport:
        for content in (b"x" * 64_000_000, body()):
            resp = await send(transport, "POST", server.url, content=content)
            assert resp.status_code == 413
            assert await resp.aread() == b"too large"
            await resp.aclose()


@async_test
async def test_server_hanging_up_during_upload_raises() -> None:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"x" * 65536

    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        with pytest.raises((httpx.WriteError, httpx.RemoteProtocolError)):
            await send(transport, "POST", server.url, content=body())


@async_test
async def test_connect_timeout() -> None:
    timeout = {"connect": 0.0, "read": 1.0, "write": 1.0, "pool": 1.0}
    async with serving(lambda request: response()) as server, FastHTTPTransport() as transport:
        with pytest.raises(httpx.ConnectTimeout):
            await send(transport, "GET", server.url, timeouts=timeout)
        assert await fetch(transport, "GET", server.url) == b""


@pytest.mark.parametrize(
    ("options", "reused"),
    [(b"Connection: keep-alive\r\n", True), (b"", False)],
)
def test_http_1_0_keeps_alive_only_when_asked(options: bytes, reused: bool) -> None:
    answer = b"HTTP/1.0 200 OK\r\n%sContent-Length: 2\r\n\r\nok" % options

    async def scenario() -> None:
        async with serving(lambda request: answer) as server, FastHTTPTransport() as transport:
            resp = await send(transport, "GET", server.url)
            assert resp.http_version == "HTTP/1.0"
            assert await resp.aread() == b"ok"
            await resp.aclose()
            assert await fetch(transport, "GET", server.url) == b"ok"
        assert server.connections == (1 if reused else 2)

    asyncio.run(asyncio.wait_for(scenario(), 10))


@async_test
async def test_bytes_after_the_response_spoil_the_connection() -> None:
    upstream = serving(lambda request: response(b"ok") + b"junk")
    async with upstream as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "GET", server.url) == b"ok"
        assert await fetch(transport, "GET", server.url) == b"ok"
    assert server.connections == 2


@async_test
async def test_idle_connection_receiving_408_is_dropped() -> None:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(response(b"ok"))
        await asyncio.sleep(0.02)
        writer.write(response(b"idle", b"408 Request Timeout", b"Connection: close\r\n"))
        await asyncio.sleep(2)

    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        assert await fetch(transport, "GET", server.url) == b"ok"
        await asyncio.sleep(0.1)
        assert await fetch(transport, "GET", server.url) == b"ok"
    assert server.connections == 2


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
        # Without framing only a clean close ends the body: a reset cuts it, and a cut JSON
        # body relayed as whole would reach the client as a 200.
        b'HTTP/1.1 200 OK\r\n\r\n{"id":"msg_1","content":[{"text":"hel',
    ],
    ids=["content-length", "until-close"],
)
@pytest.mark.parametrize("loop_name", list(_LOOPS))
def test_connection_reset_mid_body_raises_read_error(loop_name: str, partial: bytes) -> None:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(partial)
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def scenario() -> None:
        async with Upstream(handle) as server, FastHTTPTransport() as transport:
            resp = await send(transport, "GET", server.url)
            with pytest.raises(httpx.ReadError) as caught:
                await resp.aread()
        cause = caught.value.__cause__
        assert cause is not None and isinstance(cause.__cause__, ConnectionResetError)

    with asyncio.Runner(loop_factory=_LOOPS[loop_name]) as runner:
        runner.run(asyncio.wait_for(scenario(), 20))


@async_test
async def test_transport_aclose_fails_a_body_that_runs_until_close() -> None:
    released = asyncio.Event()

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nfirst part ")
        await writer.drain()
        await released.wait()

    async def close_soon(transport: FastHTTPTransport) -> None:
        await asyncio.sleep(0.05)
        await transport.aclose()

    async with Upstream(handle) as server:
        transport = FastHTTPTransport()
        resp = await send(transport, "GET", server.url)
        stream = resp.aiter_raw()
        assert await anext(stream) == b"first part "
        closing = asyncio.ensure_future(close_soon(transport))  # while the next read waits
        with pytest.raises(httpx.ReadError):
            async for _ in stream:
                pass
        await closing
        await resp.aclose()
        released.set()


def _answering_once_then_on(
    go: threading.Event, then: bytes | None
) -> tuple[str, list[socket.socket]]:
    """A server in a thread of its own (so it runs while the test's loop is blocked) that
    answers one request per connection; once ``go`` is set it sends ``then`` unasked and
    waits, or with ``None`` closes the connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def answer_once(conn: socket.socket) -> None:
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(65536)
            conn.sendall(response(b"ok"))
            go.wait(10)
            if then is not None:
                conn.sendall(then)
                time.sleep(2)

    def serve_forever() -> None:
        with listener:
            while len(accepted) < 2:
                conn, _ = listener.accept()
                accepted.append(conn)
                threading.Thread(target=answer_once, args=(conn,), daemon=True).start()

    threading.Thread(target=serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", accepted


def test_without_poll_idle_connections_are_still_reused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Windows has no select.poll: the kernel check is skipped, and nothing else changes.
    import select

    monkeypatch.delattr(select, "poll")

    async def scenario() -> None:
        upstream = serving(lambda request: response(b"ok"))
        async with upstream as server, FastHTTPTransport() as transport:
            for _ in range(2):
                assert await fetch(transport, "GET", server.url) == b"ok"
        assert server.connections == 1

    with caplog.at_level(logging.ERROR):
        asyncio.run(asyncio.wait_for(scenario(), 10))
    assert [record.getMessage() for record in caplog.records] == []


@pytest.mark.parametrize(
    "then", [None, response(b"stray")], ids=["server-closes", "server-sends-unasked"]
)
@pytest.mark.parametrize("loop_name", list(_LOOPS))
def test_an_idle_connection_the_server_spoke_on_while_the_loop_was_busy_is_not_reused(
    loop_name: str, then: bytes | None
) -> None:
    # While the event loop is busy elsewhere, the server closes the idle socket (its idle
    # timeout) or writes to it: the FIN or the bytes wait in the kernel, unread. A POST
    # written to a closed socket fails unanswered and is never resent; stray bytes would be
    # read as the next request's answer. So the pool asks the kernel first.
    async def scenario() -> None:
        go = threading.Event()
        url, accepted = _answering_once_then_on(go, then)
        async with FastHTTPTransport() as transport:
            assert await fetch(transport, "POST", url, content=b"{}") == b"ok"
            go.set()
            time.sleep(0.1)  # noqa: ASYNC251 (blocks the loop on purpose: nothing is read)
            assert await fetch(transport, "POST", url, content=b"{}") == b"ok"
        assert len(accepted) == 2

    with asyncio.Runner(loop_factory=_LOOPS[loop_name]) as runner:
        runner.run(asyncio.wait_for(scenario(), 20))


@async_test
async def test_transport_aclose_fails_a_response_in_flight() -> None:
    seen_close: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    async with Upstream(endless_events(seen_close)) as server:
        transport = FastHTTPTransport()
        resp = await send(transport, "GET", server.url)
        stream = resp.aiter_raw()
        await anext(stream)
        await transport.aclose()
        with pytest.raises(httpx.ReadError):
            async for _ in stream:
                pass
        await resp.aclose()
        await asyncio.wait_for(seen_close, 1)


@async_test
async def test_a_connection_in_use_at_aclose_is_closed_when_its_exchange_ends() -> None:
    # aclose() frees the held connection's slot; a request waiting for one connects in the
    # pool aclose() let go of, and must not leave that connection idle there, open for nobody.
    ended = 0
    both_closed = asyncio.Event()

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        nonlocal ended
        try:
            await keep_alive(lambda request: response(b"ok"))(server, reader, writer)
        finally:
            ended += 1
            if ended == 2:
                both_closed.set()

    single = FastHTTPTransport(max_connections=1)
    async with Upstream(handle) as server:
        held = await send(single, "GET", server.url)
        waiting = asyncio.create_task(fetch(single, "GET", server.url))
        await asyncio.sleep(0.02)
        await single.aclose()
        await held.aclose()  # its owner lets go: the waiter gets the slot
        assert await waiting == b"ok"
        await asyncio.wait_for(both_closed.wait(), 2)
        # The transport still works afterwards, on a pool of its own.
        assert await fetch(single, "GET", server.url) == b"ok"
        await single.aclose()
    assert server.connections == 3


@pytest.mark.parametrize("loop_name", list(_LOOPS))
def test_a_transport_serves_one_event_loop_after_another(loop_name: str) -> None:
    # A host may call the gateway from a fresh loop each time (a test client per request, a
    # pytest loop per test). The old loop's idle connection is unusable in the new one and
    # must neither fail the request nor keep its slot: with one slot, every loop gets one.
    async def ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    timeouts = {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 0.5}
    single = FastHTTPTransport(max_connections=1)
    with serve(ok) as url:
        for _ in range(4):
            with asyncio.Runner(loop_factory=_LOOPS[loop_name]) as runner:
                assert runner.run(fetch(single, "GET", url, timeouts=timeouts)) == b"ok"
        # Closing from yet another loop, after the connection's own loop has closed.
        asyncio.run(single.aclose())


@async_test
async def test_requests_the_transport_cannot_send() -> None:
    async with FastHTTPTransport() as transport:
        # Each names the request, as httpx's own transport's errors do.
        for method, url, headers, error in (
            ("GET", "http://127.0.0.1:9/", {"x": "a\r\nb: c"}, httpx.LocalProtocolError),
            ("GÉT", "http://127.0.0.1:9/", {}, httpx.LocalProtocolError),
            ("GET", "ftp://127.0.0.1/", {}, httpx.UnsupportedProtocol),
            ("GET", "http:///path", {}, httpx.UnsupportedProtocol),
        ):
            with pytest.raises(error) as raised:
                await send(transport, method, url, headers=headers)
            assert raised.value.request.url == url
        with pytest.raises(TypeError):
            await send(transport, "POST", "http://127.0.0.1:9/", content=iter([b"sync"]))
    with pytest.raises(ValueError):
        FastHTTPTransport(max_connections=0)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
        CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n",
        CHUNKED_HEAD + b"2\r\nhello\r\n0\r\n\r\n",
    ],
)
def test_malformed_response_raises_remote_protocol_error(answer: bytes) -> None:
    async def scenario() -> None:
        async with serving(lambda request: answer) as server, FastHTTPTransport() as transport:
            with pytest.raises(httpx.RemoteProtocolError):
                await fetch(transport, "GET", server.url)

    asyncio.run(asyncio.wait_for(scenario(), 10))


@async_test
async def test_peer_closing_mid_body_raises() -> None:
    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")

    async with Upstream(handle) as server, FastHTTPTransport() as transport:
        resp = await send(transport, "GET", server.url)
        with pytest.raises(httpx.RemoteProtocolError, match="before the response was complete"):
            await resp.aread()


@async_test
async def test_transport_aclose_closes_idle_connections() -> None:
    closed = asyncio.Event()

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await keep_alive(lambda request: response(b"ok"))(server, reader, writer)
        closed.set()

    async with Upstream(handle) as server:
        transport = FastHTTPTransport()
        assert await fetch(transport, "GET", server.url) == b"ok"
        await transport.aclose()
        await asyncio.wait_for(closed.wait(), 1)


@async_test
async def test_async_client_end_to_end() -> None:
    events = [b"event: ping\ndata: {}\n\n", b"event: message_stop\ndata: {}\n\n"]
    compressed = gzip.compress(b'{"hello": "world"}')

    def answer(request: Request) -> bytes:
        if request[0].startswith(b"POST /v1/messages"):
            return CHUNKED_HEAD + b"".join(chunk(event) for event in events) + b"0\r\n\r\n"
        return response(compressed, extra=b"Content-Encoding: gzip\r\n")

    async with serving(answer) as server:
        transport = FastHTTPTransport()
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            assert (await client.get("/json")).json() == {"hello": "world"}
            async with client.stream("GET", "/json") as raw:
                assert b"".join([part async for part in raw.aiter_raw()]) == compressed
            async with client.stream("POST", "/v1/messages", json={"stream": True}) as resp:
                assert resp.status_code == 200
                # Events that arrived in one read may be handed over joined.
                assert b"".join([part async for part in resp.aiter_raw()]) == b"".join(events)
    assert server.requests[-1][2] == b'{"stream":true}'
    assert server.connections == 1


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path.write_bytes(key_bytes)
    return cert_path, key_path


def test_https_with_keep_alive(tmp_path: Path) -> None:
    cert_path, key_path = _self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=str(cert_path))

    async def scenario() -> None:
        server = serving(lambda request: response(b"secret"), server_context)
        async with server, FastHTTPTransport(ssl_context=client_context) as transport:
            url = server.url.replace("127.0.0.1", "localhost")
            for _ in range(3):
                assert await fetch(transport, "GET", url) == b"secret"
        assert server.connections == 1

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_https_with_the_default_context_verifies_certificates(tmp_path: Path) -> None:
    cert_path, key_path = _self_signed_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)

    async def scenario() -> None:
        upstream = serving(lambda request: response(b"x"), server_context)
        async with upstream as server, FastHTTPTransport() as transport:
            with pytest.raises(httpx.ConnectError) as caught:
                await send(transport, "GET", server.url)
        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)

    asyncio.run(asyncio.wait_for(scenario(), 10))


def encode_chunked(body: bytes, sizes: list[int], extensions: bool, trailers: bool) -> bytes:
    encoded, start = [CHUNKED_HEAD], 0
    for size in sizes:
        if start >= len(body):
            break
        piece, start = body[start : start + size], start + size
        extension = b";name=value" if extensions else b""
        encoded.append(b"%X%s\r\n%s\r\n" % (len(piece), extension, piece))
    if start < len(body):
        encoded.append(chunk(body[start:]))
    encoded.append(b"0\r\nExpires: never\r\n\r\n" if trailers else b"0\r\n\r\n")
    return b"".join(encoded)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (taken modulo its length), as a socket might."""
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=15, deadline=None)
@given(
    body=st.binary(min_size=1, max_size=2000),
    sizes=st.lists(st.integers(1, 500), max_size=8),
    cuts=st.lists(st.integers(0, 5000), max_size=12),
)
def test_chunked_split_over_real_socket(body: bytes, sizes: list[int], cuts: list[int]) -> None:
    pieces = split_at(encode_chunked(body, sizes, extensions=True, trailers=False), cuts)

    async def handle(server: Upstream, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await write_slowly(writer, pieces)

    server = Upstream(handle)

    async def scenario() -> bytes:
        async with server, FastHTTPTransport() as transport:
            return await fetch(transport, "GET", server.url)

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == body


def resolving_to(
    addresses: list[tuple[str, int]],
) -> Callable[[asyncio.AbstractEventLoop, str, int], Awaitable[list[tuple[int, tuple[Any, ...]]]]]:
    """A resolver for FastHTTPTransport that resolves every host to ``addresses`` (IPv4, in
    this order)."""

    async def resolve(
        loop: asyncio.AbstractEventLoop, hostname: str, port: int
    ) -> list[tuple[int, tuple[Any, ...]]]:
        return [(socket.AF_INET, address) for address in addresses]

    return resolve


@contextlib.contextmanager
def black_hole(port: int) -> Iterator[tuple[str, int]]:
    """An address whose connects hang: a listener that never accepts, its queue full, so
    the kernel drops further SYNs (a broken route looks the same to a client)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.2", port))
        listener.listen(0)
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.2", port))
            fillers.append(filler)
        yield ("127.0.0.2", port)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@async_test
async def test_a_black_holed_first_address_does_not_use_up_the_connect_timeout() -> None:
    # RFC 8305: the next address starts 0.25 s later, alongside; sequential tries would wait
    # out the whole connect timeout on the first and fail.
    async with serving(lambda request: response(b"ok")) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with black_hole(port) as hole:
            resolver = resolving_to([hole, ("127.0.0.1", port)])
            async with FastHTTPTransport(resolver=resolver) as transport:
                await asyncio.sleep(0.1)  # let the fillers' handshakes fill the queue
                url = f"http://dual.test:{port}/"
                timeout = {"timeout": {"connect": 5.0}}
                body = await fetch(transport, "GET", url, extensions=timeout)
    assert body == b"ok"


@async_test
async def test_when_every_address_fails_the_last_error_is_raised() -> None:
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()  # nothing listens there now
    addresses = [("127.0.0.2", port), ("127.0.0.1", port)]
    async with FastHTTPTransport(resolver=resolving_to(addresses)) as transport:
        with pytest.raises(httpx.ConnectError):
            await send(transport, "GET", f"http://dual.test:{port}/")


def test_addresses_alternate_between_families_first_family_first() -> None:
    v6a, v6b = (socket.AF_INET6, ("::1", 1, 0, 0)), (socket.AF_INET6, ("::2", 1, 0, 0))
    v4a, v4b = (socket.AF_INET, ("10.0.0.1", 1)), (socket.AF_INET, ("10.0.0.2", 1))
    ordered = _connect._interleaved([v6a, v6b, v4a, v6a, v4b])
    assert ordered == [v6a, v4a, v6b, v4b]


def test_a_loop_still_running_in_another_thread_keeps_its_connections() -> None:
    # Two servers in threads sharing one gateway: the second loop's first request closed
    # the first loop's pool, aborting its sockets from the wrong thread; 7 of 8 streams
    # broke. The second loop is refused instead, and the first keeps working.
    transport = FastHTTPTransport()
    unreachable = httpx.Request("GET", "http://127.0.0.1:9/")
    other = asyncio.new_event_loop()
    runner = threading.Thread(target=other.run_forever, daemon=True)
    runner.start()
    try:
        first = asyncio.run_coroutine_threadsafe(transport.handle_async_request(unreachable), other)
        with pytest.raises(httpx.ConnectError):
            first.result(10)

        async def from_this_loop() -> None:
            await transport.handle_async_request(unreachable)

        with pytest.raises(RuntimeError, match="one gateway per event loop"):
            asyncio.run(from_this_loop())
        again = asyncio.run_coroutine_threadsafe(transport.handle_async_request(unreachable), other)
        with pytest.raises(httpx.ConnectError):
            again.result(10)
    finally:
        other.call_soon_threadsafe(other.stop)
        runner.join(5)
        other.close()
    # Once the other loop has stopped, a new loop takes the transport over, as before.
    with pytest.raises(httpx.ConnectError):
        asyncio.run(transport.handle_async_request(unreachable))
