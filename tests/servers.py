"""Real loopback servers for end-to-end tests: uvicorn in a thread, and a scriptable upstream.

``serve(app)`` runs any ASGI app under uvicorn on 127.0.0.1 with a free port and yields its base
URL. ``ScriptedUpstream`` is an Anthropic-like upstream whose replies a test scripts, and which
records every request it received and when each streamed response's client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# The checkout's own copy of ../shared/samples, so that a bare clone runs every test.
SAMPLES = Path(__file__).resolve().parent / "samples"


@contextlib.contextmanager
def serve(app: Any, **options: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a background thread; yield ``http://host:port``."""
    with serving(app, **options) as served:
        yield served.url


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    thread: threading.Thread


@contextlib.contextmanager
def serving(app: Any, **options: Any) -> Iterator[Served]:
    """:func:`serve`, yielding the server and its thread too: a test can tell the server to
    exit mid-response, and see that its shutdown finished."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, **{"log_level": "warning", "lifespan": "auto", **options})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}", server, thread)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Reply:
    """One scripted upstream answer.

    ``chunks`` are sent as separate body writes, with ``delay`` seconds before each (a float, or
    a list with one delay per chunk); ``hang_after`` keeps the response open that long after the
    last chunk, as an upstream that stalls mid-stream.
    """

    status: int = 200
    body: bytes | None = None
    chunks: list[bytes] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float | list[float] = 0.0
    hang_after: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class ScriptedUpstream:
    """An ASGI app standing in for api.anthropic.com.

    Tests push :class:`Reply` objects (or set ``default``); each request pops the next one.
    ``received`` lists what arrived; ``disconnected_at`` records, per streamed request, the
    ``time.monotonic()`` at which the gateway closed the connection early.
    """

    def __init__(self, default: Reply | Callable[[Received], Reply] | None = None) -> None:
        self.replies: list[Reply] = []
        self.default = default
        self.received: list[Received] = []
        self.disconnected_at: list[float] = []

    def push(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def _next_reply(self, request: Received) -> Reply:
        if self.replies:
            return self.replies.pop(0)
        if callable(self.default):
            return self.default(request)
        return self.default or Reply(body=message_json())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request = Received(
            scope["method"], scope["path"], scope["query_string"].decode(), headers, body
        )
        self.received.append(request)
        reply = self._next_reply(request)
        await self._answer(reply, receive, send)

    async def _answer(self, reply: Reply, receive: Receive, send: Send) -> None:
        is_stream = reply.chunks is not None
        content_type = "text/event-stream; charset=utf-8" if is_stream else "application/json"
        headers = [("content-type", content_type), ("request-id", "req_upstream_0001")]
        headers += reply.headers
        raw_headers = [(k.encode(), v.encode()) for k, v in headers]
        chunks = reply.chunks if is_stream else [reply.body or b""]
        delays = reply.delay if isinstance(reply.delay, list) else [reply.delay] * len(chunks)
        if not is_stream and delays and delays[0]:
            await asyncio.sleep(delays[0])
        await send({"type": "http.response.start", "status": reply.status, "headers": raw_headers})
        watcher = asyncio.ensure_future(self._watch_disconnect(receive))
        try:
            for index, chunk in enumerate(chunks or []):
                if is_stream and delays[index]:
                    await asyncio.sleep(delays[index])
                if watcher.done():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if reply.hang_after:
                await asyncio.wait([watcher], timeout=reply.hang_after)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    async def _watch_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected_at.append(time.monotonic())


_encoder = msgspec.json.Encoder()


def message_json(
    text: str = "Hello from upstream.",
    *,
    model: str = "claude-sonnet-4-6",
    stop_reason: str = "end_turn",
    input_tokens: int = 12,
    output_tokens: int = 5,
) -> bytes:
    return _encoder.encode(
        {
            "id": "msg_01UpstreamMessage000001",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
    )


def sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


def text_stream_events(
    pieces: list[str],
    *,
    model: str = "claude-sonnet-4-6",
    input_tokens: int = 12,
) -> list[bytes]:
    """A complete Anthropic text stream, one SSE event per chunk."""
    events = [
        _message_start(model, input_tokens),
        sse("ping", {"type": "ping"}),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    for piece in pieces:
        delta = {"type": "text_delta", "text": piece}
        events.append(
            sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.extend(_message_end("end_turn", len(pieces)))
    return events


def _message_start(model: str, input_tokens: int) -> bytes:
    message = {
        "id": "msg_01UpstreamStream0000001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    return sse("message_start", {"type": "message_start", "message": message})


def _message_end(stop_reason: str, output_tokens: int) -> list[bytes]:
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return [
        sse(
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}},
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]


def tool_use_stream_events(name: str, input_json_fragments: list[str]) -> list[bytes]:
    """A stream with one text block and one tool_use block fed by input_json_delta."""
    events = [_message_start("claude-sonnet-4-6", 30)]
    text_block = {"type": "text", "text": ""}
    events.append(
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": text_block},
        )
    )
    delta = {"type": "text_delta", "text": "Let me check."}
    events.append(
        sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    )
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    tool_block = {"type": "tool_use", "id": "toolu_01Test", "name": name, "input": {}}
    events.append(
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 1, "content_block": tool_block},
        )
    )
    for fragment in input_json_fragments:
        delta = {"type": "input_json_delta", "partial_json": fragment}
        events.append(
            sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
        )
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 1}))
    events.extend(_message_end("tool_use", 20))
    return events


def thinking_stream_events(thinking: list[str], signature: str, answer: str) -> list[bytes]:
    """A stream with a signed thinking block followed by a text block."""
    events = [_message_start("claude-sonnet-4-6", 40)]
    block = {"type": "thinking", "thinking": "", "signature": ""}
    events.append(
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
    )
    for piece in thinking:
        delta = {"type": "thinking_delta", "thinking": piece}
        events.append(
            sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    delta = {"type": "signature_delta", "signature": signature}
    events.append(
        sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    )
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    text = {"type": "text", "text": ""}
    events.append(
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 1, "content_block": text},
        )
    )
    delta = {"type": "text_delta", "text": answer}
    events.append(
        sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
    )
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": 1}))
    events.extend(_message_end("end_turn", 15))
    return events


def error_json(error_type: str, message: str) -> bytes:
    return _encoder.encode(
        {"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_up"}
    )
