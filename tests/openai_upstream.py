"""A real OpenAI-compatible upstream for tests: ``POST .../chat/completions`` over HTTP.

Serve :class:`OpenAIUpstream` with ``tests.servers.serve``. Without scripted replies it answers
every request from its content, the way a model would, whole or streamed as asked: it calls
the offered tools (two in parallel when the user asks for "parallel"), else echoes the last
user text (counting images), stopping at the first stop sequence it meets. Tests push
:class:`ChatReply` objects to script an exact answer (errors in OpenAI's shape included), and
read ``received`` to see what arrived.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .servers import Receive, Scope, Send

MODEL = "gpt-4o"


@dataclass
class ChatReply:
    """One scripted answer: a whole ``body`` or SSE ``chunks`` (one body write each, after
    ``delay`` seconds), then the response stays open ``hang_after`` seconds."""

    status: int = 200
    body: bytes | None = None
    chunks: list[bytes] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0
    hang_after: float = 0.0


@dataclass
class ChatRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass(frozen=True)
class ToolCall:
    """A call the model makes; ``arguments`` are the JSON text, streamed in ``pieces``."""

    id: str
    name: str
    arguments: str
    pieces: int = 3


def openai_error(message: str, error_type: str, code: str | None = None) -> bytes:
    """An error body in OpenAI's shape."""
    error = {"message": message, "type": error_type, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _wire_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def completion_json(
    text: str | None = None,
    *,
    tool_calls: Sequence[ToolCall] = (),
    finish_reason: str = "stop",
    model: str = MODEL,
    usage: tuple[int, int] = (11, 7),
) -> bytes:
    """A whole ``chat.completion`` body."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = _wire_calls(tool_calls)
    choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
    return json.dumps(
        {
            "id": "chatcmpl-test0001",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [choice],
            "usage": _usage(*usage),
        }
    ).encode()


def sse_data(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return b"data: " + data.encode() + b"\n\n"


def _chunk(delta: dict[str, Any], finish_reason: str | None = None, model: str = MODEL) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    return sse_data(
        {
            "id": "chatcmpl-test0001",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [choice],
        }
    )


def _split(text: str, pieces: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def completion_chunks(
    pieces: Sequence[str] = (),
    *,
    tool_calls: Sequence[ToolCall] = (),
    finish_reason: str = "stop",
    usage: tuple[int, int] | None = (11, 7),
    model: str = MODEL,
) -> list[bytes]:
    """A complete ``chat.completion.chunk`` stream, one SSE event per list item: the role,
    text pieces, each tool call's id and name then its arguments in ``pieces`` fragments,
    the finish reason, a usage chunk (when ``usage``) and ``[DONE]``."""
    chunks = [_chunk({"role": "assistant", "content": ""}, model=model)]
    chunks += [_chunk({"content": piece}, model=model) for piece in pieces]
    for index, call in enumerate(tool_calls):
        head = {"index": index, "id": call.id, "type": "function"}
        head["function"] = {"name": call.name, "arguments": ""}
        chunks.append(_chunk({"tool_calls": [head]}, model=model))
        for fragment in _split(call.arguments, call.pieces):
            part = {"index": index, "function": {"arguments": fragment}}
            chunks.append(_chunk({"tool_calls": [part]}, model=model))
    chunks.append(_chunk({}, finish_reason, model=model))
    if usage is not None:
        chunks.append(
            sse_data(
                {
                    "id": "chatcmpl-test0001",
                    "object": "chat.completion.chunk",
                    "created": 1_700_000_000,
                    "model": model,
                    "choices": [],
                    "usage": _usage(*usage),
                }
            )
        )
    chunks.append(sse_data("[DONE]"))
    return chunks


def _sample_value(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "string":
        return "Paris"
    if kind in ("integer", "number"):
        return 3
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    return None


def _arguments(tool: dict[str, Any]) -> str:
    properties = tool["function"].get("parameters", {}).get("properties", {})
    return json.dumps({name: _sample_value(schema) for name, schema in properties.items()})


def _text_of(content: Any) -> tuple[str, int]:
    """The text of a message's content and how many images it carries."""
    if isinstance(content, str):
        return content, 0
    texts = [part.get("text", "") for part in content if part.get("type") == "text"]
    images = sum(1 for part in content if part.get("type") == "image_url")
    return " ".join(texts), images


@dataclass
class _Answer:
    text: str | None
    calls: list[ToolCall]
    finish_reason: str


def _compose(request: dict[str, Any]) -> _Answer:
    messages = request["messages"]
    last = messages[-1]
    tools = request.get("tools") or []
    if tools and last["role"] != "tool" and request.get("tool_choice") != "none":
        user_text, _ = _text_of(last.get("content") or "")
        chosen = tools[:2] if "parallel" in user_text and len(tools) > 1 else tools[:1]
        calls = [
            ToolCall(
                f"call_{i}{tool['function']['name']}", tool["function"]["name"], _arguments(tool)
            )
            for i, tool in enumerate(chosen)
        ]
        return _Answer(None, calls, "tool_calls")
    if last["role"] == "tool":
        return _Answer(f"The tool said: {_text_of(last['content'])[0]}", [], "stop")
    text, images = _text_of(last.get("content") or "")
    reply = f"Echo: {text}" + (f" ({images} image(s))" if images else "")
    stop = request.get("stop") or []
    for sequence in [stop] if isinstance(stop, str) else stop:
        if sequence in reply:
            return _Answer(reply[: reply.index(sequence)], [], "stop")
    return _Answer(reply, [], "stop")


def answer_for(request: dict[str, Any]) -> ChatReply:
    """What the mock model answers to ``request`` (a Chat Completions body)."""
    answer = _compose(request)
    model = request.get("model", MODEL)
    usage = (len(json.dumps(request["messages"])) // 4, len((answer.text or "x").split()))
    finish = answer.finish_reason
    if not request.get("stream"):
        body = completion_json(
            answer.text, tool_calls=answer.calls, finish_reason=finish, model=model, usage=usage
        )
        return ChatReply(body=body)
    words = (answer.text or "").split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)] if answer.text else []
    include_usage = (request.get("stream_options") or {}).get("include_usage", False)
    chunks = completion_chunks(
        pieces,
        tool_calls=answer.calls,
        finish_reason=finish,
        usage=usage if include_usage else None,
        model=model,
    )
    return ChatReply(chunks=chunks)


