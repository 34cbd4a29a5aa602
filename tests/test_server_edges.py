"""Edge cases of the served protocol that a second review found: blank lines and trailers
around the head limit, trailers and the scope, the slow-client clock, apps failing after
their answer, and behaviour checked right that no other test holds (refused upgrades,
queued requests of a client that leaves, early answers in a pipeline)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import socket
import time
import tracemalloc
from typing import Any

import pytest
import uvicorn
from hypothesis import example, given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from messages_mw._server_exchange import _checked_names
from messages_mw.server import _MAX_HEAD_BYTES, GatewayHttpProtocol

from .servers import serve, serving
from .test_server_protocol import (
    _address,
    _connected,
    _feed_in_reads,
    _in_loop,
    _passes,
    _read_response,
    _ReadingTransport,
    _until_closed,
    _written,
)


class _Recorder:
    """Reads each request's body, keeps its scope's headers as they were on arrival and as
    they are once the body is read, and answers with the path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.headers_at_start: list[list[tuple[bytes, bytes]]] = []
        self.headers_after_body: list[list[tuple[bytes, bytes]]] = []
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        self.scopes.append(scope)
        self.headers_at_start.append(list(scope["headers"]))
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message["more_body"]:
                break
        self.headers_after_body.append(list(scope["headers"]))
        answer = scope["path"].encode()
        headers = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


# 1. The 64 KB head limit


_BIG_HEAD = b"GET /big HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 200_000 + b"\r\n\r\n"


async def _big_head_after(before: bytes, first_request: bytes) -> tuple[_Recorder, bytes]:
    app = _Recorder()
    protocol, transport = _connected(app)
    if first_request:
        protocol.data_received(first_request)
        await _passes()
    protocol.data_received(before + _BIG_HEAD)  # one read, as uvloop's 256 KB reads allow
    await _passes()
    return app, _written(transport)


def test_control_the_same_head_over_64_kb_without_blank_lines_gets_a_431() -> None:
    # CONTROL (passes) for the two tests below: only the blank lines differ.
    app, written = asyncio.run(_big_head_after(b"", b""))
    assert "/big" not in app.paths and written.startswith(b"HTTP/1.1 431 ")


@_in_loop
async def test_blank_lines_before_a_request_line_do_not_hide_a_head_over_64_kb() -> None:
    # llhttp skips empty lines before a request line (RFC 9112 2.2): counted as the head's
    # blank line, "\r\n\r\n" + a head of any size (up to one read, 256 KB) would count as
    # 4 bytes and reach the app.
    app, written = await _big_head_after(b"\r\n\r\n", b"")
    assert "/big" not in app.paths, "a 200 KB head reached the app"
    assert written.startswith(b"HTTP/1.1 431 ")


