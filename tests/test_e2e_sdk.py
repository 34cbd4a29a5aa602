"""End to end with the official Python SDK 2.x as the client, through real loopback servers.

The SDK talks to a FastAPI host that mounts the gateway (the ``stack`` fixture) in front of a
scripted upstream. Every test checks both sides: what the SDK hands its caller, and what the
upstream received. Byte-identity checks use httpx directly, since the SDK re-serialises bodies.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from anthropic.types import MessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from messages_mw import (
    FallbackConfig,
    Gateway,
    GatewayConfig,
    MessagesMiddleware,
    RequestContext,
    RetryPolicy,
    UpstreamConfig,
)

from .conftest import Stack, build_host_app, sample
from .policy_support import closed_port_url
from .servers import (
    Reply,
    ScriptedUpstream,
    error_json,
    message_json,
    serve,
    sse,
    text_stream_events,
    thinking_stream_events,
    tool_use_stream_events,
)

MODEL = "claude-sonnet-4-6"
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello"}]
UPSTREAM_REQUEST_ID = "req_upstream_0001"  # ScriptedUpstream sends it on every answer
SDK_HEADERS = {
    "anthropic-version": "2026-10-21",
    "authorization": "Bearer sk-test",
    "content-type": "application/json",
}


def _client(
    base_url: str, *, max_retries: int = 0, timeout: float | None = None
) -> anthropic.Anthropic:
    if timeout is None:
        return anthropic.Anthropic(base_url=base_url, api_key="sk-test", max_retries=max_retries)
    return anthropic.Anthropic(
        base_url=base_url, api_key="sk-test", max_retries=max_retries, timeout=timeout
    )


def _wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    # on_request_end runs after the last byte went out, so the client can be ahead of it.
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def _last_finished(finished: list[RequestContext]) -> RequestContext:
    _wait_until(lambda: bool(finished))
    return finished[-1]


def _usage(context: RequestContext) -> tuple[int, int, int, int]:
    usage = context.usage
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
    )


@contextmanager
def _gateway_stack(
    upstream_url: str,
    *,
    max_body_bytes: int = 32 * 1024 * 1024,
    client_write_timeout: float = 60.0,
    **upstream: Any,
) -> Iterator[tuple[str, list[RequestContext]]]:
    """A host app mounting a gateway in front of ``upstream_url``, like the ``stack`` fixture
    but with the given limits; yields the SDK base URL and the finished request contexts."""
    settings = UpstreamConfig(base_url=upstream_url, **upstream)
    config = GatewayConfig(
        upstream=settings,
        max_body_bytes=max_body_bytes,
        client_write_timeout=client_write_timeout,
    )
    finished: list[RequestContext] = []
    gateway = Gateway(config, on_request_end=finished.append)
    with serve(build_host_app(gateway)) as host_url:
        yield host_url + "/anthropic", finished


def _post_stream(base_url: str, headers: dict[str, str] = SDK_HEADERS) -> bytes:
    """POST a small streaming request with httpx; return the raw relayed body."""
    body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": True})
    with httpx.stream("POST", f"{base_url}/v1/messages", content=body, headers=headers) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        return answer.read()


def _with_stream(body: bytes, stream: bool) -> bytes:
    old, new = (
        (b'"stream": false', b'"stream": true')
        if stream
        else (b'"stream": true', b'"stream": false')
    )
    edited = body.replace(old, new, 1)
    assert json.loads(edited)["stream"] is stream
    return edited


def test_create_returns_upstream_message_and_forwards_sdk_headers(stack: Stack) -> None:
    upstream_body = message_json("Hi there.", input_tokens=21, output_tokens=7)
    stack.upstream.push(Reply(body=upstream_body))
    with _client(stack.base_url) as client:
        raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=HELLO)
        message = raw.parse()
    assert message.to_dict() == json.loads(upstream_body)
    assert message._request_id == UPSTREAM_REQUEST_ID
    # A complete body goes out with its length, as a plain (not chunked) HTTP body.
    assert raw.headers["content-length"] == str(len(upstream_body))
    assert "transfer-encoding" not in raw.headers
    [received] = stack.upstream.received
    assert (received.method, received.path) == ("POST", "/v1/messages")
    assert received.body == raw.http_request.content
    assert json.loads(received.body) == {"model": MODEL, "max_tokens": 64, "messages": HELLO}
    assert received.headers["anthropic-version"] == "2026-10-21"
    assert received.headers["authorization"] == "Bearer sk-test"
    assert "x-api-key" not in received.headers
    context = _last_finished(stack.finished)
    assert (context.status, context.model, context.stream) == (200, MODEL, False)
    assert context.upstream_request_id == UPSTREAM_REQUEST_ID
    assert _usage(context) == (21, 7, 0, 0)
    assert context.stop_reason == "end_turn"


def test_hop_by_hop_and_unlisted_headers_are_not_forwarded(stack: Stack) -> None:
    hop_headers = {
        "Connection": "keep-alive, X-Hop-Secret",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "X-Hop-Secret": "do-not-forward",
        "Cookie": "session=host-only",
    }
    with _client(stack.base_url) as client:
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO, extra_headers=hop_headers)
    [received] = stack.upstream.received
    for name in ("keep-alive", "te", "proxy-authorization", "x-hop-secret", "cookie"):
        assert name not in received.headers
    assert "x-hop-secret" not in received.headers.get("connection", "").lower()
    assert received.headers["host"] == stack.upstream_url.removeprefix("http://")
    assert received.headers["x-stainless-retry-count"] == "0"


@pytest.mark.parametrize("name", ["small_chat.json", "agent_turn.json", "long_context.json"])
def test_sample_body_reaches_upstream_byte_identical(stack: Stack, name: str) -> None:
    body = _with_stream(sample(name), stream=False)
    stack.upstream.push(Reply(body=message_json()))
    answer = httpx.post(f"{stack.base_url}/v1/messages", content=body, headers=SDK_HEADERS)
    assert answer.status_code == 200
    assert answer.content == message_json()
    assert answer.headers["request-id"] == UPSTREAM_REQUEST_ID
    [received] = stack.upstream.received
    assert received.body == body
    assert received.headers["content-length"] == str(len(body))


def test_streamed_sample_body_and_events_are_byte_identical(stack: Stack) -> None:
    body = sample("agent_turn.json")
    events = tool_use_stream_events("Read", ['{"file_path": "/tmp/', 'a.txt"}'])
    stack.upstream.push(Reply(chunks=events))
    with httpx.stream(
        "POST", f"{stack.base_url}/v1/messages", content=body, headers=SDK_HEADERS
    ) as answer:
        relayed = answer.read()
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert relayed == b"".join(events)
    assert stack.upstream.received[0].body == body


def _stream_events(stack: Stack, **params: Any) -> tuple[list[Any], anthropic.types.Message]:
    with _client(stack.base_url) as client:
        arguments = {"model": MODEL, "max_tokens": 256, "messages": HELLO, **params}
        with client.messages.stream(**arguments) as stream:
            events = list(stream)
            final = stream.get_final_message()
            assert stream.request_id == UPSTREAM_REQUEST_ID
    return events, final


def test_stream_text(stack: Stack) -> None:
    stack.upstream.push(Reply(chunks=text_stream_events(["Hel", "lo, ", "world"], input_tokens=33)))
    events, final = _stream_events(stack)
    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta", "text"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [event.snapshot for event in events if event.type == "text"] == [
        "Hel",
        "Hello, ",
        "Hello, world",
    ]
    assert final.content[0].type == "text" and final.content[0].text == "Hello, world"
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == (
        "end_turn",
        33,
        3,
    )
    assert json.loads(stack.upstream.received[0].body)["stream"] is True
    context = _last_finished(stack.finished)
    assert (context.stream, context.status, context.stop_reason) == (True, 200, "end_turn")
    assert _usage(context) == (33, 3, 0, 0)
    assert context.client_disconnected is False and context.error_type is None


def test_stream_tool_use_with_fragments_split_inside_strings(stack: Stack) -> None:
    fragments = ["", '{"file_pa', 'th": "/tmp/sp', 'lit \\"q', 'uoted\\".txt", "lim', 'it": 20}']
    stack.upstream.push(Reply(chunks=tool_use_stream_events("Read", fragments)))
    events, final = _stream_events(stack)
    partials = [event.partial_json for event in events if event.type == "input_json"]
    assert partials == fragments
    tool_block = final.content[1]
    assert tool_block.type == "tool_use"
    assert (tool_block.id, tool_block.name) == ("toolu_01Test", "Read")
    assert tool_block.input == {"file_path": '/tmp/split "quoted".txt', "limit": 20}
    assert final.stop_reason == "tool_use"
    assert _usage(_last_finished(stack.finished)) == (30, 20, 0, 0)


def test_stream_thinking_keeps_signature_byte_exact(stack: Stack) -> None:
    signature = "EqQBCkYIBRgCIkD+/9xZ==\u00e9\\u0041" + "Aa0+/" * 40
    events_bytes = thinking_stream_events(["Let me ", "think."], signature, "Done.")
    stack.upstream.push(Reply(chunks=events_bytes))
    events, final = _stream_events(stack, thinking={"type": "enabled", "budget_tokens": 1024})
    thinking = final.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == "Let me think."
    assert thinking.signature == signature
    assert [event.signature for event in events if event.type == "signature"] == [signature]
    assert final.content[1].type == "text" and final.content[1].text == "Done."
    assert json.loads(stack.upstream.received[0].body)["thinking"]["budget_tokens"] == 1024
    assert _usage(_last_finished(stack.finished)) == (40, 15, 0, 0)


class _LockstepUpstream:
    """A streaming upstream that sends its chunks in ``groups`` and sends each next group only
    once the test calls :meth:`advance` (after the client saw the previous one). ``log`` records
    each group sent, interleaved with what the test appends to it."""

    def __init__(self, groups: list[list[bytes]]) -> None:
        self.groups = groups
        self.log: list[str] = []
        self.stalled = False
        self._advance = threading.Semaphore(0)

    def advance(self) -> None:
        self._advance.release()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"request-id", UPSTREAM_REQUEST_ID.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index, group in enumerate(self.groups):
            # A gateway that buffered would never let the client see the previous group:
            # give up waiting after 10 s (and fail the test) rather than hang.
            if index and not self.stalled:
                advanced = await asyncio.to_thread(self._advance.acquire, timeout=10.0)
                self.stalled = not advanced
            self.log.append(f"sent {index}")
            for chunk in group:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_stream_chunks_are_relayed_as_they_arrive() -> None:
    events = text_stream_events(["a", "b", "c", "d"])
    # message_start, ping, block start and the first delta at once; then one delta per group;
    # then the closing events. The upstream sends a group only after the client got the text of
    # the previous one, so the stream completes only if every chunk is relayed as it arrives
    # (no waiting for time to pass, so no threshold to miss under load).
    groups = [events[:4], [events[4]], [events[5]], [events[6]], events[7:]]
    lockstep = _LockstepUpstream(groups)
    texts: list[str] = []
    with (
        serve(lockstep) as upstream_url,
        _gateway_stack(upstream_url) as (base_url, _),
        _client(base_url) as sdk,
    ):
        client = sdk.with_options(timeout=30.0)
        with client.messages.stream(model=MODEL, max_tokens=16, messages=HELLO) as stream:
            for event in stream:
                if event.type == "text":
                    texts.append(event.text)
                    lockstep.log.append(f"got {event.text}")
                    lockstep.advance()
            message = stream.get_final_message()
    assert not lockstep.stalled, "a chunk was held back until the upstream sent more"
    assert texts == ["a", "b", "c", "d"]
    # Each delta reached the client before the upstream sent the next one.
    assert lockstep.log == [
        "sent 0", "got a", "sent 1", "got b", "sent 2", "got c", "sent 3", "got d", "sent 4"
    ]  # fmt: skip
    assert [block.text for block in message.content if block.type == "text"] == ["abcd"]


def test_opening_events_reach_the_client_while_the_model_is_silent(
    upstream: tuple[ScriptedUpstream, str],
) -> None:
    # The gateway holds a stream's opening events until its first content (a failure before
    # it falls back or becomes a typed error), but only for stream_hold: a model silent for
    # longer must still get bytes to the client, or Claude Code's watchdogs give up on it.
    scripted, upstream_url = upstream
    events = text_stream_events(["a"])
    # message_start, ping, then 4 s of silence: far more than the hold and the bound below.
    delays = [0.0, 0.0, 4.0, *[0.0] * (len(events) - 3)]
    scripted.push(Reply(chunks=events, delay=delays))
    retry = RetryPolicy(attempts_per_target=1, stream_hold=0.1)
    config = GatewayConfig(
        upstream=UpstreamConfig(base_url=upstream_url), fallback=FallbackConfig(retry=retry)
    )
    with (
        serve(build_host_app(Gateway(config))) as host_url,
        _client(host_url + "/anthropic") as client,
    ):
        started = time.monotonic()
        with client.messages.stream(model=MODEL, max_tokens=16, messages=HELLO) as stream:
            seen = [(event.type, time.monotonic() - started) for event in stream]
            message = stream.get_final_message()
    arrival = dict(reversed(seen))
    assert arrival["message_start"] < 3.0
    assert arrival["text"] > 3.9
    assert [block.text for block in message.content if block.type == "text"] == ["a"]


def test_unknown_events_and_delta_types_pass_through_unchanged(stack: Stack) -> None:
    events = text_stream_events(["known"])
    future_event = sse("future_event", {"type": "future_event", "payload": {"x": [1, 2.5]}})
    future_delta = sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "future_delta", "v": 1}},
    )
    comment = b": a comment line\n\n"
    events[1:1] = [future_event]
    events[4:4] = [future_delta, comment]
    stack.upstream.push(Reply(chunks=events), Reply(chunks=events))
    body = _with_stream(sample("small_chat.json"), stream=True)
    with httpx.stream(
        "POST", f"{stack.base_url}/v1/messages", content=body, headers=SDK_HEADERS
    ) as answer:
        relayed = answer.read()
    assert relayed == b"".join(events)
    _, final = _stream_events(stack)
    assert final.content[0].type == "text" and final.content[0].text == "known"
    assert final.stop_reason == "end_turn"


def test_concurrent_streams_each_get_their_own_answer(stack: Stack) -> None:
    def answer_with_the_prompt(request: Any) -> Reply:
        prompt = json.loads(request.body)["messages"][0]["content"]
        return Reply(chunks=text_stream_events(list(prompt)), delay=0.01)

    stack.upstream.default = answer_with_the_prompt
    results: dict[str, str] = {}

    def ask(prompt: str) -> None:
        with _client(stack.base_url) as client:
            messages: list[MessageParam] = [{"role": "user", "content": prompt}]
            with client.messages.stream(model=MODEL, max_tokens=8, messages=messages) as stream:
                results[prompt] = stream.get_final_text()

    prompts = [f"prompt-{index:02d}" for index in range(12)]
    threads = [threading.Thread(target=ask, args=(prompt,)) for prompt in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == {prompt: prompt for prompt in prompts}
    _wait_until(lambda: len(stack.finished) == len(prompts))
    assert sorted(context.usage.output_tokens for context in stack.finished) == [9] * 12


MODELS_PAGE: dict[str, Any] = {
    "data": [
        {
            "type": "model",
            "id": "claude-sonnet-4-6",
            "display_name": "Claude Sonnet 4.6",
            "created_at": "2025-09-29T00:00:00Z",
        },
        {
            "type": "model",
            "id": "claude-haiku-4-5",
            "display_name": "Claude Haiku 4.5",
            "created_at": "2025-10-01T00:00:00Z",
        },
    ],
    "has_more": False,
    "first_id": "claude-sonnet-4-6",
    "last_id": "claude-haiku-4-5",
}


def test_count_tokens(stack: Stack) -> None:
    stack.upstream.push(Reply(body=b'{"input_tokens":1234}'))
    with _client(stack.base_url) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=HELLO)
    assert counted.input_tokens == 1234
    [received] = stack.upstream.received
    assert (received.method, received.path) == ("POST", "/v1/messages/count_tokens")
    assert json.loads(received.body) == {"model": MODEL, "messages": HELLO}
    assert received.headers["authorization"] == "Bearer sk-test"
    context = _last_finished(stack.finished)
    assert (context.path, context.status, context.model) == (
        "/v1/messages/count_tokens",
        200,
        MODEL,
    )


def test_models_list_terminates_and_retrieve(stack: Stack) -> None:
    model = MODELS_PAGE["data"][0]
    stack.upstream.push(Reply(body=json.dumps(MODELS_PAGE).encode()))
    stack.upstream.push(Reply(body=json.dumps(model).encode()))
    with _client(stack.base_url) as client:
        listed = list(client.models.list())
        retrieved = client.models.retrieve("claude-sonnet-4-6")
    assert [info.id for info in listed] == ["claude-sonnet-4-6", "claude-haiku-4-5"]
    assert (retrieved.id, retrieved.display_name) == (model["id"], model["display_name"])
    assert retrieved.created_at.isoformat() == "2025-09-29T00:00:00+00:00"
    listing, single = stack.upstream.received
    assert (listing.method, listing.path, listing.body) == ("GET", "/v1/models", b"")
    assert (single.method, single.path) == ("GET", "/v1/models/claude-sonnet-4-6")
    assert single.headers["anthropic-version"] == "2026-10-21"
    _wait_until(lambda: len(stack.finished) == 2)
    assert [context.status for context in stack.finished] == [200, 200]


@pytest.mark.parametrize(
    ("status", "error_type", "exception"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (413, "request_too_large", anthropic.RequestTooLargeError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (529, "overloaded_error", anthropic.OverloadedError),
    ],
)
def test_upstream_error_status_maps_to_sdk_exception(
    stack: Stack, status: int, error_type: str, exception: type[anthropic.APIStatusError]
) -> None:
    body = error_json(error_type, f"upstream says {status}")
    headers = [("retry-after", "17"), ("x-should-retry", "false")] if status == 429 else []
    stack.upstream.push(Reply(status=status, body=body, headers=headers))
    with _client(stack.base_url) as client, pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    error = caught.value
    assert type(error) is exception
    assert error.status_code == status
    assert error.response.content == body
    assert error.body == json.loads(body)
    assert (error.type, error.api_message) == (error_type, f"upstream says {status}")
    assert error.request_id == UPSTREAM_REQUEST_ID
    if status == 429:
        assert error.response.headers["retry-after"] == "17"
        assert error.response.headers["x-should-retry"] == "false"
    assert len(stack.upstream.received) == 1
    context = _last_finished(stack.finished)
    assert context.status == status


def _assert_gateway_error(error: anthropic.APIStatusError, status: int, error_type: str) -> str:
    """Checks the envelope and the request id pairing; returns ``error.message``."""
    assert error.status_code == status
    assert isinstance(error.body, dict)
    assert set(error.body) == {"type", "error", "request_id"}
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == error_type
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert error.body["request_id"] == error.request_id
    assert error.response.headers["content-type"] == "application/json"
    message: str = error.body["error"]["message"]
    return message


def test_unknown_route_is_404_not_found(stack: Stack) -> None:
    with _client(stack.base_url) as client, pytest.raises(anthropic.NotFoundError) as caught:
        client.get("/v1/nope", cast_to=object)
    message = _assert_gateway_error(caught.value, 404, "not_found_error")
    assert "/v1/nope" in message
    assert stack.upstream.received == []


def test_wrong_method_is_405_with_allow_header(stack: Stack) -> None:
    with _client(stack.base_url) as client, pytest.raises(anthropic.APIStatusError) as caught:
        client.get("/v1/messages", cast_to=object)
    _assert_gateway_error(caught.value, 405, "invalid_request_error")
    assert caught.value.response.headers["allow"] == "POST"
    assert stack.upstream.received == []


def test_base_url_ending_in_v1_gets_a_hint(stack: Stack) -> None:
    with (
        _client(stack.base_url + "/v1") as client,
        pytest.raises(anthropic.NotFoundError) as caught,
    ):
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    message = _assert_gateway_error(caught.value, 404, "not_found_error")
    assert "drop the trailing /v1" in message
    assert stack.upstream.received == []


def test_malformed_json_is_400_with_byte_position(stack: Stack) -> None:
    body = b'{"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [}'
    answer = httpx.post(f"{stack.base_url}/v1/messages", content=body, headers=SDK_HEADERS)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["request_id"] == answer.headers["request-id"]
    assert "not valid JSON" in error["error"]["message"]
    assert f"(byte {body.index(b'}')})" in error["error"]["message"]
    assert stack.upstream.received == []


def test_wrong_field_type_is_400_naming_the_json_path(stack: Stack) -> None:
    messages: list[Any] = [{"role": "user", "content": [{"type": 7, "text": "hi"}]}]
    with _client(stack.base_url) as client, pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=8, messages=messages)
    message = _assert_gateway_error(caught.value, 400, "invalid_request_error")
    assert message.startswith("messages.0.content.0.type: ")
    assert stack.upstream.received == []


def _chunked_body(size: int) -> Iterator[bytes]:
    """A messages body of about ``size`` bytes, sent with chunked encoding (no length)."""
    yield b'{"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", '
    yield b'"content": "'
    for _ in range(size // 4096):
        yield b"x" * 4096
    yield b'"}]}'


def test_body_over_the_limit_is_413(upstream: tuple[ScriptedUpstream, str]) -> None:
    scripted, upstream_url = upstream
    with _gateway_stack(upstream_url, max_body_bytes=1024) as (base_url, finished):
        big: list[MessageParam] = [{"role": "user", "content": "x" * 2048}]
        with _client(base_url) as client, pytest.raises(anthropic.ContentTooLargeError) as caught:
            client.messages.create(model=MODEL, max_tokens=8, messages=big)
        message = _assert_gateway_error(caught.value, 413, "request_too_large")
        assert "1024" in message
        assert _last_finished(finished).status == 413
        url = f"{base_url}/v1/messages"
        answer = httpx.post(url, content=_chunked_body(256 * 1024), headers=SDK_HEADERS)
        assert answer.status_code == 413
        assert answer.json()["error"]["type"] == "request_too_large"
        gzipped = gzip.compress(b"".join(_chunked_body(64 * 1024)))
        assert len(gzipped) < 1024
        headers = {**SDK_HEADERS, "content-encoding": "gzip"}
        answer = httpx.post(url, content=gzipped, headers=headers)
        assert answer.status_code == 413
        assert answer.json()["error"]["type"] == "request_too_large"
    assert scripted.received == []


def test_chunked_request_body_is_forwarded_with_a_length(stack: Stack) -> None:
    body = b"".join(_chunked_body(64 * 1024))
    answer = httpx.post(
        f"{stack.base_url}/v1/messages", content=_chunked_body(64 * 1024), headers=SDK_HEADERS
    )
    assert answer.status_code == 200
    [received] = stack.upstream.received
    assert received.body == body
    assert received.headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in received.headers


def test_unreachable_upstream_is_502_internal_server_error() -> None:
    with _gateway_stack(closed_port_url(), connect_timeout=2.0) as (base_url, finished):
        with _client(base_url) as client, pytest.raises(anthropic.InternalServerError) as caught:
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        _assert_gateway_error(caught.value, 502, "api_error")
        assert _last_finished(finished).status == 502


def test_unreachable_upstream_is_retried_by_the_sdk() -> None:
    with (
        _gateway_stack(closed_port_url()) as (base_url, finished),
        _client(base_url, max_retries=1) as client,
        pytest.raises(anthropic.InternalServerError) as caught,
    ):
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert caught.value.status_code == 502
    _wait_until(lambda: len(finished) == 2)
    assert [context.status for context in finished] == [502, 502]


def test_upstream_timeout_is_504_timeout_error() -> None:
    # The upstream stays silent for 30 s: a gateway that waited for it instead of timing out
    # after read_timeout would blow far past the bound below (no tight threshold).
    stalling = _HeadStallingUpstream(stall=30.0, stalled_requests=1)
    with (
        serve(stalling) as upstream_url,
        _gateway_stack(upstream_url, read_timeout=0.3) as (base_url, finished),
    ):
        started = time.monotonic()
        with (
            _client(base_url, timeout=10.0) as client,
            pytest.raises(anthropic.GatewayTimeoutError) as caught,
        ):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert time.monotonic() - started < 3.0
        _assert_gateway_error(caught.value, 504, "timeout_error")
        assert _last_finished(finished).status == 504
        # The timed-out connection must not be reused: its late answer belongs to nobody (on a
        # reused connection, the next request would get the stalled one's "late" answer).
        with _client(base_url, timeout=10.0) as client:
            message = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert message.content[0].type == "text" and message.content[0].text == "fresh"


def test_upstream_silent_mid_stream_ends_with_a_timeout_error_event(
    upstream: tuple[ScriptedUpstream, str],
) -> None:
    scripted, upstream_url = upstream
    events = text_stream_events(["stalled"])[:4]
    # Silent for 30 s after its fourth event: a gateway that waited for it instead of timing
    # out after read_timeout would blow far past the bound below (no tight threshold).
    scripted.push(Reply(chunks=events, hang_after=30.0))
    with _gateway_stack(upstream_url, read_timeout=0.3) as (base_url, finished):
        started = time.monotonic()
        relayed = _post_stream(base_url)
        assert time.monotonic() - started < 3.0
        prefix = b"".join(events)
        assert relayed.startswith(prefix)
        error = _error_event(relayed[len(prefix) :])
        assert error["error"]["type"] == "timeout_error"
        # The id of the response's request-id header (the upstream's), as SDKs report it.
        assert error["request_id"] == _last_finished(finished).upstream_request_id
        assert error["request_id"] == UPSTREAM_REQUEST_ID
        assert finished[-1].error_type == "timeout_error"


def test_sdk_retries_529_honouring_retry_after(stack: Stack) -> None:
    overloaded = error_json("overloaded_error", "Overloaded")
    stack.upstream.push(
        Reply(status=529, body=overloaded, headers=[("retry-after", "1")]),
        Reply(body=message_json("second time lucky")),
    )
    with _client(stack.base_url, max_retries=2) as client:
        started = time.monotonic()
        message = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        elapsed = time.monotonic() - started
    assert message.content[0].type == "text" and message.content[0].text == "second time lucky"
    assert elapsed >= 0.9
    first, second = stack.upstream.received
    assert [
        first.headers["x-stainless-retry-count"],
        second.headers["x-stainless-retry-count"],
    ] == [
        "0",
        "1",
    ]
    assert first.body == second.body
    _wait_until(lambda: len(stack.finished) == 2)
    assert [context.status for context in stack.finished] == [529, 200]


def _stream_until_error(base_url: str) -> tuple[list[str], anthropic.APIStatusError]:
    """Consume an SDK stream that must fail; return the event types seen and the error."""
    seen: list[str] = []
    with (
        _client(base_url) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream,
    ):
        seen.extend(event.type for event in stream)
    return seen, caught.value


def test_mid_stream_error_event_raises_api_status_error(stack: Stack) -> None:
    events = text_stream_events(["partial"])[:4]
    error_body = {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_up",
    }
    upstream_events = [*events, sse("error", error_body)]
    stack.upstream.push(Reply(chunks=upstream_events), Reply(chunks=upstream_events))
    seen, error = _stream_until_error(stack.base_url)
    assert type(error) is anthropic.APIStatusError
    assert error.status_code == 200
    assert error.body == error_body
    assert "text" in seen
    context = _last_finished(stack.finished)
    assert context.error_type == "overloaded_error"
    assert _usage(context)[0] == 12
    # The upstream's error event ends the stream as it is: the gateway adds no second one.
    assert _post_stream(stack.base_url) == b"".join(upstream_events)


def _error_event(tail: bytes) -> dict[str, Any]:
    """Parse the one SSE ``error`` event that ``tail`` must consist of."""
    assert tail.startswith(b"event: error\ndata: ") and tail.endswith(b"\n\n")
    assert tail.count(b"\n\n") == 1
    error: dict[str, Any] = json.loads(tail.removeprefix(b"event: error\ndata: "))
    assert set(error) == {"type", "error", "request_id"} and error["type"] == "error"
    assert error["request_id"].startswith("req_")
    return error


def _dropping_upstream(events: list[bytes]) -> Callable[..., Any]:
    """An upstream that sends ``events`` and then breaks the connection (no final chunk)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        raise RuntimeError("upstream crashed mid-stream (expected by the test)")

    return app


