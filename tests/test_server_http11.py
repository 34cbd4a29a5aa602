"""HTTP/1.1 as uvicorn speaks it, spoken by the gateway's own protocol.

``GatewayHttpProtocol`` replaces uvicorn's httptools protocol under ``uvicorn.Server``: these
tests hold it to the same HTTP/1.1 (request bodies, ``100 Continue``, response framing,
keep-alive, pipelining, flow control, failures, shutdown and the ASGI scope), over loopback
sockets next to uvicorn's own protocol where the two should agree byte for byte, and in this
process over a stand-in socket where a test needs to see the calls a socket would get.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from messages_mw.server import _BODY_HIGH_WATER, GatewayHttpProtocol

from .servers import serve, serving
from .test_server_protocol import (
    _address,
    _BodyRecorder,
    _connected,
    _feed_in_reads,
    _in_loop,
    _passes,
    _post_head,
    _read_response,
    _ReadingTransport,
    _until_closed,
)

# A request that ends a conversation: the server answers it and closes the connection.
_CLOSING = b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


def _normalised(received: bytes) -> bytes:
    """``received`` with what may differ between two servers (the date, request ids) blanked."""
    received = re.sub(rb"date: [^\r]*", b"date: -", received)
    return re.sub(rb"req_[0-9A-Za-z]+", b"req_-", received)


def _talk(url: str, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send ``parts`` on one connection (``pause`` seconds apart, so the server reads them
    separately), and return, normalised, all it answers before it closes the connection."""
    with socket.create_connection(_address(url), timeout=5) as sock:
        for index, part in enumerate(parts):
            if index and pause:
                time.sleep(pause)
            sock.sendall(part)
        return _normalised(_until_closed(sock, 5))


def _read_until(sock: socket.socket, marker: bytes, within: float = 5) -> bytes:
    """What the server sends until ``marker`` has come, on a connection that stays open."""
    sock.settimeout(within)
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {received!r}"
        received += chunk
    return received


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    """Decode a chunked body; return it and what follows the last chunk."""
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert data.startswith(b"\r\n"), data[:20]
            return body, data[2:]
        body += data[:size]
        assert data[size : size + 2] == b"\r\n", "a chunk not ended by CRLF"
        data = data[size + 2 :]


def _responses(data: bytes, bodiless: tuple[int, ...] = ()) -> list[tuple[bytes, bytes]]:
    """Split a connection's answers into (head, body) pairs, decoding chunked bodies; the
    answers at the ``bodiless`` positions (to HEAD requests) carry no body whatever the head."""
    answers = []
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"a head cut short: {head[:200]!r}"
        if len(answers) in bodiless or re.match(rb"HTTP/1.1 (1\d\d|204|304) ", head):
            body = b""
        elif b"\r\ntransfer-encoding: chunked" in head.lower():
            body, data = _dechunk(data)
        else:
            length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
            assert length is not None, head
            body, data = data[: int(length.group(1))], data[int(length.group(1)) :]
        answers.append((head, body))
    return answers


class _Probe:
    """What a request seen by ``_app`` leaves for the test to check, across threads."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] | None = None
        self.messages: list[dict[str, Any]] = []
        self.reached_wait = threading.Event()
        self.finished = threading.Event()
        self.finished_at = 0.0
        self.send_error: BaseException | None = None


# Requests that carry an ``x-probe`` header leave their scope (and more) here, by its value.
_probes: dict[str, _Probe] = {}

# Response headers a careless app could relay: each would split the head if sent as it is.
_INJECTIONS = [
    (b"x-relayed", b"a\r\nx-injected: 1"),
    (b"x-relayed", b"a\nx-injected: 1"),
    (b"x-relayed", b"a\rx-injected: 1"),
    (b"x-relayed\r\nx-injected", b"1"),
    (b"x-relayed", b"a\x00x-injected: 1"),  # no line break, but no header holds a NUL
    (b"x-relayed x-injected", b"1"),  # nor a space in its name
]


async def _read_body(receive: Any, probe: _Probe | None = None) -> bytes:
    body = b""
    while True:
        message = await receive()
        if probe is not None:
            probe.messages.append(message)
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _answer(send: Any, body: bytes, status: int = 200, headers: Any = ()) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The app both servers run: what it does depends on the path."""
    if scope["type"] != "http":
        return
    probe = _probes.get(dict(scope["headers"]).get(b"x-probe", b"").decode())
    if probe is not None:
        probe.scope = {**scope, "headers": list(scope["headers"])}
    path = scope["path"]
    if path == "/echo":
        await _answer(send, await _read_body(receive, probe))
    elif path == "/digest":  # a body read late, so it piles up in the server first
        await asyncio.sleep(0.2)
        body = await _read_body(receive)
        await _answer(send, b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode()))
    elif path == "/ignore-body":  # an answer (a 413, say) given without reading the body
        await asyncio.sleep(0.3)
        await _answer(send, b"too large", status=413)
    elif path == "/deny":
        await _answer(send, b"no", status=401)
    elif path == "/stream":  # no content-length: sent chunked
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"hello", b"", b" world"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path.startswith("/status/"):
        status = int(path.removeprefix("/status/"))
        await send({"type": "http.response.start", "status": status, "headers": [(b"etag", b"1")]})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/close":
        await _answer(send, b"bye", headers=[(b"connection", b"Keep-Alive, Close")])
    elif path == "/raise":
        raise RuntimeError("the app failed before answering")
    elif path == "/return":
        return
    elif path.startswith("/raise-mid"):
        headers = [] if path.endswith("chunked") else [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        raise RuntimeError("the app failed mid-body")
    elif path.startswith("/inject/"):
        header = _INJECTIONS[int(path.removeprefix("/inject/"))]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [header]})
        except BaseException as exc:
            assert probe is not None
            probe.send_error = exc
            raise
        await send({"type": "http.response.body", "body": b"relayed"})
    elif path == "/slow":  # later requests of a pipeline would finish first, if run at once
        delay = int(scope["query_string"] or b"0")
        body = await _read_body(receive)
        await asyncio.sleep(delay * 0.03)
        await _answer(send, b"%s %s" % (scope["query_string"], body))
    elif path == "/wait-disconnect":
        assert probe is not None
        await _read_body(receive, probe)
        probe.reached_wait.set()
        probe.messages.append(await receive())
        probe.finished_at = time.monotonic()
        probe.finished.set()
    else:
        await _answer(send, b"hello")