@_in_loop
async def test_a_blank_line_after_a_request_does_not_hide_the_next_head_over_64_kb() -> None:
    # A bodiless request's last 3 bytes ("\n\r\n") must not be kept as the start of a
    # blank line: a next read starting "\r\n" would be taken for the end of a head split
    # across reads, and the whole head behind it would go uncounted.
    app, written = await _big_head_after(b"\r\n", b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n")
    assert app.paths == ["/first"], "a 200 KB head reached the app"
    assert b"HTTP/1.1 431 " in written


@pytest.mark.parametrize(
    "line",
    [b"x-trailer: " + b"t" * 1000 + b"\r\n", b"t" * 1024],
    ids=["many trailer lines", "one endless trailer line"],
)
def test_trailers_cannot_grow_memory_past_the_head_limit(line: bytes) -> None:
    # A chunked body's trailer section is a second head, arriving while a body is being
    # read: httptools buffers a trailer value until its line ends, and every trailer line
    # used to reach the running request's scope["headers"]. Uncounted, a client could grow
    # the server's memory without bound (here 8 MB of trailers).
    asyncio.run(_trailers(line if line.endswith(b"\r\n") else b"x-trailer: " + line, line))


async def _trailers(first: bytes, line: bytes) -> None:
    app = _Recorder()
    protocol, transport = _connected(app)
    protocol.data_received(
        b"POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
    )
    await _passes()
    protocol.data_received(first)
    read = line * 64  # 64 KB a read
    sent = 0
    tracing_already = tracemalloc.is_tracing()
    if not tracing_already:
        tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        while sent < 8 * 1024 * 1024 and not transport.closed:
            protocol.data_received(read)
            sent += len(read)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not tracing_already:
            tracemalloc.stop()
    kept = sum(len(name) + len(value) for name, value in app.scopes[0]["headers"])
    protocol.connection_lost(None)
    await _passes()
    assert kept <= _MAX_HEAD_BYTES, f"{kept:,} bytes of trailers kept in scope['headers']"
    assert grown < 2 * 1024 * 1024, f"memory grew by {grown:,} bytes for {sent:,} of trailers"


# 2. The request's headers


@_in_loop
async def test_trailers_do_not_rewrite_the_scope_headers_of_a_running_request() -> None:
    # httptools reports a chunked body's trailer fields through on_header, as headers. In
    # uvicorn's protocol they were added to scope["headers"] of a request whose app was
    # already running, after middleware may have checked them (an x-api-key, say).
    app = _Recorder()
    protocol, transport = _connected(app)
    protocol.data_received(
        b"POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    await _passes()
    protocol.data_received(b"0\r\nx-api-key: sk-injected\r\n\r\n")
    await _passes()
    assert _written(transport).endswith(b"\r\n\r\n/t"), "not answered"
    assert app.headers_after_body == app.headers_at_start


# 3. The slow-client clock


class _BodyImpatientProtocol(GatewayHttpProtocol):
    """A body may pause for 0.3 s (checked every 0.075 s)."""

    body_idle_seconds = 0.3


@_in_loop
async def test_a_body_the_server_has_not_asked_for_yet_is_not_a_stalled_body() -> None:
    # A client sending "Expect: 100-continue" waits for the 100 before it sends the
    # body (RFC 9110 10.1.1), and the 100 goes out only when the app first calls receive().
    # An app that takes longer than body_idle_seconds to get there (queued on a limiter, an
    # auth call, ...) must not find its connection closed as a stalled body: the server is
    # the one holding things up.
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(1.0)  # three body limits before it asks for the body
        except asyncio.CancelledError:
            return  # the test is over
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message["more_body"]:
                break
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    protocol = _BodyImpatientProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _ReadingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(
        b"POST /x HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    )
    try:
        for _ in range(300):  # the client waits for the 100
            if transport.writes or transport.closed:
                break
            await asyncio.sleep(0.01)
        assert not transport.closed, "closed while the client waited for 100 Continue"
        assert _written(transport) == b"HTTP/1.1 100 Continue\r\n\r\n"
        protocol.data_received(b"hello")
        for _ in range(100):
            if _written(transport).endswith(b"hello"):
                break
            await asyncio.sleep(0.01)
        assert _written(transport).endswith(b"\r\n\r\nhello")
    finally:
        protocol.connection_lost(None)


# 4. Apps that fail after answering


class _DroppingTransport(_ReadingTransport):
    """Drops writes after close, as asyncio's and uvloop's transports do."""

    def write(self, data: bytes) -> None:
        if not self.closed:
            super().write(data)

    def writelines(self, chunks: Any) -> None:
        if not self.closed:
            super().writelines(chunks)


@_in_loop
async def test_an_app_failing_after_its_answer_does_not_cut_off_the_next_request() -> None:
    # The next request on the connection starts as soon as an answer is whole, while that
    # app may still be running: Starlette runs a response's BackgroundTask inside the ASGI
    # call, after the body. If that work raises, closing the connection (as uvicorn's
    # protocol did) would cut off the next request's answer mid-stream.
    failing = asyncio.Event()
    streaming = asyncio.Event()
    finish = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/a":
            headers = [(b"content-length", b"1")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"a"})
            await failing.wait()  # the background task, after the answer
            raise RuntimeError("the background task failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"b1", "more_body": True})
        streaming.set()
        await finish.wait()
        await send({"type": "http.response.body", "body": b"b2"})

    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _DroppingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
    await _passes()
    protocol.data_received(b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n")  # /a answered: kept alive
    await asyncio.wait_for(streaming.wait(), 5)
    failing.set()
    await _passes()
    finish.set()
    await _passes()
    assert _written(transport).endswith(
        b"transfer-encoding: chunked\r\n\r\n2\r\nb1\r\n2\r\nb2\r\n0\r\n\r\n"
    ), "the second answer was cut off"
    assert not transport.closed


# 5. Behaviour checked and found right, held here


@_in_loop
async def test_a_refused_upgrades_body_in_pieces_is_read_and_what_follows_dropped() -> None:
    # The h2c body arrives in pieces, the HTTP/2 preface in the same read as its end.
    app = _Recorder()
    bodies: list[bytes] = []

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def taking() -> dict[str, Any]:
            message = await receive()
            bodies.append(message.get("body", b""))
            return message

        await app(scope, taking, send)

    protocol, transport = _connected(recording)
    head = (
        b"POST /up HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n"
        b"content-length: 3\r\n\r\n"
    )
    for read in (head + b"a", b"b", b"cPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00"):
        protocol.data_received(read)
        await _passes()
    assert b"".join(bodies) == b"abc"
    assert _written(transport).endswith(b"connection: close\r\n\r\n/up")
    assert transport.closed and app.paths == ["/up"]


@_in_loop
async def test_a_client_leaving_with_requests_queued_starts_none_of_them() -> None:
    # Requests queued behind one being answered never reach the app, and leave no
    # task behind for uvicorn's graceful shutdown to wait for.
    go = asyncio.Event()
    started: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.append(scope["path"])
        await go.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    protocol, transport = _connected(app)
    protocol.data_received(
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n"
        b"POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhello"
    )
    await _passes()
    assert transport.paused
    protocol.connection_lost(None)
    go.set()
    await _passes(10)
    assert started == ["/a"]
    assert protocol.server_state.tasks == set()
    assert _written(transport) == b""


class _Mixed:
    """Answers each request as its mode says: after reading the body whole ("read"), after
    its first message ("partial"), or without reading it ("early", a 413 say), then with
    the path and what it read."""

    def __init__(self, modes: list[str]) -> None:
        self.modes = modes
        self.answered = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        index = int(scope["path"][2:])
        mode = self.modes[index]
        body = b""
        if mode == "read":
            while True:
                message = await receive()
                body += message["body"]
                await asyncio.sleep(0)
                if not message["more_body"]:
                    break
            answer = b"%d %s" % (index, hashlib.sha256(body).hexdigest().encode())
        else:
            if mode == "partial":
                await receive()
            answer = b"%d early" % index
        headers = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
        self.answered += 1


@settings(max_examples=40, deadline=None)
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from([0, 10, 3000, 70_000, 1_200_000]),
            st.booleans(),
            st.sampled_from(["read", "partial", "early"]),
        ),
        min_size=1,
        max_size=4,
    ),
    cuts=st.lists(st.integers(0, 2_600_000), max_size=20),
    data=st.data(),
)
def test_pipelined_requests_answered_before_their_bodies_are_read_keep_the_connection_going(
    requests: list[tuple[int, bool, str]], cuts: list[int], data: st.DataObject
) -> None:
    # Bodies over the high-water mark, answered early, in part or whole, pipelined and
    # split anywhere: every request answered in order, reading never left paused, no body
    # byte handed to the wrong request.
    wires = []
    for index, (size, chunked, _) in enumerate(requests):
        body = bytes([65 + index]) * size
        head = b"POST /r%d HTTP/1.1\r\nhost: x\r\n" % index
        if chunked:
            framed = b"".join(
                b"%x\r\n%s\r\n" % (len(body[at : at + 50_000]), body[at : at + 50_000])
                for at in range(0, len(body), 50_000)
            )
            wires.append(head + b"transfer-encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n")
        else:
            wires.append(head + b"content-length: %d\r\n\r\n" % size + body)
    wire = b"".join(wires)
    points = sorted({0, len(wire), *(cut for cut in cuts if cut < len(wire))})
    reads = [wire[start:end] for start, end in itertools.pairwise(points)]
    yields = data.draw(st.lists(st.booleans(), min_size=len(reads), max_size=len(reads)))
    modes = [mode for _, _, mode in requests]

    transport = asyncio.run(_feed_in_reads(_Mixed(modes), reads, yields, len(requests)))
    expected = b""
    for index, (size, _, mode) in enumerate(requests):
        digest = hashlib.sha256(bytes([65 + index]) * size).hexdigest().encode()
        answer = b"%d %s" % (index, digest) if mode == "read" else b"%d early" % index
        expected += b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer)
    assert _written(transport) == expected
    assert not transport.closed and not transport.paused