def test_a_client_that_stops_reading_gives_its_upstream_connection_back() -> None:
    # One upstream connection in the pool. A client that opens a stream and reads nothing
    # would hold it for as long as it kept its socket open; after client_write_timeout the
    # gateway drops the stream, and the next request gets the connection.
    answered = itertools.count()
    upstream_closed = threading.Event()
    event = sse("content_block_delta", {"type": "content_block_delta", "pad": "x" * 65536})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if next(answered) > 0:
            await send({"type": "http.response.body", "body": b"".join(text_stream_events(["ok"]))})
            return
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        start = text_stream_events([])[0]
        await send({"type": "http.response.body", "body": start, "more_body": True})
        while not gone.is_set():  # as fast as the gateway takes it, until it hangs up
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.sleep(0)
        await watcher
        upstream_closed.set()

    body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": True})
    with (
        serve(app) as upstream_url,
        _gateway_stack(
            upstream_url, client_write_timeout=0.5, max_connections=1, pool_timeout=5.0
        ) as (base_url, finished),
    ):
        host, port = base_url.removeprefix("http://").split("/")[0].split(":")
        with socket.create_connection((host, int(port))) as stalled:
            head = (
                f"POST /anthropic/v1/messages HTTP/1.1\r\nhost: {host}\r\n"
                "content-type: application/json\r\nx-api-key: k\r\n"
                f"anthropic-version: 2023-06-01\r\ncontent-length: {len(body)}\r\n\r\n"
            )
            stalled.sendall((head + body).encode())
            assert upstream_closed.wait(10), "the stalled stream kept its upstream connection"
            assert b"event: content_block_delta" in _post_stream(base_url)
        stalled_request = next(c for c in finished if c.client_disconnected)
        assert stalled_request.status == 200