class OpenAIUpstream:
    """An ASGI app standing in for an OpenAI-compatible server (``/v1/chat/completions``)."""

    def __init__(self) -> None:
        self.replies: list[ChatReply] = []
        self.received: list[ChatRequest] = []

    def push(self, *replies: ChatReply) -> None:
        self.replies.extend(replies)

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
        request = ChatRequest(scope["method"], scope["path"], headers, body)
        self.received.append(request)
        if not scope["path"].endswith("/chat/completions") or scope["method"] != "POST":
            error = openai_error(f"Unknown request URL: {scope['path']}", "invalid_request_error")
            reply = ChatReply(status=404, body=error)
        elif self.replies:
            reply = self.replies.pop(0)
        else:
            reply = answer_for(request.json)
        await _answer(reply, send)


async def _answer(reply: ChatReply, send: Send) -> None:
    streamed = reply.chunks is not None
    content_type = "text/event-stream" if streamed else "application/json"
    headers = [("content-type", content_type), ("x-request-id", "req_openai_0001")]
    headers += reply.headers
    start = {
        "type": "http.response.start",
        "status": reply.status,
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }
    if not streamed:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        await send(start)
        await send({"type": "http.response.body", "body": reply.body or b""})
        return
    await send(start)
    for chunk in reply.chunks or []:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if reply.hang_after:
        await asyncio.sleep(reply.hang_after)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