class _Servers(NamedTuple):
    plain: str  # uvicorn's own httptools protocol
    gateway: str  # GatewayHttpProtocol


@pytest.fixture(scope="module")
def servers() -> Iterator[_Servers]:
    with (
        serve(_app, http="httptools") as plain,
        serve(_app, http=GatewayHttpProtocol) as gateway,
    ):
        yield _Servers(plain, gateway)


def _on_both(servers: _Servers, *parts: bytes, pause: float = 0.0) -> bytes:
    """The conversation with each server; asserts they answered the same, returns it."""
    expected = _talk(servers.plain, *parts, pause=pause)
    assert _talk(servers.gateway, *parts, pause=pause) == expected
    return expected


# 1. Request bodies


def test_a_chunked_request_body_reaches_the_app_whole(servers: _Servers) -> None:
    head = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    # Chunks in separate reads, one with an extension, and a trailer at the end.
    chunks = [b"5\r\nhello\r\n", b"6;ext=1\r\n world\r\n", b"1\r\n!\r\n", b"0\r\nx-t: 1\r\n\r\n"]
    answer = _on_both(servers, head, *chunks, _CLOSING, pause=0.02)
    assert [body for _, body in _responses(answer)] == [b"hello world!", b"hello"]


# 2. Expect: 100-continue

_EXPECTING = b"POST %s HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n%s\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize("http", ["httptools", "gateway"])
def test_100_continue_is_sent_when_the_app_reads_the_body(servers: _Servers, http: str) -> None:
    # A client that waits for the interim answer before it sends the body, as curl does.
    url = servers.plain if http == "httptools" else servers.gateway
    with socket.create_connection(_address(url), timeout=5) as sock:
        sock.sendall(_EXPECTING % (b"/echo", b"connection: close\r\n"))
        received = b""
        while len(received) < len(_CONTINUE):
            chunk = sock.recv(65536)
            assert chunk, "closed before 100 Continue"
            received += chunk
        assert received == _CONTINUE
        sock.sendall(b"hello")
        received += _until_closed(sock, 5)
    answers = _responses(_normalised(received))
    assert [head.split(b"\r\n")[0] for head, _ in answers] == [
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 200 OK",
    ]
    assert answers[1][1] == b"hello"


def test_100_continue_is_not_sent_when_the_app_answers_without_reading(
    servers: _Servers,
) -> None:
    # The client learns it need not send the body at all.
    answer = _on_both(servers, _EXPECTING % (b"/deny", b"connection: close\r\n"))
    assert b"100 Continue" not in answer
    [(head, body)] = _responses(answer)
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and body == b"no"


def test_the_exchange_after_100_continue_is_uvicorns_own(servers: _Servers) -> None:
    # Head, then body once the 100 has had time to go out, then the next request.
    answer = _on_both(servers, _EXPECTING % (b"/echo", b""), b"hello", _CLOSING, pause=0.1)
    assert answer.count(_CONTINUE) == 1 and answer.startswith(_CONTINUE)