# 6. Limits measured from the right moment, and answers without bodies


class _Stalling:
    """Starts a streamed answer, then sends more (which waits while the socket is full)."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        self.done.set()


class _QuickProtocol(GatewayHttpProtocol):
    body_idle_seconds = 0.2


@_in_loop
async def test_a_client_that_stops_reading_the_answer_is_closed() -> None:
    # Its socket buffer full, the app's next send waits for room that never comes: without
    # a limit the stream (and its upstream request) would be kept for nobody.
    app = _Stalling()
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    protocol = _QuickProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _ReadingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.pause_writing()
    protocol.data_received(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
    for _ in range(100):
        if transport.closed:
            break
        await asyncio.sleep(0.02)
    assert transport.closed, "a client reading nothing kept its connection"
    protocol.connection_lost(None)  # as the loop reports the close
    await asyncio.wait_for(app.done.wait(), 1)


@_in_loop
async def test_the_keep_alive_limit_after_an_early_answer_counts_from_the_answer() -> None:
    # A client whose upload paused (say for a slow disk) and then got a 413 or 401 must have
    # the time to read it: its idle time starts with the answer, not with its last bytes.
    async def deny(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": b"no"})

    protocol, transport = _connected(deny)
    protocol.data_received(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
    await _passes()
    assert transport.writes and not transport.closed
    answered = protocol.loop.time()
    keep_alive = protocol._keep_alive_seconds
    protocol._body_quiet_since = answered - 3 * keep_alive  # the upload paused long before
    protocol._body_reads_seen = protocol._body_reads
    assert not protocol._too_slow(answered + keep_alive / 2)
    assert protocol._too_slow(answered + keep_alive + 0.1)


@_in_loop
async def test_an_absolute_form_url_without_a_path_is_the_root() -> None:
    app = _Recorder()
    protocol, transport = _connected(app)
    protocol.data_received(b"GET http://example.com HTTP/1.1\r\nhost: example.com\r\n\r\n")
    await _passes()
    assert app.paths == ["/"] and _written(transport).startswith(b"HTTP/1.1 200 ")


@_in_loop
async def test_a_304_with_a_content_length_is_sent_without_a_body() -> None:
    # Its Content-Length is the representation's it stands for (RFC 9110 8.6), not a body's:
    # uvicorn raised "Response content shorter than Content-Length" and closed.
    async def not_modified(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"1234"), (b"etag", b'"v1"')]
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = _connected(not_modified)
    protocol.data_received(b"GET /cached HTTP/1.1\r\nhost: x\r\n\r\n")
    await _passes()
    assert _written(transport) == (
        b'HTTP/1.1 304 Not Modified\r\ncontent-length: 1234\r\netag: "v1"\r\n\r\n'
    )
    assert not transport.closed


def test_empty_lines_after_an_answer_leave_the_connection_idle() -> None:
    # llhttp skips empty lines between requests: a client sending one after an answer has
    # begun no head, and keeps the keep-alive limit (here 1 s), not a head's 30 s.
    with (
        serve(_Recorder(), http=GatewayHttpProtocol, timeout_keep_alive=1) as url,
        socket.create_connection(_address(url), timeout=5) as sock,
    ):
        sock.sendall(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _read_response(sock).endswith(b"/first")
        answered = time.monotonic()
        sock.sendall(b"\r\n")
        assert _until_closed(sock, 5) == b""
        idle = time.monotonic() - answered
    assert idle <= 1.6, f"closed after {idle:.2f} s idle"


# The response head's checks run through translate tables and a cache of header names; they
# must refuse exactly what RFC 9110 refuses, as the plain checks did.

_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@given(name=st.binary(max_size=12) | st.sampled_from([b"Content-Length", b"x-mw-model"]))
@example(name=b"")  # a token has one character at least: uvicorn --header ':x' gives none
@settings(max_examples=400, deadline=None)
def test_a_response_header_name_is_refused_exactly_when_it_is_no_token(name: bytes) -> None:
    is_token = bool(name) and not name.lower().translate(None, _TOKEN)
    for _ in range(2):  # the second time from the cache, or refused again
        try:
            lowered, _kind = _checked_names[name]
        except RuntimeError:
            assert not is_token
        else:
            assert is_token and lowered == name.lower()


@given(value=st.binary(max_size=40))
@settings(max_examples=400, deadline=None)
def test_a_response_head_with_a_control_character_is_refused(value: bytes) -> None:
    status, head = asyncio.run(_answer_to_one_request(_answering_with_header(value)))
    bad = value.translate(None, b"\t" + bytes(range(32, 127)) + bytes(range(128, 256)))
    if bad:
        assert status == 500, (value, head)
    else:
        assert status == 200 and head.endswith(b"\r\nx-value: " + value)


def _answering_with_header(value: bytes) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"0"), (b"x-value", value)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    return app


async def _answer_to_one_request(app: Any) -> tuple[int, bytes]:
    protocol, transport = _connected(app)
    protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await _passes(10)
    head = _written(transport).partition(b"\r\n\r\n")[0]
    return int(head.split(b" ", 2)[1]), head


# The lingering close after a refusal (a second review): it lasts its time, and not longer.

_BAD_HEAD = b"GET / HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n"


class _ShortHeadProtocol(GatewayHttpProtocol):
    """The head limit cut from 30 s to 0.5 s: a stream outlasting it, as streams outlast 30 s."""

    head_seconds = 0.5


def _streaming_for(seconds: float) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})

    return app


def _seconds_from_fin_to_reset(stream_seconds: float, protocol: type[GatewayHttpProtocol]) -> float:
    """A client pipelines a bad request behind a stream, reads the stream and the refusal up
    to the server's FIN, then goes on sending, as one still writing its pipelined requests
    would: how long until the server's socket is gone (a reset answers the bytes)."""
    with (
        serve(_streaming_for(stream_seconds), http=protocol) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        sock.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        sock.settimeout(10)
        answer = sock.recv(65536)
        sock.sendall(_BAD_HEAD)
        while chunk := sock.recv(65536):
            answer += chunk
        fin = time.monotonic()
        assert b"\r\n0\r\n\r\nHTTP/1.1 400 " in answer
        try:
            while time.monotonic() - fin < 3:
                sock.send(b"x")
                time.sleep(0.02)
        except OSError:  # ECONNRESET or EPIPE: the server's socket is gone
            return time.monotonic() - fin
        return 3.0


def test_control_a_refused_connection_lingers_its_two_seconds() -> None:
    # CONTROL for the test below: a short stream, the served head limit.
    assert 1.5 < _seconds_from_fin_to_reset(0.2, GatewayHttpProtocol) < 2.8


def test_a_stream_longer_than_the_head_limit_does_not_cut_the_linger_short() -> None:
    # The bad head began while the stream went out: once the answer was done, the watchdog
    # took it for a head older than its limit and closed on its next tick, resetting a
    # client still sending.
    assert _seconds_from_fin_to_reset(1.2, _ShortHeadProtocol) > 1.5


def test_a_refused_client_that_never_reads_does_not_keep_its_connection() -> None:
    # close() waits for unread output to drain: for a client keeping its window shut, the
    # connection stayed for good, and uvicorn's graceful shutdown waited on it without end.
    big = b"y" * (8 * 1024 * 1024)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"%d" % len(big))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": big})

    # Closed after its 2 s linger, then dropped once output has waited the body limit.
    assert _open_and_shut_down_after(app, _ImpatientBodyProtocol, 4.0, _BAD_HEAD) == (0, False)


