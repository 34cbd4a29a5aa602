"""A fast mock Anthropic upstream: uvloop + an asyncio Protocol, HTTP/1.1 keep-alive.

``POST /v1/messages`` answers a fixed ~1 KB message, or, when the body asks for
``"stream": true``, a realistic SSE stream written as separate chunked-encoding chunks.
``POST /v1/chat/completions`` does the same in OpenAI's shapes (``openai_payloads.py``), for
messages_mw's OpenAI-compatible provider.
Everything it sends is encoded once at start-up so the mock costs as little CPU as possible:
it shares a core with the load generator and is the ceiling every gateway is measured against.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from dataclasses import dataclass
from typing import cast

import httptools
import uvloop

from . import openai_payloads
from .serving import announce_port, bind_loopback, pin_to_core, server_arg_parser

_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_MODEL = "claude-sonnet-4-5-20250929"
_MESSAGE_ID = "msg_01XFDUDYJgAACzvnptvVoYEL"
_REQUEST_ID = b"req_011CSHoEeqs5C35K2UUqR7Fy"
_TEXT_DELTAS = [
    "I found the bug. ",
    "In `ledgerline/export/csv.py`, ",
    "`format_amount` calls `abs()` ",
    "before applying the sign convention, ",
    "so credits, ",
    "which are stored as negative amounts, ",
    "lose their sign on export. ",
    "The fix is to keep the sign ",
    "and only round with `ROUND_HALF_EVEN` ",
    "at the presentation boundary. ",
    "I'll update the function, ",
    "add a regression test under ",
    "`tests/export/test_csv.py` ",
    "that exports a ledger with one debit ",
    "and one credit, ",
    "and run the export test module ",
    "to confirm both rows keep their sign. ",
    "No public signatures change, ",
    "so the finance notebooks are unaffected. ",
    "Shall I go ahead?",
]
_USAGE = {
    "input_tokens": 1843,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 12372,
    "output_tokens": 187,
    "service_tier": "standard",
}


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def message_body() -> bytes:
    """A non-streaming response shaped like Anthropic's (about 1 KB)."""
    text = "".join(_TEXT_DELTAS) + " " + "".join(_TEXT_DELTAS[:8])
    return _compact(
        {
            "id": _MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": _MODEL,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": _USAGE,
        }
    )


def sse_events() -> list[bytes]:
    """The events of one streamed text answer, each framed as ``event:``/``data:`` lines."""
    message: dict[str, object] = {
        "id": _MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": _MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**_USAGE, "output_tokens": 1},
    }
    text_block = {"type": "text", "text": ""}
    events: list[dict[str, object]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": text_block},
        {"type": "ping"},
    ]
    for text in _TEXT_DELTAS:
        delta = {"type": "text_delta", "text": text}
        events.append({"type": "content_block_delta", "index": 0, "delta": delta})
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    events += [
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": stop, "usage": {"output_tokens": 187}},
        {"type": "message_stop"},
    ]
    return [b"event: %s\ndata: %s\n\n" % (str(e["type"]).encode(), _compact(e)) for e in events]


def _json_response(body: bytes) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: application/json\r\n"
        b"request-id: " + _REQUEST_ID + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


def _sse_response_parts(events: list[bytes]) -> list[bytes]:
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\n"
        b"request-id: " + _REQUEST_ID + b"\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    chunks = [b"%x\r\n%s\r\n" % (len(event), event) for event in events]
    return [head, *chunks, b"0\r\n\r\n"]


@dataclass(frozen=True)
class RouteAnswers:
    """One route's two answers, encoded once: whole, and as the parts of a stream."""

    json_response: bytes
    sse_parts: list[bytes]


def encoded_routes() -> dict[bytes, RouteAnswers]:
    return {
        b"/v1/messages": RouteAnswers(
            _json_response(message_body()), _sse_response_parts(sse_events())
        ),
        b"/v1/chat/completions": RouteAnswers(
            _json_response(openai_payloads.completion_body()),
            _sse_response_parts(openai_payloads.text_stream()),
        ),
    }


def _not_found_response() -> bytes:
    body = _compact({"type": "error", "error": {"type": "not_found_error", "message": "Not found"}})
    head = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\n\r\n%s" % (len(body), body)


_NOT_FOUND = _not_found_response()


class _UpstreamProtocol(asyncio.Protocol):
    """One connection; httptools parses requests (chunked uploads included) as they arrive."""

    def __init__(self, routes: dict[bytes, RouteAnswers]) -> None:
        self._routes = routes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so cast rather than check.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        assert transport is not None
        answers = self._routes.get(self._url.split(b"?")[0])
        if self._parser.get_method() != b"POST" or answers is None:
            transport.write(_NOT_FOUND)
        elif _STREAM_TRUE.search(b"".join(self._body)):
            # Separate writes, so each event leaves as its own chunk (and usually its own segment).
            for part in answers.sse_parts:
                transport.write(part)
        else:
            transport.write(answers.json_response)
        if not self._parser.should_keep_alive():
            transport.close()


async def serve(sock: socket.socket) -> None:
    """Serve on ``sock`` until cancelled; announces the port once accepting."""
    routes = encoded_routes()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _UpstreamProtocol(routes), sock=sock)
    async with server:
        announce_port(sock)
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = server_arg_parser(__doc__)
    args = parser.parse_args(argv)
    pin_to_core(args.cpu)
    uvloop.run(serve(bind_loopback()))


if __name__ == "__main__":
    main()