def test_upstream_dropping_mid_stream_ends_with_an_error_event() -> None:
    events = text_stream_events(["partial"])[:4]
    with (
        serve(_dropping_upstream(events)) as upstream_url,
        _gateway_stack(upstream_url) as (base_url, finished),
    ):
        relayed = _post_stream(base_url)
        prefix = b"".join(events)
        assert relayed.startswith(prefix)
        error = _error_event(relayed[len(prefix) :])
        assert error["error"]["type"] == "api_error"
        assert _last_finished(finished).error_type == "api_error"
        seen, sdk_error = _stream_until_error(base_url)
    assert "text" in seen
    assert sdk_error.status_code == 200
    assert isinstance(sdk_error.body, dict) and sdk_error.body["error"]["type"] == "api_error"


def test_upstream_ending_without_message_stop_ends_with_an_error_event(stack: Stack) -> None:
    stack.upstream.push(Reply(chunks=text_stream_events(["cut"])[:5]))
    seen, error = _stream_until_error(stack.base_url)
    assert "text" in seen and seen[-1] == "content_block_stop"
    assert error.status_code == 200
    assert isinstance(error.body, dict) and error.body["error"]["type"] == "api_error"
    assert _last_finished(stack.finished).error_type == "api_error"
    # The SDK reports the header's id; the event the gateway added names the same request.
    assert error.request_id == error.body["request_id"] == UPSTREAM_REQUEST_ID