class _HalfClosingTransport(_ReadingTransport):
    """A stand-in socket that can half-close, recording how the connection ends."""

    def __init__(self) -> None:
        super().__init__()
        self.endings: list[str] = []

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.endings.append("write_eof")

    def close(self) -> None:
        self.endings.append("close")
        self.closed = True

    def abort(self) -> None:
        self.endings.append("abort")
        self.closed = True


@_in_loop
async def test_the_linger_ends_with_a_close_that_sends_what_is_buffered() -> None:
    # abort() at the linger's end would drop output a slow client had not read yet (a
    # reset discards the send buffer); close() sends it, and only a client that reads none
    # of it for the body limit is dropped.
    config = uvicorn.Config(_Recorder(), lifespan="off", log_level="warning")
    config.load()
    protocol = _ImpatientBodyProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _HalfClosingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("messages_mw.server._LINGER_SECONDS", 0.1)
        protocol.data_received(_BAD_HEAD)
    assert _written(transport).startswith(b"HTTP/1.1 400 ")
    assert transport.endings == ["write_eof"]
    await asyncio.sleep(0.15)  # the linger's 0.1 s
    assert transport.endings == ["write_eof", "close"]
    await asyncio.sleep(0.55)  # and the body limit's 0.5 s
    assert transport.endings == ["write_eof", "close", "abort"]
    protocol.connection_lost(None)