def test_an_http_1_0_client_expecting_100_continue_gets_no_interim_answer(
    servers: _Servers,
) -> None:
    # RFC 9110 10.1.1: a server MUST ignore the expectation in an HTTP/1.0 request, whose
    # client knows no 1xx and reads "100 Continue" as its answer. uvicorn's protocol sends it.
    request = b"POST /echo HTTP/1.0\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    answer = _talk(servers.gateway, request, b"hello", pause=0.1)
    [(head, body)] = _responses(answer)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"hello"


# 3. Responses without bodies


def test_head_requests_get_the_head_and_no_body(servers: _Servers) -> None:
    answer = _on_both(
        servers,
        b"HEAD /hello HTTP/1.1\r\nhost: x\r\n\r\n",  # content-length from the app, kept
        b"HEAD /stream HTTP/1.1\r\nhost: x\r\n\r\n",  # no length: not made chunked for HEAD
        _CLOSING,
    )
    assert answer == (
        b"HTTP/1.1 200 OK\r\ndate: -\r\nserver: uvicorn\r\ncontent-type: text/plain\r\n"
        b"content-length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ndate: -\r\nserver: uvicorn\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ndate: -\r\nserver: uvicorn\r\ncontent-type: text/plain\r\n"
        b"content-length: 5\r\nconnection: close\r\n\r\nhello"
    )


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_get_no_transfer_encoding(servers: _Servers, status: int) -> None:
    request = b"GET /status/%d HTTP/1.1\r\nhost: x\r\n\r\n" % status
    answer = _on_both(servers, request, _CLOSING)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"transfer-encoding" not in head.lower()
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), "bytes between the head and the next answer"


# 4. Framing chosen by the server, and connection: close from the app


