"""The HTTP protocol ``messages-mw serve`` runs: uvicorn's bytes, heads sent with bodies."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import anthropic
import pytest
import uvicorn
from uvicorn.server import ServerState

from messages_mw import Gateway, GatewayConfig, MockConfig, RequestContext
from messages_mw.server import GatewayHttpProtocol

from .servers import serve, serving

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class _RecordingTransport:
    """Records each call a socket write would be, so a test sees how many syscalls there were."""

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append([data])

    def writelines(self, chunks: Any) -> None:
        self.writes.append(list(chunks))

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0  # every write is taken at once

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def can_write_eof(self) -> bool:
        return False  # so a refused connection closes at once, not after its client


def _in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test body on a fresh event loop (the suite has no async plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class _ReadingTransport(_RecordingTransport):
    """A socket stand-in that also takes uvicorn's flow control (bodies over 64 KB pause it)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class _BodyRecorder:
    """An ASGI app that reads its request's body message by message, then answers 200."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.answered = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.messages.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        self.answered.set()


@contextlib.contextmanager
def _uvicorn_logs_seen_by(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Let ``caplog`` see the ``uvicorn`` loggers' records: uvicorn's logging config stops
    them from reaching the root logger, where caplog listens (and loading a config undoes
    this)."""
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        uvicorn_logger.removeHandler(caplog.handler)