def test_a_stream_opening_with_a_client_error_is_that_error_under_the_upstreams_id(
    stack: Stack,
) -> None:
    too_long = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "prompt is too long: 1 > 0"},
        "request_id": UPSTREAM_REQUEST_ID,
    }
    stack.upstream.push(Reply(chunks=[text_stream_events([])[0], sse("error", too_long)]))
    client = _client(stack.base_url)
    opened = client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO)
    with pytest.raises(anthropic.BadRequestError) as caught, opened as stream:
        stream.until_done()
    # The upstream's answer, under its id: the one a user would quote to Anthropic.
    assert caught.value.request_id == UPSTREAM_REQUEST_ID
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["request_id"] == UPSTREAM_REQUEST_ID
    assert caught.value.body["error"]["message"] == "prompt is too long: 1 > 0"


# The upstream sends its opening events and a first delta, then stays silent for 30 s: a gateway
# that did not hang up on it when the client left would miss the 3 s bound by a wide margin.
UPSTREAM_SILENCE = 30.0
PROMPTLY = 3.0


def test_client_disconnect_closes_the_upstream_promptly(stack: Stack) -> None:
    events = text_stream_events(["tick"] * 48)
    stack.upstream.push(Reply(chunks=events[:4], hang_after=UPSTREAM_SILENCE))
    body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": True})
    with httpx.Client() as http:
        request = http.build_request(
            "POST", f"{stack.base_url}/v1/messages", content=body, headers=SDK_HEADERS
        )
        answer = http.send(request, stream=True)
        first = next(answer.iter_raw())
        assert first.startswith(b"event: message_start\n")
        closed_at = time.monotonic()
        answer.close()
    _wait_until(lambda: bool(stack.upstream.disconnected_at), timeout=PROMPTLY)
    assert stack.upstream.disconnected_at[0] - closed_at <= PROMPTLY
    context = _last_finished(stack.finished)
    assert context.client_disconnected is True
    assert _usage(context) == (12, 1, 0, 0)
    assert len(stack.upstream.received) == 1
    # The pool stays healthy: the next request gets its own answer, not the old stream's tail.
    stack.upstream.push(Reply(chunks=text_stream_events(["next"])))
    assert _post_stream(stack.base_url) == b"".join(text_stream_events(["next"]))