class _ImpatientBodyProtocol(GatewayHttpProtocol):
    body_idle_seconds = 0.5


def test_a_stream_nobody_reads_is_dropped_after_the_body_limit() -> None:
    # The same close() in the watchdog's "client stopped reading" rule.
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(200):  # 13 MB, far past what the socket buffers hold
            await send({"type": "http.response.body", "body": b"z" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    assert _open_and_shut_down_after(app, _ImpatientBodyProtocol, 3.0, b"") == (0, False)


def _open_and_shut_down_after(
    app: Any, protocol: type[GatewayHttpProtocol], seconds: float, after_request: bytes
) -> tuple[int, bool]:
    """Connections still open ``seconds`` after a client that reads nothing sent a request
    (and ``after_request``), and whether a graceful shutdown then hung for 3 s."""
    with serving(app, http=protocol) as served:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(_address(served.url))
        with sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n" + after_request)
            time.sleep(seconds)
            still_open = len(served.server.server_state.connections)
            served.server.should_exit = True
            served.thread.join(3)
            shutdown_hangs = served.thread.is_alive()
        served.thread.join(10)
    return still_open, shutdown_hangs


def test_requests_over_the_concurrency_limit_get_a_503_in_the_envelope() -> None:
    # uvicorn's limit_concurrency counts connections too: one held open fills a limit of 1.
    import json
    import threading

    release = threading.Event()

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with serve(slow_app, http=GatewayHttpProtocol, limit_concurrency=1) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as first:
            first.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            time.sleep(0.2)  # the first request is being served, and holds the one place
            with socket.create_connection((host, int(port))) as second:
                second.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                second.settimeout(5)
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    piece = second.recv(65536)
                    if not piece:
                        break
                    answer += piece
            release.set()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nrequest-id: req_" in head.lower()
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert error["request_id"].startswith("req_")


def test_a_long_request_line_pipelined_behind_another_is_refused_with_431() -> None:
    # The head limit counts the first head of a read; one pipelined behind it in that read
    # was not counted, so a request line of 70,000 bytes got through.
    import re

    with serve(_Recorder(), http=GatewayHttpProtocol) as url:
        host, port = url.removeprefix("http://").split(":")
        small = b"GET /api/hello HTTP/1.1\r\nhost: x\r\n\r\n"
        big = b"GET /v1/models?x=" + b"a" * 70_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n"
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(small + big)
            sock.settimeout(5)
            answers = b""
            while len(re.findall(rb"HTTP/1\.1 \d{3} ", answers)) < 2:
                piece = sock.recv(65536)
                if not piece:
                    break
                answers += piece
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"200", b"431"]