def _connected(app: Any) -> tuple[GatewayHttpProtocol, _ReadingTransport]:
    """The served protocol on one connection, in this process, over a stand-in socket."""
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _ReadingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def _passes(count: int = 5) -> None:
    """Let the loop run ``count`` passes (the protocol's tasks and its call_soon)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def _feed_in_reads(
    app: Any, reads: list[bytes], yields: list[bool], answers: int
) -> _ReadingTransport:
    """Feed ``reads`` to the served protocol, one connection, as a socket would (nothing while
    reading is paused), letting ``app`` run after each read ``yields`` marks; return once
    ``app.answered`` reaches ``answers``, or after a thousand loop passes."""
    protocol, transport = _connected(app)
    for read, let_the_app_run in zip(reads, yields, strict=True):
        for _ in range(1000):  # a socket delivers nothing while reading is paused
            if not transport.paused:
                break
            await asyncio.sleep(0)
        assert not transport.paused, "reading stayed paused"
        protocol.data_received(read)
        if let_the_app_run:
            await asyncio.sleep(0)
    for _ in range(1000):
        if app.answered == answers:
            break
        await asyncio.sleep(0)
    return transport


def _post_head(length: int) -> bytes:
    return b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % length


class _Answering:
    """An ASGI app that answers with ``messages`` (``"pause"`` waits for ``go``), then
    returns; the head is ``_HEAD`` unless the first message says otherwise."""

    def __init__(self, *messages: dict[str, Any] | str) -> None:
        self.messages = messages or ({"type": "http.response.body", "body": b"{}"},)
        self.go = asyncio.Event()
        self.done = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        for message in self.messages:
            if message == "pause":
                await self.go.wait()
            else:
                await send(message)
        self.done.set()


async def _answered(app: Any) -> _ReadingTransport:
    """``app``'s answer to a GET, written to a stand-in socket; returns once the app is done."""
    protocol, transport = _connected(app)
    protocol.data_received(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.wait_for(app.done.wait(), 5)
    return transport


@_in_loop
async def test_a_head_and_its_body_leave_in_one_write() -> None:
    transport = await _answered(_Answering())
    assert transport.writes == [[_HEAD + b"{}"]]
    await asyncio.sleep(0)
    assert transport.writes == [[_HEAD + b"{}"]], "the held head was sent twice"


def test_a_configured_default_header_that_could_split_the_head_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A host's uvicorn config may add headers to every answer; one holding CR LF (or whose
    # name is no token) would inject lines into every head, or fail every answer, the 500
    # included. Each is left out, said once; the good ones go out with every answer.
    def defaults() -> list[tuple[bytes, bytes]]:
        # A fresh list each time, as uvicorn makes one each second for its date header.
        return [
            (b"date", b"Tue, 24 Nov 2026 22:00:00 GMT"),
            (b"x-evil", b"1\r\nset-cookie: a=b"),
            (b"x bad", b"2"),
            (b"", b"3"),  # uvicorn --header ':3'
            (b"x-good", b"4\tok"),
        ]

    async def three_answers() -> _ReadingTransport:
        protocol, transport = _connected(_Answering())
        with _uvicorn_logs_seen_by(caplog):  # after the config: loading it resets them
            for _ in range(3):
                protocol.server_state.default_headers = defaults()
                app = _Answering()
                protocol.app = app
                protocol.data_received(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
                await asyncio.wait_for(app.done.wait(), 5)
                await _passes()
        return transport

    transport = asyncio.run(three_answers())
    head = b"HTTP/1.1 200 OK\r\ndate: Tue, 24 Nov 2026 22:00:00 GMT\r\nx-good: 4\tok\r\n"
    assert _written(transport) == (head + _HEAD.removeprefix(b"HTTP/1.1 200 OK\r\n") + b"{}") * 3
    told = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert told == [
        "Default headers [b'x-evil', b'x bad', b''] left out: a name that is no token, "
        "or a value with a control character."
    ]


@_in_loop
async def test_a_large_body_goes_behind_the_head_in_one_writev() -> None:
    body = b"x" * 100_000
    app = _Answering()
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n"

    async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"100000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        app.done.set()

    protocol, transport = _connected(answer)
    protocol.data_received(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.wait_for(app.done.wait(), 5)
    assert transport.writes == [[head, body]]


@_in_loop
async def test_a_head_without_a_body_leaves_on_the_next_loop_pass() -> None:
    app = _Answering("pause", {"type": "http.response.body", "body": b"{}"})
    protocol, transport = _connected(app)
    protocol.data_received(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
    for _ in range(3):
        await asyncio.sleep(0)
    assert transport.writes == [[_HEAD]]
    app.go.set()
    await asyncio.wait_for(app.done.wait(), 5)
    assert transport.writes == [[_HEAD], [b"{}"]]


@_in_loop
async def test_closing_sends_a_held_head_first() -> None:
    # An app that stops after its head: the connection is closed, the head sent before that.
    transport = await _answered(_Answering({"type": "http.response.body", "more_body": True}))
    await asyncio.sleep(0)
    assert transport.writes == [[_HEAD]] and transport.closed


@_in_loop
async def test_body_writes_are_not_held() -> None:
    app = _Answering(
        {"type": "http.response.body", "body": b"{", "more_body": True},
        "pause",
        {"type": "http.response.body", "body": b"}"},
    )
    protocol, transport = _connected(app)
    protocol.data_received(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
    for _ in range(3):
        await asyncio.sleep(0)
    app.go.set()
    await asyncio.wait_for(app.done.wait(), 5)
    assert transport.writes == [[_HEAD + b"{"], [b"}"]]


@_in_loop
async def test_a_body_read_at_once_reaches_the_app_without_being_copied() -> None:
    # uvicorn copied each body twice (into a bytearray, then into bytes for the app): for an
    # agent turn, fresh buffers that cost page faults on every request.
    app = _BodyRecorder()
    protocol, transport = _connected(app)
    body = b"x" * 4_000_000
    request = _post_head(len(body)) + body
    tracing_already = tracemalloc.is_tracing()  # -X tracemalloc: leave it on, as it was
    if not tracing_already:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    try:
        protocol.data_received(request)  # the parser's own bytes for the body: one copy
        await asyncio.wait_for(app.answered.wait(), 5)
        _, peak = tracemalloc.get_traced_memory()
        peak -= before
    finally:
        if not tracing_already:
            tracemalloc.stop()
    assert [(m["body"], m["more_body"]) for m in app.messages] == [(body, False)]
    assert type(app.messages[0]["body"]) is bytes
    assert peak < 1.5 * len(body), f"{peak:,} bytes at peak for a {len(body):,}-byte body"
    assert transport.paused is False, "reading was left paused after the app took the body"


@_in_loop
async def test_body_chunks_reach_the_app_whole_and_in_order() -> None:
    app = _BodyRecorder()
    protocol, _ = _connected(app)
    chunks = [b"a" * 10, b"b" * 70_000, b"c" * 5]
    body = b"".join(chunks)
    # Three reads before the app runs: they are joined into its one message.
    protocol.data_received(_post_head(len(body)) + chunks[0])
    protocol.data_received(chunks[1])
    protocol.data_received(chunks[2])
    await asyncio.wait_for(app.answered.wait(), 5)
    assert [(m["body"], m["more_body"]) for m in app.messages] == [(body, False)]
    # Reads with the app reading in between: a message per read, in order.
    app.answered.clear()
    app.messages.clear()
    protocol.data_received(_post_head(len(body)) + chunks[0])
    for chunk in chunks[1:]:
        await asyncio.sleep(0.01)
        protocol.data_received(chunk)
    await asyncio.wait_for(app.answered.wait(), 5)
    assert b"".join(m["body"] for m in app.messages) == body
    assert [m["more_body"] for m in app.messages] == [True, True, False]
    assert all(type(m["body"]) is bytes for m in app.messages)


def _demo() -> Gateway:
    return Gateway(GatewayConfig(provider="mock", usage_log=False))


def test_the_sdk_gets_answers_and_streams_through_the_protocol() -> None:
    with serve(_demo(), http=GatewayHttpProtocol) as url:
        client = anthropic.Anthropic(base_url=url, api_key="demo", max_retries=0)
        message = client.messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.type == "message" and message.content
        with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join(stream.text_stream)
        assert text and stream.get_final_message().stop_reason == "end_turn"
        with pytest.raises(anthropic.NotFoundError):
            client.get("/v1/nowhere", cast_to=object)


def _exchange(url: str, requests: bytes, closing_request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(requests + closing_request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    # Only the date and request ids may differ between two servers.
    received = re.sub(rb"date: [^\r]*", b"date: -", received)
    return re.sub(rb"req_[0-9A-Za-z]+", b"req_-", received)


@pytest.mark.parametrize(
    "request_line",
    [
        b"HEAD /api/hello HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 2\r\n\r\n{}",
    ],
    ids=["head", "models", "bad body"],
)
def test_the_bytes_on_the_wire_are_uvicorns_own(request_line: bytes) -> None:
    closing = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    with (
        serve(_demo(), http="httptools") as plain,
        serve(_demo(), http=GatewayHttpProtocol) as joining,
    ):
        expected = _exchange(plain, request_line * 2, closing)
        assert expected.count(b"HTTP/1.1 ") == 3
        assert _exchange(joining, request_line * 2, closing) == expected


def test_an_http_1_0_client_gets_its_stream_unchunked_ending_with_the_connection() -> None:
    # RFC 9112 6.1: a server must not send Transfer-Encoding to an HTTP/1.0 client.
    body = b'{"model":"m","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
    request = (
        b"POST /v1/messages HTTP/1.0\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    with (
        serve(_demo(), http=GatewayHttpProtocol) as url,
        socket.create_connection(_address(url), timeout=5) as sock,
    ):
        sock.sendall(request)
        answer = _until_closed(sock, within=5)
    head, _, stream = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert b"\r\nconnection: close" in head
    assert stream.startswith(b"event: message_start\n"), stream[:40]
    assert stream.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n'), stream[-80:]


def _until_closed(sock: socket.socket, within: float) -> bytes:
    """What the server sends before it closes the connection (within ``within`` seconds)."""
    sock.settimeout(within)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _read_response(sock: socket.socket) -> bytes:
    """One response with a content-length, read from a connection that stays open."""
    sock.settimeout(10)
    received = b""
    while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: (\d+)", head)
    assert length is not None, head
    while len(body) < int(length.group(1)) and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("whole", [False, True], ids=["arriving in pieces", "in one write"])
def test_a_head_over_64_kb_gets_a_431_not_the_servers_memory(whole: bool) -> None:
    start = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-pad: "
    # Just past the limit: a client still sending when the server closes would get a reset
    # instead of the answer.
    pad = b"a" * 70_000
    with (
        serve(_demo(), http=GatewayHttpProtocol) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        if whole:  # all of it in one read, which must not reach the app
            sock.sendall(start + pad + b"\r\n\r\n")
        else:
            sock.sendall(start)
            sock.sendall(pad)
        answer = _until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 431 ")
    head, payload = answer.split(b"\r\n\r\n", 1)
    error = json.loads(payload)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["request_id"].startswith("req_")
    # The header the SDKs read for the id, as on every other answer.
    assert b"\r\nrequest-id: " + error["request_id"].encode() + b"\r\n" in head


def test_a_client_leaving_pipelined_requests_is_noticed_by_the_one_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # uvicorn tells only the newest cycle (the queued request) that the client left: the
    # stream still running wrote on into the closed transport, logged a traceback and kept
    # its upstream request going for nobody.
    finished: list[RequestContext] = []
    config = GatewayConfig(provider="mock", usage_log=False, mock=MockConfig(tokens_per_second=20))
    gateway = Gateway(config, on_request_end=finished.append)
    body = (
        b'{"model":"m","max_tokens":400,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
    )
    stream = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    # The server's config is loaded by now: its logging setup would undo what caplog adds.
    with serve(gateway, http=GatewayHttpProtocol) as url, _uvicorn_logs_seen_by(caplog):
        with socket.create_connection(_address(url)) as sock:
            sock.sendall(stream + b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")  # the stream is under way
        deadline = time.monotonic() + 5
        while not finished and time.monotonic() < deadline:
            time.sleep(0.01)
    assert finished and finished[0].client_disconnected
    assert finished[0].path == "/v1/messages"
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []


def test_a_client_leaving_a_quiet_request_with_more_queued_behind_it_is_noticed() -> None:
    # Reading is paused while requests wait behind the one answered, so the close went
    # unseen: the quiet request ran to the upstream's read timeout, then the queued one was
    # sent upstream, and billed, for a client long gone.
    finished: list[RequestContext] = []
    config = GatewayConfig(provider="mock", usage_log=False, mock=MockConfig(latency_ms=6000))
    gateway = Gateway(config, on_request_end=finished.append)
    body = b'{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
    request = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    with serve(gateway, http=GatewayHttpProtocol) as url:
        with socket.create_connection(_address(url)) as sock:
            sock.sendall(request + request)
            time.sleep(0.3)  # both read: the first under way, the second queued
        left = time.monotonic()
        while not finished and time.monotonic() - left < 5:
            time.sleep(0.01)
        noticed_after = time.monotonic() - left
        time.sleep(0.5)
    assert finished and finished[0].client_disconnected
    assert noticed_after < 3  # the server's check period (1.25 s here), not the 6 s answer
    assert len(finished) == 1  # the queued request never ran


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nbad header\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\n\r\nhello",
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
    ],
    ids=["request line", "header", "length and chunked", "negative length"],
)
def test_unparseable_http_gets_the_error_envelope(request_bytes: bytes) -> None:
    # uvicorn answers these itself, in plain text; every answer of the gateway's is an
    # Anthropic error an SDK can read, with its request-id header.
    with (
        serve(_demo(), http=GatewayHttpProtocol) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        sock.sendall(request_bytes)
        answer = _until_closed(sock, 5)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"\r\ncontent-type: application/json\r\n" in head
    error = json.loads(payload)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"]
    assert b"\r\nrequest-id: " + error["request_id"].encode() + b"\r\n" in head


@pytest.mark.parametrize(
    ("second", "status"),
    [
        (b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 70_000, b"431"),
        (b"GET /v1/models HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n", b"400"),
        (
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"400",
        ),
    ],
    ids=["oversized head", "malformed head", "malformed chunked body"],
)
def test_a_bad_pipelined_request_is_refused_after_the_stream_before_it(
    second: bytes, status: bytes
) -> None:
    # Written while the previous answer still streams, the refusal would corrupt it; closing
    # instead would cut it short. The stream ends whole, then comes the refusal.
    stream, end, refusal = _sent_behind_a_stream(second).partition(b"\r\n0\r\n\r\n")
    assert stream.startswith(b"HTTP/1.1 200 ") and end, "the stream did not end whole"
    assert b"event: message_stop" in stream and b"HTTP/1.1 4" not in stream
    _assert_refusal(refusal, status)


def test_requests_queued_before_bad_bytes_are_answered_before_the_refusal() -> None:
    models = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n"
    answer = _sent_behind_a_stream(models + b"BAD\x01 / HTTP/1.1\r\n\r\n")
    _, end, rest = answer.partition(b"\r\n0\r\n\r\n")
    assert end, "the stream did not end whole"
    listing, _, after = rest.partition(b"\r\n\r\n")
    assert listing.startswith(b"HTTP/1.1 200 ")
    length_field = re.search(rb"\r\ncontent-length: (\d+)", listing)
    assert length_field is not None
    length = int(length_field.group(1))
    assert json.loads(after[:length])["data"]
    _assert_refusal(after[length:], b"400")


def _sent_behind_a_stream(second: bytes) -> bytes:
    """Everything the server sends on a connection where ``second`` follows, pipelined, a
    streaming request still being answered."""
    gateway = Gateway(
        GatewayConfig(provider="mock", usage_log=False, mock=MockConfig(tokens_per_second=20))
    )
    body = json.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 40,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    first = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    with (
        serve(gateway, http=GatewayHttpProtocol) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        sock.sendall(first)
        sock.settimeout(10)
        answer = b""
        while b"event: message_start" not in answer:  # the stream is under way
            chunk = sock.recv(65536)
            assert chunk, "the server closed before the stream began"
            answer += chunk
        assert b"event: message_stop" not in answer, "the stream ended before the next head"
        sock.sendall(second)
        return answer + _until_closed(sock, 10)


def _assert_refusal(answer: bytes, status: bytes) -> None:
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
    assert b"\r\nconnection: close\r\n" in head
    error = json.loads(payload)
    assert error["error"]["type"] == "invalid_request_error"
    assert b"\r\nrequest-id: " + error["request_id"].encode() + b"\r\n" in head + b"\r\n"


class _ImpatientProtocol(GatewayHttpProtocol):
    """The served protocol with its time limits cut from 30 s (head) and 60 s (body) to 0.5 s."""

    head_seconds = 0.5
    body_idle_seconds = 0.5


@pytest.mark.parametrize(
    "send",
    [
        lambda sock: None,  # connects and says nothing
        lambda sock: [(sock.sendall(b"GET"[i : i + 1]), time.sleep(0.1)) for i in range(3)],
        # a head in time, then a body trickled to a stop
        lambda sock: sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n{"
        ),
    ],
    ids=["silent", "trickled head", "stalled body"],
)
def test_slow_clients_are_closed_not_kept(send: Callable[[socket.socket], object]) -> None:
    # Each connection is a file descriptor: clients that send too slowly, or nothing, must
    # not be able to keep them until the server runs out.
    with (
        serve(_demo(), http=_ImpatientProtocol) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        send(sock)
        # Closed by the server (recv gives b""), not our own timeout (which raises): our 10 s
        # sit far from the 0.5 s limits, and far below the served limits (30 s and 60 s) that
        # a connection would run into if these were not applied.
        assert _until_closed(sock, 10) == b""
        # Requests that come in time are served as ever.
        assert b"200 OK" in _exchange(
            url, b"", b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )


class _BodyPatientProtocol(GatewayHttpProtocol):
    """Bodies may pause for 2 s, checked every 0.5 s."""

    body_idle_seconds = 2.0


@pytest.mark.parametrize("requests_before", [0, 1], ids=["first request", "kept alive"])
def test_a_body_pausing_less_than_the_limit_is_read_to_the_end(requests_before: int) -> None:
    # The read that ends a head often brings the body's first bytes (SDKs send them together):
    # the body's silence must count from then, not from the connection's start or from an
    # earlier request's, or the first check closes a connection well inside the limit.
    body = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    head = (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\ncontent-length: %d\r\n" % len(body)
    )
    with (
        serve(_demo(), http=_BodyPatientProtocol) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        for _ in range(requests_before):
            sock.sendall(head + b"\r\n" + body)
            assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(1.0)
        sock.sendall(head + b"connection: close\r\n\r\n" + body[:10])
        time.sleep(1.0)  # half the limit, and two checks
        sock.sendall(body[10:])
        assert _until_closed(sock, 10).startswith(b"HTTP/1.1 200 ")


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def test_messages_mw_serve_runs_the_gateways_protocol() -> None:
    from messages_mw import cli

    assert cli._http_protocol() is GatewayHttpProtocol


_SERVE_WITH_UVICORN_RECORDED = """
import gc, sys, uvicorn
from messages_mw import Gateway, cli, tuning
malloc_tuned = []
tuning.tune_malloc_for_serving = lambda: malloc_tuned.append(True) or True
served = []
cli.run_uvicorn = lambda app, workers, options: served.append(
    (type(app), gc.get_freeze_count(), gc.get_threshold()[0], bool(malloc_tuned))
) or 0
assert cli.main(["serve", "--demo", "--port", "1"]) == 0
app_type, frozen, young_threshold, tuned = served[0]
print(app_type is Gateway, frozen > 0, young_threshold == tuning.SERVING_GC_THRESHOLD, tuned)
"""


def test_messages_mw_serve_tunes_the_garbage_collector_and_malloc() -> None:
    # In a child process: the CLI configures logging and sets up this process's collector
    # and allocator.
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_WITH_UVICORN_RECORDED],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.splitlines()[-1] == "True True True True"


_CHUNKED_POST = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"


@_in_loop
async def test_a_body_breaking_while_its_own_answer_streams_closes_the_connection() -> None:
    # Its answer has begun: a 400 now would land inside it, and it cannot have two.
    app = _Answering("pause", {"type": "http.response.body", "body": b"{}"})
    protocol, transport = _connected(app)
    protocol.data_received(_CHUNKED_POST + b"2\r\n{}\r\n")
    await _passes()
    assert transport.writes == [[_HEAD]] and not transport.closed
    protocol.data_received(b"zz\r\n")
    assert transport.closed
    assert b"400" not in _written(transport)


@_in_loop
async def test_a_body_breaking_after_its_early_answer_gets_no_second_answer() -> None:
    # Answered early (a 401 before its chunked body had come), then the body breaks: a 400
    # now would be read as the answer to the client's next request.
    app = _Answering()
    protocol, transport = _connected(app)
    protocol.data_received(_CHUNKED_POST + b"2\r\n{}\r\n")
    await asyncio.wait_for(app.done.wait(), 5)
    await _passes()
    assert _written(transport) == _HEAD + b"{}" and not transport.closed
    protocol.data_received(b"zz\r\n")
    assert transport.closed
    assert _written(transport) == _HEAD + b"{}"


@_in_loop
async def test_a_refusal_waiting_behind_an_answer_survives_a_graceful_shutdown() -> None:
    # A graceful shutdown answers every request received: the refusal too.
    app = _Answering("pause", {"type": "http.response.body", "body": b"{}"})
    protocol, transport = _connected(app)
    protocol.data_received(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\nBAD\x01 / HTTP/1.1\r\n\r\n")
    await _passes()
    protocol.shutdown()
    assert not transport.closed
    app.go.set()
    await _passes()
    assert transport.closed
    answer, _, refusal = _written(transport).partition(_HEAD + b"{}")
    assert not answer and refusal.startswith(b"HTTP/1.1 400 "), refusal


@_in_loop
async def test_a_queued_request_whose_body_breaks_is_refused_after_the_answer_before_it() -> None:
    app = _Answering("pause", {"type": "http.response.body", "body": b"{}"})
    protocol, transport = _connected(app)
    protocol.data_received(
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n" + _CHUNKED_POST + b"2\r\n{}\r\nzz\r\n"
    )
    await _passes()
    protocol.data_received(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")  # dropped
    app.go.set()
    await _passes(10)
    assert transport.closed
    answer, _, refusal = _written(transport).partition(_HEAD + b"{}")
    assert not answer and refusal.startswith(b"HTTP/1.1 400 "), refusal
    assert refusal.count(b"HTTP/1.1 ") == 1
    error = json.loads(refusal.partition(b"\r\n\r\n")[2])
    assert error["error"]["type"] == "invalid_request_error"


def _written(transport: _RecordingTransport) -> bytes:
    return b"".join(b"".join(write) for write in transport.writes)


_STREAM_CHUNKS, _STREAM_CHUNK = 64, b"x" * 4096


async def _streaming(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(_STREAM_CHUNKS):
        await send({"type": "http.response.body", "body": _STREAM_CHUNK, "more_body": True})
        await asyncio.sleep(0.005)
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(
    ("bad", "after", "status"),
    [
        (b"GET / HTTP/1.1\r\nhost: x\r\nno colon\r\n\r\n", b"", b"400"),
        (
            b"GET / HTTP/1.1\r\nhost: x\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" * 2000,
            b"400",
        ),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 70_000, b"a" * 500_000, b"431"),
    ],
    ids=["nothing after", "more requests after", "a 570 KB head"],
)
def test_a_slow_client_still_sending_gets_the_stream_and_the_refusal_whole(
    bad: bytes, after: bytes, status: bytes
) -> None:
    # Closing a socket with input unread makes the kernel reset the connection, which
    # drops output not yet sent: a client with a small receive window, still sending
    # behind the refused request, would lose the end of the stream and the refusal.
    with serve(_streaming, http=GatewayHttpProtocol) as url:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow, far client
        sock.connect(_address(url))
        with sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
            sock.settimeout(10)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 ")
            sock.sendall(bad)
            time.sleep(0.1)  # the server has the bad bytes
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(after)  # as much as fits
            sock.settimeout(10)
            time.sleep(1.5)  # the server streams on into the buffers meanwhile
            while chunk := sock.recv(65536):
                answer += chunk
                time.sleep(0.001)
    assert b"\r\n0\r\n\r\nHTTP/1.1 " + status + b" " in answer


_BIG = 16 * 1024 * 1024  # far past what the socket buffers hold


async def _big_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % _BIG)],
        }
    )
    await send({"type": "http.response.body", "body": b"z" * _BIG})


def _reading_nothing(url: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(_address(url))
    return sock


@pytest.mark.parametrize(
    ("request_bytes", "shutdown_after"),
    [
        (b"GET /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", 3.0),
        (b"GET /big HTTP/1.0\r\nhost: x\r\n\r\n", 3.0),
        (b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n", 0.2),  # a shutdown closes it meanwhile
    ],
    ids=["connection close", "http/1.0", "shutdown"],
)
def test_an_answer_closed_after_but_never_read_is_dropped_all_the_same(
    request_bytes: bytes, shutdown_after: float
) -> None:
    # close() waits for the output to drain: the connection, and a graceful shutdown waiting
    # for it, stayed for good.
    with serving(_big_answer, http=_ImpatientProtocol) as served:
        with _reading_nothing(served.url) as sock:
            sock.sendall(request_bytes)
            time.sleep(shutdown_after)
            served.server.should_exit = True
            served.thread.join(5)  # ten times the body limit
            shutdown_hung = served.thread.is_alive()
        served.thread.join(10)
    assert not shutdown_hung


_ANSWER_SIZE = 24 * 1024 * 1024


async def _answer_24_mb(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """24 MB in one body message, from an app that is done with it at once."""
    headers = [(b"content-length", b"%d" % _ANSWER_SIZE)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"z" * _ANSWER_SIZE})


class _OneSecondIdle(GatewayHttpProtocol):
    body_idle_seconds = 1.0


@contextlib.contextmanager
def _asking_for_24_mb() -> Iterator[socket.socket]:
    """A connection that has asked a server (1 s of idle output allowed) for 24 MB."""
    with (
        serve(_answer_24_mb, http=_OneSecondIdle) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        sock.sendall(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        yield sock


def test_a_client_reading_slowly_but_steadily_gets_its_whole_answer() -> None:
    # Writing stays paused while a large body message drains; only bytes that do not move
    # say the client stopped reading. (It was cut off after about 8 of 24 MB.)
    received = 0
    with _asking_for_24_mb() as sock:
        head_and_body = _ANSWER_SIZE + len(b"HTTP/1.1 200 OK\r\n")
        while received < head_and_body and (data := sock.recv(65536)):
            received += len(data)
            time.sleep(0.02)
    assert received >= _ANSWER_SIZE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the kernel's queue")
def test_a_client_reading_a_few_kb_a_second_is_not_taken_for_one_reading_nothing() -> None:
    # The kernel's send buffer grows to megabytes and the socket turns writable again only
    # once a third of it has drained: at 160 KB/s the process's own buffer did not move for
    # seconds, and a client that kept reading was cut off as one that had stopped.
    received = 0
    with _asking_for_24_mb() as sock:
        slow_until = time.monotonic() + 4
        while time.monotonic() < slow_until and (data := sock.recv(16384)):
            received += len(data)
            time.sleep(0.1)
        while received < _ANSWER_SIZE and (data := sock.recv(1 << 20)):
            received += len(data)
    assert received >= _ANSWER_SIZE


def test_heads_pipelined_behind_a_body_are_no_framing_of_it() -> None:
    # Counted as the body's chunk framing, 100 KB of them passed its limit: no answer at all.
    async def echo_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        body = scope["path"].encode()
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    pad = b"a" * 1000
    gets = b"".join(
        b"GET /%d HTTP/1.1\r\nhost: x\r\nx-pad: %b\r\n\r\n" % (i, pad) for i in range(100)
    )
    with (
        serve(echo_path, http=GatewayHttpProtocol) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        sock.sendall(b"POST /post HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n01234")
        time.sleep(0.2)  # the head and half the body read; then the rest, and the heads
        sock.sendall(b"56789" + gets)
        sock.settimeout(5)
        received = b""
        while received.count(b"HTTP/1.1 200") < 101 and (data := sock.recv(65536)):
            received += data
    assert received.count(b"HTTP/1.1 200") == 101


@pytest.mark.parametrize(
    "body",
    [
        b"-3\r\nabc\r\n0\r\n\r\n",
        b"10000000000000003\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabcX\r\n0\r\n\r\n",
    ],
    ids=["negative size", "size overflow", "chunk longer than its size"],
)
def test_an_unparseable_chunked_body_gets_a_400_before_any_answer(body: bytes) -> None:
    # Its request was already the one being answered (its app running), so the connection
    # closed with nothing sent; uvicorn answers 400.
    head = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    with (
        serve(_demo(), http=GatewayHttpProtocol) as url,
        socket.create_connection(_address(url)) as sock,
    ):
        sock.sendall(head + body)
        answer = _until_closed(sock, within=5)
    _assert_refusal(answer, b"400")


@_in_loop
async def test_one_read_of_many_pipelined_requests_queues_a_bounded_number() -> None:
    # Queued with their scopes, 14,562 tiny requests from one 256 KB read held 13 MB.
    release = asyncio.Event()

    async def answer_when_released(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    protocol, transport = _connected(answer_when_released)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        protocol.data_received(b"GET / HTTP/1.1\r\n\r\n" * (256 * 1024 // 18))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1024 * 1024
    release.set()
    await _passes(400)
    answers = _written(transport).split(b"HTTP/1.1 ")[1:]
    # The one being answered and the 128 waiting their turn; then the refusal, and the close.
    assert len(answers) == 130 and all(a.startswith(b"200 OK\r\n") for a in answers[:129])
    _assert_refusal(b"HTTP/1.1 " + answers[-1], b"400")
    assert b"More than 128 requests pipelined on one connection." in answers[-1]
    assert transport.closed