def test_sdk_stream_closed_early_closes_the_upstream(stack: Stack) -> None:
    events = text_stream_events(["tick"] * 48)
    stack.upstream.push(Reply(chunks=events[:4], hang_after=UPSTREAM_SILENCE))
    with (
        _client(stack.base_url) as client,
        client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream,
    ):
        assert next(iter(stream)).type == "message_start"
        closed_at = time.monotonic()
    _wait_until(lambda: bool(stack.upstream.disconnected_at), timeout=PROMPTLY)
    assert stack.upstream.disconnected_at[0] - closed_at <= PROMPTLY
    assert _last_finished(stack.finished).client_disconnected is True


def test_an_sdk_client_leaving_before_the_final_usage_is_counted_for_what_it_read(
    stack: Stack,
) -> None:
    # The SDK reads the whole answer's text, then leaves before message_delta, which would
    # have reported the output: the usage (and so cost and token limits) counts the text, one
    # token per 4 bytes, not message_start's 1.
    pieces = [f"{index:02d} lorem ipsum dolor sit amet consetur. " for index in range(25)]
    events = text_stream_events(pieces)
    stack.upstream.push(Reply(chunks=events[: 3 + len(pieces)], hang_after=UPSTREAM_SILENCE))
    text = ""
    with (
        _client(stack.base_url) as client,
        client.messages.stream(model=MODEL, max_tokens=500, messages=HELLO) as stream,
    ):
        for event in stream:
            if event.type == "text":
                text += event.text
            if text == "".join(pieces):
                break
    _wait_until(lambda: bool(stack.upstream.disconnected_at), timeout=PROMPTLY)
    context = _last_finished(stack.finished)
    assert context.client_disconnected is True
    assert _usage(context) == (12, len(text) // 4, 0, 0) == (12, 250, 0, 0)
    assert context.usage.output_tokens_estimated is True


class _HeadStallingUpstream:
    """An upstream that holds back its response head for ``stall`` seconds (a long non-streamed
    generation, or a queued request), then answers "late"; records when the gateway hung up on
    it. With ``stalled_requests``, only that many requests stall: later ones get "fresh" at once.
    """

    def __init__(self, stall: float, *, stalled_requests: int | None = None) -> None:
        self.stall = stall
        self.stalled_requests = stalled_requests
        self.disconnected_at: list[float] = []
        self._requests = itertools.count()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass
        headers = [(b"content-type", b"application/json")]
        if self.stalled_requests is not None and next(self._requests) >= self.stalled_requests:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": message_json("fresh")})
            return
        watcher = asyncio.ensure_future(self._watch(receive))
        await asyncio.wait([watcher], timeout=self.stall)
        if watcher.done():
            return
        watcher.cancel()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": message_json("late")})

    async def _watch(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected_at.append(time.monotonic())


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_before_the_upstream_answers_closes_the_upstream(stream: bool) -> None:
    # Silent for 30 s: a gateway that kept waiting on it after the client left would miss the
    # PROMPTLY bound by a wide margin.
    stalling = _HeadStallingUpstream(stall=UPSTREAM_SILENCE)
    with serve(stalling) as upstream_url, _gateway_stack(upstream_url) as (base_url, finished):
        body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": stream})
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base_url}/v1/messages", content=body, headers=SDK_HEADERS, timeout=0.3)
        closed_at = time.monotonic()
        _wait_until(lambda: bool(finished), timeout=3.0)
        # The upstream server notices the hang-up on its own thread.
        _wait_until(lambda: bool(stalling.disconnected_at), timeout=PROMPTLY)
        assert stalling.disconnected_at, "the gateway kept waiting on the upstream"
        assert stalling.disconnected_at[0] - closed_at <= PROMPTLY
        assert finished[-1].client_disconnected is True


def _host_hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("host says hi")


def test_gateway_as_middleware_around_a_starlette_app(
    upstream: tuple[ScriptedUpstream, str],
) -> None:
    scripted, upstream_url = upstream
    finished: list[RequestContext] = []
    gateway = Gateway(
        GatewayConfig(upstream=UpstreamConfig(base_url=upstream_url)),
        on_request_end=finished.append,
    )
    host = Starlette(routes=[Route("/hello", _host_hello), Route("/llm-status", _host_hello)])
    with serve(MessagesMiddleware(host, gateway, prefix="/llm")) as url:
        with _client(url + "/llm") as client:
            message = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert message.to_dict() == json.loads(message_json())
        assert httpx.get(url + "/hello").text == "host says hi"
        assert httpx.get(url + "/llm-status").text == "host says hi"
    assert scripted.received[0].path == "/v1/messages"
    assert _last_finished(finished).path == "/v1/messages"


def test_standalone_gateway_served_directly(upstream: tuple[ScriptedUpstream, str]) -> None:
    scripted, upstream_url = upstream
    scripted.push(Reply(chunks=text_stream_events(["alone"])))
    gateway = Gateway(GatewayConfig(upstream=UpstreamConfig(base_url=upstream_url)))
    with serve(gateway) as url, _client(url) as client:
        with client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream:
            assert stream.get_final_text() == "alone"
        with pytest.raises(anthropic.NotFoundError):
            client.get("/anthropic/v1/messages", cast_to=object)
    assert [received.path for received in scripted.received] == ["/v1/messages"]


CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "x-api-key": "sk-ant-claude-code",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    "content-type": "application/json",
    "user-agent": "claude-cli/2.1.330 (external, cli)",
    "x-app": "cli",
    "anthropic-dangerous-direct-browser-access": "true",
}