def test_a_response_without_a_length_is_sent_chunked_and_decodes(servers: _Servers) -> None:
    answer = _on_both(servers, b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n", _CLOSING)
    (head, body), closing = _responses(answer)
    assert b"\r\ntransfer-encoding: chunked" in head
    # The empty body message in the middle must not end the chunked body early.
    assert body == b"hello world"
    assert closing[1] == b"hello"


def test_connection_close_from_the_app_closes_after_its_answer(servers: _Servers) -> None:
    # The request behind it is never answered: the connection closes first.
    answer = _on_both(
        servers,
        b"GET /close HTTP/1.1\r\nhost: x\r\n\r\nGET /hello HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    [(head, body)] = _responses(answer)
    assert b"\r\nconnection: Keep-Alive, Close" in head
    assert head.count(b"connection:") == 1, "a second connection header was added"
    assert body == b"bye"


# 5. HTTP/1.0


@pytest.mark.parametrize("keep_alive", [b"", b"connection: keep-alive\r\n"])
def test_http_1_0_requests_are_answered_and_the_connection_closed(
    servers: _Servers, keep_alive: bytes
) -> None:
    # Even one asking for keep-alive: uvicorn keeps no HTTP/1.0 connection open.
    request = b"GET /hello HTTP/1.0\r\nhost: x\r\n%s\r\nGET /hello HTTP/1.0\r\n\r\n" % keep_alive
    answer = _on_both(servers, request)
    [(head, body)] = _responses(answer)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\nconnection: close") and body == b"hello"


# 6. Pipelining


def test_pipelined_requests_are_answered_in_order_each_whole(servers: _Servers) -> None:
    # The first takes longest: answered concurrently, the later ones would overtake it.
    requests = b"".join(
        b"POST /slow?%d HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nb%02d" % (delay, delay)
        for delay in (5, 3, 0, 4, 1)
    )
    answer = _on_both(servers, requests + b"HEAD /hello HTTP/1.1\r\nhost: x\r\n\r\n" + _CLOSING)
    bodies = [body for _, body in _responses(answer, bodiless=(5,))]
    assert bodies == [b"5 b05", b"3 b03", b"0 b00", b"4 b04", b"1 b01", b"", b"hello"]


# 7. Keep-alive


def test_an_idle_keep_alive_connection_is_closed_after_timeout_keep_alive() -> None:
    with (
        serve(_app, http=GatewayHttpProtocol, timeout_keep_alive=1) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        sock.sendall(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _read_response(sock).endswith(b"\r\n\r\nhello")
        answered = time.monotonic()
        assert _until_closed(sock, 5) == b""
        idle = time.monotonic() - answered
    # uvicorn closes at 1 s sharp; the protocol's timer ticks every quarter of the limit.
    assert 0.9 <= idle <= 1.6, f"closed after {idle:.2f} s idle"


def test_a_body_answered_early_and_never_sent_counts_as_keep_alive_idle() -> None:
    # A 401 to "Expect: 100-continue" tells the client it need not send the body; one that
    # then sends nothing is idle, and must not hold the connection for the 60 s a stalled
    # body gets.
    with (
        serve(_app, http=GatewayHttpProtocol, timeout_keep_alive=1) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        sock.sendall(_EXPECTING % (b"/deny", b""))
        assert _read_response(sock).startswith(b"HTTP/1.1 401 ")
        answered = time.monotonic()
        assert _until_closed(sock, 5) == b""
        idle = time.monotonic() - answered
    assert idle <= 1.6, f"closed after {idle:.2f} s idle"


def test_a_connection_in_use_is_not_closed_by_the_keep_alive_limit() -> None:
    async def slow_stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(int(scope["query_string"] or b"0")):
            await asyncio.sleep(0.3)
            await send({"type": "http.response.body", "body": b"tick", "more_body": True})
        await send({"type": "http.response.body", "body": b"done"})

    with (
        serve(slow_stream, http=GatewayHttpProtocol, timeout_keep_alive=1) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        # A response taking 1.5 s, longer than the limit, goes out whole ...
        sock.sendall(b"GET /?5 HTTP/1.1\r\nhost: x\r\n\r\n")
        [(_, body)] = _responses(_read_until(sock, b"0\r\n\r\n"))
        assert body == b"tick" * 5 + b"done"
        # ... and requests coming more often than the limit keep the connection open.
        for _ in range(2):
            time.sleep(0.6)
            sock.sendall(b"GET /?0 HTTP/1.1\r\nhost: x\r\n\r\n")
            [(head, body)] = _responses(_read_until(sock, b"0\r\n\r\n"))
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"done"


# 8. Graceful shutdown


@pytest.mark.parametrize("http", ["httptools", GatewayHttpProtocol], ids=["uvicorn", "gateway"])
def test_a_response_streaming_at_shutdown_is_finished_first(http: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/quick":
            await _answer(send, b"hello")
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(5):
            await send({"type": "http.response.body", "body": b"part%d" % index, "more_body": True})
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})

    with (
        serving(app, http=http, lifespan="off") as served,
        socket.create_connection(_address(served.url), timeout=5) as idle,
        socket.create_connection(_address(served.url), timeout=5) as busy,
    ):
        idle.sendall(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _read_response(idle).endswith(b"hello")
        busy.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        received = _read_until(busy, b"part0")
        served.server.should_exit = True
        received += _until_closed(busy, 5)  # closed after the stream, not cut short
        # The idle connection is closed at once, not left to its keep-alive limit (5 s).
        assert _until_closed(idle, 2) == b""
    assert not served.thread.is_alive(), "the server did not finish its shutdown"
    [(head, body)] = _responses(received)
    assert b"connection: close" not in head  # the head left before the shutdown began
    assert body == b"part0part1part2part3part4"


@pytest.mark.parametrize("http", ["httptools", GatewayHttpProtocol], ids=["uvicorn", "gateway"])
def test_pipelined_requests_received_before_shutdown_are_all_answered(http: Any) -> None:
    # uvicorn marks the newest request to close the connection, so every request it has
    # received is answered: a client cannot tell whether an unanswered POST was acted on.
    requests = (
        b"POST /slow?10 HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nA"
        b"POST /slow?0 HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nB"
        b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    with (
        serving(_app, http=http, lifespan="off") as served,
        socket.create_connection(_address(served.url), timeout=5) as sock,
    ):
        sock.sendall(requests)
        time.sleep(0.1)  # all three received, the first still being answered
        served.server.should_exit = True
        answer = _until_closed(sock, 5)
    assert not served.thread.is_alive(), "the server did not finish its shutdown"
    assert [body for _, body in _responses(answer)] == [b"10 A", b"0 B", b"hello"]


# 9. Write backpressure


@_in_loop
async def test_sends_wait_while_the_socket_cannot_take_more() -> None:
    progress: list[str] = []
    go = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        progress.append("start")
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        progress.append("a")
        await go.wait()
        await send({"type": "http.response.body", "body": b"b", "more_body": True})
        progress.append("b")
        await send({"type": "http.response.body", "body": b""})
        progress.append("end")

    protocol, transport = _connected(app)
    protocol.pause_writing()  # the socket's buffer is full before the app answers
    protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await _passes()
    assert progress == [] and transport.writes == []
    protocol.resume_writing()
    await _passes()
    assert progress == ["start", "a"]
    written = b"".join(b"".join(write) for write in transport.writes)
    assert written == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n"
    protocol.pause_writing()  # full again, mid-stream
    go.set()
    await _passes()
    assert progress == ["start", "a"], "the app wrote on into a full socket"
    writes_before = len(transport.writes)
    protocol.resume_writing()
    await _passes()
    assert progress == ["start", "a", "b", "end"]
    assert b"".join(b"".join(w) for w in transport.writes[writes_before:]) == b"1\r\nb\r\n0\r\n\r\n"


@_in_loop
async def test_a_send_waiting_for_the_socket_returns_when_the_client_leaves() -> None:
    sent: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        sent.append("start")
        await send({"type": "http.response.body", "body": b"a"})
        sent.append("body")
        sent.append((await receive())["type"])

    protocol, transport = _connected(app)
    protocol.pause_writing()
    protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await _passes()
    assert sent == []
    protocol.connection_lost(None)
    await _passes()
    # The sends return (there is no one to write to), and the app learns the client left.
    assert sent == ["start", "body", "http.disconnect"]
    assert transport.writes == []


# 10. Apps that fail


@pytest.mark.parametrize("path", [b"/raise", b"/return"])
def test_an_app_failing_before_it_answers_gets_a_500_envelope(
    servers: _Servers, path: bytes
) -> None:
    # The request behind it goes unanswered: the connection closes after the 500.
    request = b"GET %s HTTP/1.1\r\nhost: x\r\n\r\nGET /hello HTTP/1.1\r\nhost: x\r\n\r\n" % path
    with socket.create_connection(_address(servers.gateway), timeout=5) as sock:
        sock.sendall(request)
        answer = _until_closed(sock, 5)
    [(head, payload)] = _responses(answer)
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"\r\ncontent-type: application/json\r\n" in head
    assert b"\r\nconnection: close" in head
    error = json.loads(payload)
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert error["error"]["message"]
    assert re.fullmatch(r"req_[0-9A-Za-z]{24}", error["request_id"])
    assert b"\r\nrequest-id: " + error["request_id"].encode() + b"\r\n" in head + b"\r\n"


@pytest.mark.parametrize("framing", [b"", b"-chunked"], ids=["content-length", "chunked"])
def test_an_app_failing_mid_body_has_the_connection_closed(
    servers: _Servers, framing: bytes
) -> None:
    # The body is cut short and the connection closed: the client sees a broken response,
    # never a complete one, and no request behind it is answered.
    request = b"GET /raise-mid%s HTTP/1.1\r\nhost: x\r\n\r\n" % framing
    answer = _on_both(servers, request + b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == (b"3\r\nabc\r\n" if framing else b"abc")


# 11. Header injection


@pytest.mark.parametrize(
    "case", range(len(_INJECTIONS)), ids=["crlf", "lf", "cr", "name", "nul", "space in name"]
)
def test_a_malformed_response_header_never_reaches_the_wire(servers: _Servers, case: int) -> None:
    probe = _probes[f"inject{case}"] = _Probe()
    request = b"GET /inject/%d HTTP/1.1\r\nhost: x\r\nx-probe: inject%d\r\n\r\n" % (case, case)
    with socket.create_connection(_address(servers.gateway), timeout=5) as sock:
        sock.sendall(request + _CLOSING)
        answer = _until_closed(sock, 5)
    assert isinstance(probe.send_error, RuntimeError), "the app's send took the header"
    assert b"x-injected" not in answer
    # Refused before anything was kept, so the app's failure gets its 500 envelope.
    assert answer.startswith(b"HTTP/1.1 500 "), answer


# 12. Upgrades


@pytest.mark.parametrize(
    ("request_bytes", "body"),
    [
        (
            b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
            b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",  # a masked text frame
            b"",
        ),
        (
            b"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\n"
            b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n"
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 preface
            b"",
        ),
        # What `curl --http2 -d abc http://...` sends: the body is the HTTP/1.1 request's, the
        # HTTP/2 frames come after it (RFC 9113, 3.2), and a refused upgrade must keep it.
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n"
            b"content-length: 3\r\n\r\nabcPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"abc",
        ),
    ],
    ids=["websocket", "h2c", "h2c with a body"],
)
def test_an_upgrade_is_answered_as_http_1_1_and_the_connection_closed(
    servers: _Servers, request_bytes: bytes, body: bytes
) -> None:
    with socket.create_connection(_address(servers.gateway), timeout=5) as sock:
        sock.sendall(request_bytes)
        # Closed by the server (b"" before our timeout): the bytes after the request are in
        # the protocol the client asked for, which is not spoken here.
        answer = _until_closed(sock, 5)
    [(head, received)] = _responses(answer)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), "a 101, or the trailing bytes parsed"
    assert b"\r\nconnection: close" in head
    assert received == body


# 13. A client leaving while the app waits


@pytest.mark.parametrize("http", ["httptools", "gateway"])
def test_a_client_leaving_after_its_body_is_a_prompt_disconnect(
    servers: _Servers, http: str
) -> None:
    token = f"leave-{http}"
    probe = _probes[token] = _Probe()
    url = servers.plain if http == "httptools" else servers.gateway
    with socket.create_connection(_address(url), timeout=5) as sock:
        sock.sendall(
            b"POST /wait-disconnect HTTP/1.1\r\nhost: x\r\nx-probe: %s\r\n"
            b"content-length: 2\r\n\r\n{}" % token.encode()
        )
        assert probe.reached_wait.wait(5), "the app never read the body"
        time.sleep(0.05)  # the app is in receive() by now
    left = time.monotonic()
    assert probe.finished.wait(5), "the app was never told the client left"
    assert probe.messages[-1] == {"type": "http.disconnect"}
    assert probe.finished_at - left < 0.5
    assert b"".join(m.get("body", b"") for m in probe.messages) == b"{}"


# 14. Large bodies and read flow control


class _FlowTransport(_ReadingTransport):
    """A stand-in socket that records pause_reading/resume_reading and holds them to
    alternate, as uvicorn's FlowControl does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        assert not self.paused, "pause_reading while paused"
        self.calls.append("pause")
        super().pause_reading()

    def resume_reading(self) -> None:
        assert self.paused, "resume_reading while reading"
        self.calls.append("resume")
        super().resume_reading()


def _connected_flow(app: Any) -> tuple[GatewayHttpProtocol, _FlowTransport]:
    """``_connected``, over a socket stand-in that checks read flow control."""
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _FlowTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def _feed(protocol: GatewayHttpProtocol, transport: _FlowTransport, data: bytes) -> None:
    """Feed ``data`` 64 KB a read, as a socket would: no read while reading is paused."""
    read = 65536
    for offset in range(0, len(data), read):
        for _ in range(1000):
            if not transport.paused:
                break
            await asyncio.sleep(0.001)
        else:
            raise AssertionError(f"reading stayed paused at byte {offset:,} of {len(data):,}")
        protocol.data_received(data[offset : offset + read])
        if offset % (4 * read) == 0:
            await asyncio.sleep(0)


@_in_loop
async def test_a_body_over_1_mb_in_many_reads_reaches_the_app_whole() -> None:
    messages: list[dict[str, Any]] = []
    go = asyncio.Event()
    answered = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await go.wait()  # a slow app: more than 1 MB piles up first
        while True:
            messages.append(await receive())
            await asyncio.sleep(0.001)
            if not messages[-1]["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        answered.set()

    protocol, transport = _connected_flow(app)
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    protocol.data_received(_post_head(len(body)))
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, go.set)
    await _feed(protocol, transport, body)
    await asyncio.wait_for(answered.wait(), 5)
    assert b"".join(m["body"] for m in messages) == body
    assert transport.calls and transport.calls[0] == "pause", "reading never paused"
    assert transport.calls.count("pause") == transport.calls.count("resume")
    assert not transport.paused
    # Each message is what piled up while reading ran: never much past the high-water mark.
    assert max(len(m["body"]) for m in messages) <= _BODY_HIGH_WATER + 65536


@_in_loop
async def test_tiny_chunks_waiting_for_a_slow_app_hold_no_more_memory_than_large_ones() -> None:
    # Held chunk by chunk, 2-byte chunks cost ~56 bytes of memory each: counting their bytes
    # alone, reading paused only at ~25 MB held per connection. Memory is what is bounded.
    go = asyncio.Event()
    app = _BodyRecorder()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await go.wait()
        await app(scope, receive, send)

    protocol, transport = _connected_flow(slow)
    protocol.data_received(b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    chunks = 0
    tracemalloc.start()
    try:
        while not transport.paused and chunks < 600_000:
            protocol.data_received(b"2\r\nab\r\n" * 1000)
            chunks += 1000
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert transport.paused, f"still reading after {chunks:,} 2-byte chunks"
    assert held <= 2 * _BODY_HIGH_WATER, f"{held:,} bytes held for {chunks * 2:,} of body"
    go.set()
    await _feed(protocol, transport, b"0\r\n\r\n")
    await asyncio.wait_for(app.answered.wait(), 5)
    assert b"".join(m["body"] for m in app.messages) == b"ab" * chunks


@_in_loop
async def test_an_answer_given_without_reading_a_large_body_leaves_reading_on() -> None:
    # A 413 for a body too large, say: the rest of the body must still be read (and dropped)
    # to reach the next request, as uvicorn does when its response completes.
    go = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/big":
            await go.wait()
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = _connected_flow(app)
    body = b"x" * 3_000_000
    protocol.data_received(
        b"POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    fed = 0
    while not transport.paused:
        protocol.data_received(body[fed : fed + 65536])
        fed += 65536
    go.set()
    await _passes()
    assert transport.writes, "the app did not answer"
    assert not transport.paused, "reading left paused after the answer: the connection hangs"
    await _feed(protocol, transport, body[fed:] + b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n")
    await _passes()
    assert len(transport.writes) == 2


async def _head_in_two_reads(split: int) -> None:
    app = _BodyRecorder()
    protocol, transport = _connected_flow(app)
    body = b"x" * 200_000
    head = _post_head(len(body))
    protocol.data_received(head[:-split])
    protocol.data_received(head[-split:] + body)
    assert not transport.closed, b"".join(transport.writes[0])[:60]
    await asyncio.wait_for(app.answered.wait(), 5)
    assert b"".join(m["body"] for m in app.messages) == body
    assert transport.writes[0][0].startswith(b"HTTP/1.1 200 OK\r\n")


async def _body_in_reads_before_the_app_runs(reads: int) -> list[dict[str, Any]]:
    app = _BodyRecorder()
    protocol, _ = _connected_flow(app)
    body = bytes(range(256)) * 1000
    protocol.data_received(_post_head(len(body)))
    piece = -(-len(body) // reads)
    for at in range(0, len(body), piece):  # no loop pass between reads: the app waits
        protocol.data_received(body[at : at + piece])
    await asyncio.wait_for(app.answered.wait(), 5)
    assert b"".join(m["body"] for m in app.messages) == body
    return app.messages


@pytest.mark.parametrize("reads", [1, 2, 5])
def test_reads_that_pile_up_reach_the_app_as_one_bytes_message(reads: int) -> None:
    # ASGI wants bytes; several reads the app had no chance to take are joined once.
    messages = asyncio.run(_body_in_reads_before_the_app_runs(reads))
    assert [(type(m["body"]), m["more_body"]) for m in messages] == [(bytes, False)]


@pytest.mark.parametrize("split", [1, 2, 3])
def test_a_head_whose_blank_line_spans_two_reads_is_not_taken_for_431(split: int) -> None:
    # The blank line ending a head can straddle two reads (TCP segments end anywhere); the
    # head must still be counted up to it, not with the body behind it in the second read.
    asyncio.run(_head_in_two_reads(split))


@_in_loop
async def test_timeout_keep_alive_0_closes_after_each_answer_without_spinning() -> None:
    # uvicorn accepts 0 (its timer closes the connection on the next loop pass): the
    # connection's timer must not turn into a busy loop while an answer takes its time.
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(0.2)
        await _answer(send, b"hello")

    config = uvicorn.Config(app, lifespan="off", log_level="warning", timeout_keep_alive=0)
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _FlowTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    cpu = time.process_time()
    protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.sleep(0.3)
    used = time.process_time() - cpu
    assert transport.writes and transport.closed
    assert used < 0.1, f"{used:.2f} s of CPU for a 0.2 s wait"


def _sent_and_received(url: str, data: bytes, within: float) -> bytes:
    """Send ``data`` (from a thread, as the server may stop reading it) and return what comes
    back until the server closes, or until nothing has come for ``within`` seconds."""
    received = b""
    with socket.create_connection(_address(url), timeout=within) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(data)

        sending = threading.Thread(target=send)
        sending.start()
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
        sock.shutdown(socket.SHUT_RDWR)  # wakes a send the server never took
        sending.join(5)
    return _normalised(received)


@pytest.mark.parametrize("path", [b"/digest", b"/ignore-body"])
def test_a_body_over_1_mb_over_loopback_is_uvicorns_exchange(
    servers: _Servers, path: bytes
) -> None:
    # /digest reads it whole, late; /ignore-body answers (413) without reading it, and the
    # request behind it must still be read and answered.
    body = bytes(range(256)) * (3 * 1024 * 1024 // 256)
    request = b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (path, len(body))
    expected = _sent_and_received(servers.plain, request + body + _CLOSING, 3)
    answers = [payload for _, payload in _responses(expected)]
    if path == b"/digest":
        assert answers[0] == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    assert answers[1] == b"hello"
    assert _sent_and_received(servers.gateway, request + body + _CLOSING, 3) == expected


# 15. The ASGI scope


_SCOPED_REQUESTS = [
    b"GET /a%20b/c%2Fd/caf%C3%A9?x=1&y=%20&z HTTP/1.1\r\nHost: example.com\r\n"
    b"X-Mixed-Case: Value\r\nx-dup: 1\r\nX-Dup: 2\r\nAccept: */*\r\n",
    b"POST /v1/messages?beta=true HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n",
    b"GET http://example.com:8080/abs%41/p?q=1 HTTP/1.1\r\nhost: example.com:8080\r\n",
    b"GET /frag?x=1#y HTTP/1.1\r\nhost: x\r\n",
    b"OPTIONS * HTTP/1.1\r\nhost: x\r\n",
    b"GET //double//slash? HTTP/1.1\r\nhost: x\r\n",
    b"HEAD /head HTTP/1.0\r\n",
    b"DELETE /v1/files/file_1 HTTP/1.1\r\nhost: x\r\n",
]


@pytest.mark.parametrize("root_path", ["", "/api"])
def test_the_scope_is_uvicorns_own(root_path: str) -> None:
    scopes: dict[str, list[dict[str, Any]]] = {}
    with (
        serve(_app, http="httptools", root_path=root_path) as plain,
        serve(_app, http=GatewayHttpProtocol, root_path=root_path) as gateway,
    ):
        for name, url in (("plain", plain), ("gateway", gateway)):
            scopes[name] = []
            for index, request in enumerate(_SCOPED_REQUESTS):
                token = f"scope-{root_path}-{name}-{index}"
                probe = _probes[token] = _Probe()
                with socket.create_connection(_address(url), timeout=5) as sock:
                    client = sock.getsockname()
                    body = b"{}" if b"content-length: 2" in request else b""
                    sock.sendall(request + b"x-probe: %s\r\n\r\n%s" % (token.encode(), body))
                    _read_response(sock)
                scope = probe.scope
                assert scope is not None, request
                # The addresses differ between the servers: each must be the right one.
                assert scope["server"] == _address(url) and scope["client"] == client
                scope["server"] = scope["client"] = "-"
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"x-probe"]
                scopes[name].append(scope)
    for expected, got in zip(scopes["plain"], scopes["gateway"], strict=True):
        assert got == expected
    first = scopes["gateway"][0]
    assert first["path"] == root_path + "/a b/c/d/café"
    assert first["raw_path"] == root_path.encode() + b"/a%20b/c%2Fd/caf%C3%A9"
    assert first["headers"][:3] == [
        (b"host", b"example.com"),
        (b"x-mixed-case", b"Value"),
        (b"x-dup", b"1"),
    ]


# Any split of the bytes on the wire


class _EchoDigest:
    """Answers each request with its path and the SHA-256 of its body, once read whole."""

    def __init__(self) -> None:
        self.answered = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await _read_body(receive)
        answer = scope["path"].encode() + b" " + hashlib.sha256(body).hexdigest().encode()
        headers = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
        self.answered += 1


def _wire_request(index: int, body: bytes, chunked: bool, pad: int) -> bytes:
    head = b"POST /r%d HTTP/1.1\r\nhost: x\r\nx-pad: %s\r\n" % (index, b"p" * pad)
    if not chunked:
        return head + b"content-length: %d\r\n\r\n" % len(body) + body
    chunks = [body[at : at + 700] for at in range(0, len(body), 700)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return head + b"transfer-encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"


def _answers(written: bytes) -> list[tuple[bytes, bytes]]:
    """(status line, body) of each content-length response in ``written``."""
    answers = []
    while written:
        head, _, rest = written.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        answers.append((head.split(b"\r\n", 1)[0], rest[:length]))
        written = rest[length:]
    return answers


# Small bodies, and agent turns larger than the head limit (which must never count them).
_BODIES = st.one_of(st.binary(max_size=3000), st.integers(65_000, 80_000).map(b"b".__mul__))
_REQUESTS = st.lists(st.tuples(_BODIES, st.booleans(), st.integers(0, 200)), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    requests=_REQUESTS,
    cuts=st.lists(st.integers(0, 400_000), max_size=12),
    # Cuts inside a head's closing blank line: (which request's, after how many of its bytes).
    blank_line_cuts=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3)), max_size=3),
    data=st.data(),
)
def test_any_split_of_pipelined_requests_is_answered_whole_and_in_order(
    requests: list[tuple[bytes, bool, int]],
    cuts: list[int],
    blank_line_cuts: list[tuple[int, int]],
    data: st.DataObject,
) -> None:
    # Reads end wherever TCP segments do: inside a request line, a header, the blank line
    # that ends a head, a chunk-size line or a body. None of it may change what the app
    # gets, draw a 400 or 431, or leave reading paused.
    wires = [_wire_request(i, *request) for i, request in enumerate(requests)]
    starts = list(itertools.accumulate((len(w) for w in wires), initial=0))
    for index, offset in blank_line_cuts:
        if index < len(wires):
            cuts.append(starts[index] + wires[index].index(b"\r\n\r\n") + offset)
    wire = b"".join(wires)
    points = sorted({0, len(wire), *(cut for cut in cuts if cut < len(wire))})
    reads = [wire[start:end] for start, end in itertools.pairwise(points)]
    yields = data.draw(st.lists(st.booleans(), min_size=len(reads), max_size=len(reads)))

    transport = asyncio.run(_feed_in_reads(_EchoDigest(), reads, yields, len(requests)))
    expected = [
        (b"HTTP/1.1 200 OK", b"/r%d %s" % (i, hashlib.sha256(body).hexdigest().encode()))
        for i, (body, _, _) in enumerate(requests)
    ]
    written = b"".join(b"".join(parts) for parts in transport.writes)
    assert _answers(written) == expected
    assert not transport.closed and not transport.paused