def _claude_code_body() -> bytes:
    body = sample("agent_turn.json")
    extra_fields = b'{"context_management": {"edits": [{"type": "future_edit"}]}, "x_future": 1.50,'
    system_message = (
        b'"messages": [\n  {"role": "system", "content": [{"type": "future_block", "data": '
        b'{"k": "\\u00e9"}}, {"type": "text", "text": "Be brief."}]},'
    )
    edited = extra_fields + body[1:].replace(b'"messages": [', system_message, 1)
    assert json.loads(edited)["messages"][0]["role"] == "system"
    return edited


def test_claude_code_request_reaches_upstream_byte_identical(stack: Stack) -> None:
    body = _claude_code_body()
    events = text_stream_events(["ok"])
    stack.upstream.push(Reply(chunks=events))
    with httpx.stream(
        "POST",
        f"{stack.base_url}/v1/messages?beta=true",
        content=body,
        headers=CLAUDE_CODE_HEADERS,
    ) as answer:
        relayed = answer.read()
    assert answer.status_code == 200 and relayed == b"".join(events)
    [received] = stack.upstream.received
    assert received.body == body
    assert (received.path, received.query) == ("/v1/messages", "beta=true")
    for name, value in CLAUDE_CODE_HEADERS.items():
        if name != "content-type":
            assert received.headers[name] == value
    assert "authorization" not in received.headers
    assert _last_finished(stack.finished).path == "/v1/messages"


def test_head_api_hello_answers_2xx(stack: Stack) -> None:
    answer = httpx.head(f"{stack.base_url}/api/hello", headers=CLAUDE_CODE_HEADERS)
    assert 200 <= answer.status_code < 300
    assert answer.headers["request-id"].startswith("req_")
    assert stack.upstream.received == []


class _EncodingTransport(httpx2.HTTPTransport):
    """Sends the SDK's request with ``encoding`` as its content-encoding and ``encode``'s body,
    as Claude Code does with gzip."""

    def __init__(self, encoding: str, encode: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self._encoding, self._encode = encoding, encode

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = self._encode(request.read())
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
        headers += [(b"content-encoding", self._encoding.encode())]
        encoded = httpx2.Request(request.method, request.url, headers=headers, content=body)
        return super().handle_request(encoded)


@pytest.mark.parametrize(
    ("encoding", "encode", "raised", "code"),
    [
        (
            "gzip",
            lambda body: gzip.compress(body + b" " * 40_000_000),
            "RequestBodyTooLargeAfterDecodingError",
            "request_body_too_large_after_decoding",
        ),
        (
            "gzip",
            lambda body: b"\x1f\x8bnot gzip",
            "RequestBodyEncodingInvalidError",
            "request_body_encoding_invalid",
        ),
        (
            "br",
            lambda body: body,
            "RequestBodyEncodingUnsupportedError",
            "request_body_encoding_unsupported",
        ),
    ],
    ids=["too-large-once-decoded", "corrupt", "unsupported"],
)
def test_encoded_body_errors_raise_the_sdks_own_classes(
    stack: Stack, encoding: str, encode: Callable[[bytes], bytes], raised: str, code: str
) -> None:
    # SDK 2.x picks these classes by error.details.error_code, as Anthropic sends it.
    transport = _EncodingTransport(encoding, encode)
    client = anthropic.Anthropic(
        base_url=stack.base_url,
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert type(caught.value).__name__ == raised
    assert caught.value.error_code == code
    assert stack.upstream.received == []


def test_gzip_request_body_is_decompressed_before_forwarding(stack: Stack) -> None:
    body = sample("agent_turn.json")
    stack.upstream.push(Reply(chunks=text_stream_events(["unzipped"])))
    headers = {**CLAUDE_CODE_HEADERS, "content-encoding": "gzip"}
    answer = httpx.post(
        f"{stack.base_url}/v1/messages", content=gzip.compress(body), headers=headers
    )
    assert answer.status_code == 200
    [received] = stack.upstream.received
    assert received.body == body
    assert "content-encoding" not in received.headers
    assert received.headers["content-length"] == str(len(body))


def _keep_alive_reply() -> Reply:
    # After its first text the model is silent for 1.6 s; meanwhile the upstream writes an
    # SSE comment line every 0.4 s to keep the connection alive.
    events = text_stream_events(["a", "b"])
    opening, rest = events[:4], events[4:]
    keep_alives = [b": keep-alive\n"] * 4
    delays = [0.0] * len(opening) + [0.4] * len(keep_alives) + [0.0] * len(rest)
    return Reply(chunks=[*opening, *keep_alives, *rest], delay=delays)


def test_keep_alive_comments_keep_an_sdk_client_reading_through_the_gateway(stack: Stack) -> None:
    def streamed_text(base_url: str) -> str:
        # A read timeout longer than the keep-alive interval, shorter than the silence.
        client = anthropic.Anthropic(base_url=base_url, api_key="k", max_retries=0, timeout=1.0)
        with client.messages.stream(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            block = stream.get_final_message().content[0]
            assert block.type == "text"
            return block.text

    stack.upstream.push(_keep_alive_reply())
    assert streamed_text(stack.upstream_url) == "ab"  # straight to the upstream
    stack.upstream.push(_keep_alive_reply())
    assert streamed_text(stack.base_url) == "ab"  # and through the gateway


def test_an_sdk_never_follows_an_upstream_redirect_past_the_gateway() -> None:
    # The SDKs follow redirects with x-api-key and the body: the gateway's key would reach
    # whatever host an upstream's (or its CDN's) redirect names.
    from messages_mw.auth import ApiKeyConfig, AuthConfig

    elsewhere = ScriptedUpstream()
    with serve(elsewhere) as elsewhere_url:
        location = [("location", elsewhere_url + "/v1/messages")]
        upstream = ScriptedUpstream(Reply(status=307, body=b"", headers=location))
        with serve(upstream) as upstream_url:
            config = GatewayConfig(
                upstream=UpstreamConfig(base_url=upstream_url, api_key="sk-ant-operator"),
                auth=AuthConfig(mode="static", keys=(ApiKeyConfig(id="t", key="gateway-key"),)),
            )
            with serve(Gateway(config)) as gateway_url:
                client = anthropic.Anthropic(
                    base_url=gateway_url,
                    api_key="gateway-key",
                    max_retries=0,
                    default_headers={"x-api-key": "gateway-key"},
                )
                with pytest.raises(anthropic.InternalServerError) as raised:
                    client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    assert raised.value.status_code == 502
    assert elsewhere.received == []
