"""The OpenAI-compatible provider, its model directory and the routing that reaches it.

The provider talks to ``httpx.MockTransport`` handlers; nothing is patched. Translation itself
is tested in its own module: these tests check what goes upstream, what comes back, and the
streaming mechanics (pings, mid-stream failures, cancellation).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from messages_mw import AnthropicProvider, Gateway, GatewayConfig, UpstreamConfig
from messages_mw.config import ConfigError, OpenAIUpstreamConfig, load_config
from messages_mw.errors import (
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from messages_mw.fallback import Target
from messages_mw.pricing import ModelPrice, PricingTable
from messages_mw.providers.base import ProviderRequest, ProviderResponse
from messages_mw.providers.mock import MockProvider, estimate_input_tokens
from messages_mw.providers.openai import ModelDirectory, OpenAIProvider
from messages_mw.routing import FallbackConfig, TargetResolver
from messages_mw.translate import OpenAIQuirks

from .openai_upstream import (
    ToolCall,
    completion_chunks,
    completion_json,
    openai_error,
)
from .servers import message_json

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[httpx.Request], httpx.Response]
BASE_URL = "https://llm.example/v1"
CLIENT_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "tools-2024",
    "x-api-key": "sk-ant-client",
    "authorization": "Bearer sk-ant-client",
    "cookie": "session=1",
    "user-agent": "claude-cli/2.0",
    "x-stainless-lang": "python",
}


def _body(stream: bool = False, **fields: Any) -> bytes:
    payload: dict[str, Any] = {
        "model": "gpt-4o",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": stream,
    }
    payload.update(fields)
    return json.dumps(payload).encode()


def _request(
    body: bytes | None = None,
    *,
    path: str = "/v1/messages",
    method: str = "POST",
    stream: bool = False,
) -> ProviderRequest:
    return ProviderRequest(
        method=method,
        path=path,
        body=_body(stream) if body is None else body,
        headers=CLIENT_HEADERS,
        request_id="req_test",
        stream=stream,
    )


def _provider(handler: Handler, **settings: Any) -> OpenAIProvider:
    config = OpenAIUpstreamConfig(base_url=BASE_URL, **settings)
    return OpenAIProvider(config, transport=httpx.MockTransport(handler))


class _Chunks(httpx.AsyncByteStream):
    """A response body written chunk by chunk, after ``delay`` s each; ``fail`` raises after
    the chunks, as a connection that breaks mid-stream. ``waiting`` is set once a reader waits
    for a chunk."""

    def __init__(
        self,
        chunks: Sequence[bytes],
        delay: float = 0.0,
        fail: Exception | None = None,
        first_delay: float | None = None,
    ) -> None:
        self._chunks = chunks
        self._delay = delay
        self._first_delay = delay if first_delay is None else first_delay
        self._fail = fail
        self.closed = False
        self.waiting = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, chunk in enumerate(self._chunks):
            self.waiting.set()
            await asyncio.sleep(self._first_delay if index == 0 else self._delay)
            yield chunk
        if self._fail is not None:
            raise self._fail

    async def aclose(self) -> None:
        self.closed = True


def _sse_response(stream: httpx.AsyncByteStream) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)


async def _read(response: ProviderResponse) -> bytes:
    assert response.chunks is not None
    try:
        return b"".join([chunk async for chunk in response.chunks])
    finally:
        await response.close()


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        name = next(line[6:].strip() for line in lines if line.startswith("event:"))
        data = "".join(line[5:].strip() for line in lines if line.startswith("data:"))
        events.append((name, json.loads(data)))
    return events


async def test_sends_only_its_own_headers_to_chat_completions() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=completion_json("Hi"))

    provider = _provider(handler, api_key="sk-openai", extra_headers={"OpenAI-Project": "p1"})
    await provider.send(_request())
    (upstream,) = seen
    assert str(upstream.url) == BASE_URL + "/chat/completions"
    names = {name.lower() for name in upstream.headers}
    assert names == {
        "host",
        "content-type",
        "accept",
        "accept-encoding",
        "user-agent",
        "authorization",
        "openai-project",
        "content-length",
    }
    assert upstream.headers["authorization"] == "Bearer sk-openai"
    assert upstream.headers["openai-project"] == "p1"
    assert upstream.headers["accept"] == "application/json"
    assert upstream.headers["user-agent"] == "claude-cli/2.0"
    sent = json.loads(upstream.content)
    assert sent["model"] == "gpt-4o"
    assert sent["messages"][-1]["role"] == "user"
    assert "max_completion_tokens" in sent


async def test_a_query_in_the_base_url_follows_the_chat_completions_path() -> None:
    # Azure OpenAI's deployments take their api-version in the query.
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=completion_json("Hi"))

    base = "https://res.openai.azure.com/openai/deployments/gpt4o/?api-version=2024-10-21"
    config = OpenAIUpstreamConfig(base_url=base)
    await OpenAIProvider(config, transport=httpx.MockTransport(handler)).send(_request())
    (upstream,) = seen
    assert str(upstream.url) == (
        "https://res.openai.azure.com/openai/deployments/gpt4o/chat/completions"
        "?api-version=2024-10-21"
    )


async def test_without_a_key_no_credential_goes_upstream() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=completion_json("Hi"))

    request = ProviderRequest(
        "POST", "/v1/messages", _body(), CLIENT_HEADERS, "req_1", api_key="sk-virtual"
    )
    await _provider(handler).send(request)
    assert "authorization" not in seen[0].headers
    assert "x-api-key" not in seen[0].headers


async def test_quirks_shape_the_upstream_body() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=completion_json("Hi"))

    quirks = OpenAIQuirks(max_tokens_field="max_tokens")
    await _provider(handler, quirks=quirks).send(_request())
    assert seen[0]["max_tokens"] == 64
    assert "max_completion_tokens" not in seen[0]


async def test_a_completion_comes_back_as_an_anthropic_message() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')

    def handler(request: httpx.Request) -> httpx.Response:
        body = completion_json("Checking.", tool_calls=[call], finish_reason="tool_calls")
        return httpx.Response(200, content=body)

    response = await _provider(handler).send(_request())
    assert response.status == 200
    assert response.content_type == "application/json"
    message = json.loads(response.body or b"")
    assert message["id"].startswith("msg_") and len(message["id"]) > 20
    assert message["type"] == "message"
    assert message["model"] == "gpt-4o"
    assert message["stop_reason"] == "tool_use"
    text, tool = message["content"]
    assert text == {"type": "text", "text": "Checking."}
    assert tool["type"] == "tool_use" and tool["name"] == "get_weather"
    assert tool["input"] == {"city": "Paris"}
    assert message["usage"]["input_tokens"] == 11
    assert message["usage"]["output_tokens"] == 7


@pytest.mark.parametrize(
    ("status", "error_type", "anthropic_status", "anthropic_type"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error"),
        (401, "invalid_request_error", 401, "authentication_error"),
        (403, "permission_error", 403, "permission_error"),
        (404, "invalid_request_error", 404, "not_found_error"),
        (429, "rate_limit_exceeded", 429, "rate_limit_error"),
        (500, "server_error", 500, "api_error"),
        (503, "server_error", 503, "api_error"),
        (503, "overloaded", 529, "overloaded_error"),
    ],
)
async def test_upstream_errors_are_translated(
    status: int, error_type: str, anthropic_status: int, anthropic_type: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"retry-after": "7", "x-request-id": "req_x", "set-cookie": "a=b"}
        return httpx.Response(status, headers=headers, content=openai_error("No.", error_type))

    for stream in (False, True):
        response = await _provider(handler).send(_request(stream=stream))
        assert response.status == anthropic_status
        envelope = json.loads(response.body or b"")
        assert envelope["type"] == "error"
        assert envelope["error"]["type"] == anthropic_type
        assert ("retry-after", "7") in response.headers
        assert all(name not in ("set-cookie", "x-request-id") for name, _ in response.headers)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailableError),
        (httpx.ConnectTimeout("slow"), UpstreamTimeoutError),
        (httpx.ReadTimeout("slow"), UpstreamTimeoutError),
        (httpx.PoolTimeout("full"), OverloadedError),
    ],
)
async def test_transport_errors_map_like_the_anthropic_provider(
    raised: Exception, expected: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    with pytest.raises(expected):
        await _provider(handler).send(_request())


@pytest.mark.parametrize("status", [101, 99, 999])
async def test_a_status_that_ends_no_answer_is_an_unavailable_upstream(status: int) -> None:
    stream = _Chunks([b"{}"])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=stream)

    with pytest.raises(UpstreamUnavailableError, match=f"answered with status {status},"):
        await _provider(handler).send(_request())
    assert stream.closed


@pytest.mark.parametrize("status", [301, 307, 308])
async def test_a_redirect_is_an_unavailable_upstream_never_relayed(status: int) -> None:
    stream = _Chunks([b""])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, headers={"location": "https://elsewhere.test/"}, stream=stream
        )

    with pytest.raises(UpstreamUnavailableError, match=f"with a redirect \\({status}\\)"):
        await _provider(handler).send(_request())
    assert stream.closed


async def test_a_stream_is_translated_as_chunks_arrive() -> None:
    calls = [
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", '{"zone": "CET"}'),
    ]
    chunks = completion_chunks(["Let me ", "check."], tool_calls=calls, finish_reason="tool_calls")
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.headers["accept"] == "text/event-stream"
        return _sse_response(_Chunks(chunks))

    response = await _provider(handler).send(_request(stream=True))
    assert response.content_type.startswith("text/event-stream")
    events = _events(await _read(response))
    assert seen[0]["stream"] is True
    assert events[0][0] == "message_start"
    assert events[0][1]["message"]["id"].startswith("msg_")
    assert events[-1][0] == "message_stop"
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert [block["type"] for block in starts] == ["text", "tool_use", "tool_use"]
    assert [block["name"] for block in starts[1:]] == ["get_weather", "get_time"]
    partial: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            partial[data["index"]] = partial.get(data["index"], "") + data["delta"]["partial_json"]
    assert [json.loads(text) for _, text in sorted(partial.items())] == [
        {"city": "Paris"},
        {"zone": "CET"},
    ]
    (delta,) = [data for name, data in events if name == "message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] == 7


async def test_message_start_carries_the_local_input_estimate() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return _sse_response(_Chunks(completion_chunks(["Hi"], usage=None)))

    body = _body(stream=True)
    events = _events(await _read(await _provider(handler).send(_request(body, stream=True))))
    usage = events[0][1]["message"]["usage"]
    assert usage["input_tokens"] == estimate_input_tokens(body)


async def test_a_reply_without_usage_carries_the_same_estimate_as_a_stream() -> None:
    # Some local servers send no usage: the usage event must not say the prompt was free.
    def handler(request: httpx.Request) -> httpx.Response:
        answer = json.loads(completion_json("Hi"))
        del answer["usage"]
        return httpx.Response(200, json=answer)

    body = _body()
    response = await _provider(handler).send(_request(body))
    assert response.body is not None
    assert json.loads(response.body)["usage"]["input_tokens"] == estimate_input_tokens(body)


async def test_silence_is_filled_with_pings_only_after_message_start() -> None:
    chunks = completion_chunks(["Hello", " there"])
    # Silent for four ping intervals before the first chunk, then again after the second.
    delays = [0.12, 0.0, 0.12] + [0.0] * (len(chunks) - 3)

    class _Paced(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for delay, chunk in zip(delays, chunks, strict=True):
                await asyncio.sleep(delay)
                yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return _sse_response(_Paced())

    provider = _provider(handler, ping_interval=0.03)
    names = [name for name, _ in _events(await _read(await provider.send(_request(stream=True))))]
    assert names[0] == "message_start"
    assert "ping" in names
    assert names[-1] == "message_stop"


async def test_a_silent_upstream_sends_message_start_and_pings_before_its_first_chunk() -> None:
    # A reasoning model, or a long prefill: without them Claude Code's watchdogs see no body.
    stream = _Chunks(completion_chunks(["Hello"]), first_delay=0.15)
    provider = _provider(lambda request: _sse_response(stream), ping_interval=0.03)
    names = [name for name, _ in _events(await _read(await provider.send(_request(stream=True))))]
    assert names[0] == "message_start"
    assert "ping" in names[1 : names.index("content_block_start")]


@pytest.mark.parametrize("busy_with", ["comments", "reasoning"])
async def test_pings_while_the_upstream_sends_only_what_the_client_does_not_see(
    busy_with: str,
) -> None:
    # OpenRouter's ": OPENROUTER PROCESSING" keep-alives, or a reasoning model thinking for a
    # client that did not ask for thinking: the upstream is never silent for long, but the
    # client hears nothing for 40 chunks of it, eight ping intervals.
    if busy_with == "comments":
        unseen = b": OPENROUTER PROCESSING\n\n"
    else:
        unseen = _chunk({"reasoning_content": "Hmm. "})
    head, *rest = completion_chunks(["Hello"])
    stream = _Chunks([head, *[unseen] * 40, *rest], delay=0.01)
    provider = _provider(lambda request: _sse_response(stream), ping_interval=0.05)
    names = [name for name, _ in _events(await _read(await provider.send(_request(stream=True))))]
    assert "ping" in names[1 : names.index("content_block_start")]


async def test_the_stream_ends_at_message_stop_while_the_upstream_lingers() -> None:
    # message_stop is the last event (protocol.md 5.2): no pings after it, and no waiting for
    # an upstream that keeps its connection open after [DONE].
    class _Lingering(_Chunks):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in super().__aiter__():
                yield chunk
            await asyncio.sleep(60)

    lingering = _Lingering(completion_chunks(["Hi"]))
    provider = _provider(lambda request: _sse_response(lingering), ping_interval=0.01)
    response = await provider.send(_request(stream=True))
    names = [name for name, _ in _events(await asyncio.wait_for(_read(response), 5))]
    # Nothing after message_stop. (A ping before it is legitimate: on a loaded machine the
    # 10 ms interval can pass between two chunks.)
    assert names[-1] == "message_stop" and names.count("message_stop") == 1
    assert lingering.closed


async def test_the_upstream_body_is_read_to_its_end_after_done() -> None:
    # The chunked terminator often comes in a write of its own after [DONE]: a body left
    # unread would close the keep-alive connection, costing the next request a handshake.
    read_whole: list[bool] = []

    class _Tracked(_Chunks):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in super().__aiter__():
                yield chunk
            read_whole.append(True)

    stream = _Tracked([*completion_chunks(["Hi"]), b""], delay=0.02)
    provider = _provider(lambda request: _sse_response(stream), ping_interval=10)
    events = _events(await _read(await provider.send(_request(stream=True))))
    assert [name for name, _ in events][-1] == "message_stop"
    assert read_whole == [True]


async def test_a_stream_that_breaks_ends_with_an_error_event() -> None:
    chunks = completion_chunks(["Hello", " there"])[:3]

    def handler(request: httpx.Request) -> httpx.Response:
        return _sse_response(_Chunks(chunks, fail=httpx.ReadError("reset")))

    events = _events(await _read(await _provider(handler).send(_request(stream=True))))
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in events]


async def test_a_stalled_stream_ends_with_a_timeout_error_event() -> None:
    chunks = completion_chunks(["Hello"])[:2]

    def handler(request: httpx.Request) -> httpx.Response:
        return _sse_response(_Chunks(chunks, fail=httpx.ReadTimeout("stalled")))

    events = _events(await _read(await _provider(handler).send(_request(stream=True))))
    assert events[-1][1]["error"]["type"] == "timeout_error"


async def test_cancelling_a_stream_closes_the_upstream() -> None:
    stream = _Chunks(completion_chunks(["a", "b", "c"]), delay=10)

    def handler(request: httpx.Request) -> httpx.Response:
        return _sse_response(stream)

    response = await _provider(handler, ping_interval=10).send(_request(stream=True))
    assert response.chunks is not None
    chunks = response.chunks
    assert b"message_start" in await anext(chunks)  # sent before the upstream speaks
    reading = asyncio.Event()

    async def read_next() -> bytes:
        reading.set()
        return await anext(chunks)

    reader = asyncio.ensure_future(read_next())
    # Once both are set, the reader is suspended inside its read, which waits on the upstream.
    await asyncio.wait_for(reading.wait(), 5)
    await asyncio.wait_for(stream.waiting.wait(), 5)
    assert not reader.done()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await response.close()
    assert stream.closed


async def test_a_whole_completion_answering_a_stream_request_is_sent_as_the_stream() -> None:
    # A server that ignores stream: a 502 would make the SDK retry, each retry a whole
    # completion thrown away. The client gets the stream it asked for instead.
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=completion_json("Hi", tool_calls=[call]))

    events = _events(await _read(await _provider(handler).send(_request(stream=True))))
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert text == "Hi"
    arguments = "".join(
        d["delta"].get("partial_json", "") for n, d in events if n == "content_block_delta"
    )
    assert json.loads(arguments) == {"city": "Paris"}
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 7


async def test_an_error_in_a_whole_answer_to_a_stream_request_is_that_error() -> None:
    # A context overflow sent as a 200 JSON body keeps the wording Claude Code compacts on.
    overflow = openai_error(
        "This model's maximum context length is 8192 tokens.",
        "invalid_request_error",
        "context_length_exceeded",
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=overflow)

    with pytest.raises(InvalidRequestError, match="prompt is too long"):
        await _provider(handler).send(_request(stream=True))


async def test_a_stream_labelled_as_plain_text_is_still_translated() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = b"".join(completion_chunks(["Hel", "lo"]))
        return httpx.Response(200, content=body, headers={"content-type": "text/plain"})

    events = _events(await _read(await _provider(handler).send(_request(stream=True))))
    text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert text == "Hello" and events[-1][0] == "message_stop"


async def test_count_tokens_is_a_local_estimate() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("count_tokens must not reach the upstream")

    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A"}}
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
    plain = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]})
    rich = json.dumps(
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [image, {"type": "text", "text": "Hi"}]}],
            "tools": [tool],
        }
    )
    provider = _provider(handler)
    counts = []
    for body in (plain, rich):
        request = _request(body.encode(), path="/v1/messages/count_tokens")
        response = await provider.send(request)
        counts.append(json.loads(response.body or b"")["input_tokens"])
    assert counts[0] == estimate_input_tokens(plain.encode())
    assert counts[1] == estimate_input_tokens(rich.encode()) > counts[0] + 1_600
    with pytest.raises(InvalidRequestError):
        await provider.send(_request(b'{"model": "gpt-4o"}', path="/v1/messages/count_tokens"))


async def test_models_are_listed_with_the_provider_prefix() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("the model list is local")

    config = OpenAIUpstreamConfig(base_url=BASE_URL, models=("gpt-4o", "gpt-4o-mini"))
    provider = OpenAIProvider(config, name="oai", transport=httpx.MockTransport(handler))
    listed = json.loads(
        (await provider.send(_request(path="/v1/models", method="GET"))).body or b""
    )
    assert [model["id"] for model in listed["data"]] == ["oai/gpt-4o", "oai/gpt-4o-mini"]
    assert listed["has_more"] is False
    assert (listed["first_id"], listed["last_id"]) == ("oai/gpt-4o", "oai/gpt-4o-mini")
    one = await provider.send(_request(path="/v1/models/oai/gpt-4o-mini", method="GET"))
    assert json.loads(one.body or b"") == {
        "type": "model",
        "id": "oai/gpt-4o-mini",
        "display_name": "gpt-4o-mini",
        "created_at": "2025-01-01T00:00:00Z",
    }
    with pytest.raises(NotFoundError):
        await provider.send(_request(path="/v1/models/oai/gpt-5", method="GET"))
    with pytest.raises(MethodNotAllowedError):
        await provider.send(_request(path="/v1/models", method="POST"))
    with pytest.raises(MethodNotAllowedError):
        await provider.send(_request(path="/v1/messages", method="GET"))
    with pytest.raises(NotFoundError):
        await provider.send(_request(path="/v1/complete"))


async def test_aclose_closes_the_given_transport() -> None:
    closed: list[bool] = []

    class _Transport(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    provider = OpenAIProvider(
        OpenAIUpstreamConfig(base_url=BASE_URL),
        transport=_Transport(lambda request: httpx.Response(200)),
    )
    await provider.aclose()
    await provider.aclose()
    assert closed == [True, True]


def _directory(*models: str) -> ModelDirectory:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("listing is local")

    settings = OpenAIUpstreamConfig(base_url=BASE_URL, models=models)
    openai = OpenAIProvider(settings, transport=httpx.MockTransport(handler))
    return ModelDirectory(MockProvider(), {"openai": openai})


async def _list(directory: ModelDirectory, query: str = "") -> dict[str, Any]:
    request = ProviderRequest("GET", "/v1/models", b"", {}, "req_1", query=query)
    response = await directory.send(request)
    assert response.status == 200
    listed: dict[str, Any] = json.loads(response.body or b"")
    return listed


async def test_model_directory_appends_openai_models_to_the_last_page() -> None:
    directory = _directory("gpt-4o", "gpt-4o-mini", "o3")
    everything = await _list(directory)
    assert [m["id"] for m in everything["data"]] == [
        "claude-opus-5-5",
        "claude-sonnet-4-6",
        "claude-haiku-4-5",
        "openai/gpt-4o",
        "openai/gpt-4o-mini",
        "openai/o3",
    ]
    assert everything["has_more"] is False
    assert everything["last_id"] == "openai/o3"
    ids: list[str] = []
    query = "limit=2"
    while True:
        page = await _list(directory, query)
        assert len(page["data"]) <= 2
        ids += [m["id"] for m in page["data"]]
        if not page["has_more"]:
            break
        query = f"limit=2&after_id={page['last_id']}"
    assert ids == [m["id"] for m in everything["data"]]
    back = await _list(directory, "limit=1&before_id=openai/o3")
    assert [m["id"] for m in back["data"]] == ["openai/gpt-4o-mini"]
    assert back["has_more"] is True


async def test_model_directory_routes_single_models_by_prefix() -> None:
    directory = _directory("gpt-4o")
    for model_id in ("openai/gpt-4o", "claude-haiku-4-5"):
        request = ProviderRequest("GET", f"/v1/models/{model_id}", b"", {}, "req_1")
        assert json.loads((await directory.send(request)).body or b"")["id"] == model_id
    with pytest.raises(NotFoundError):
        await directory.send(ProviderRequest("GET", "/v1/models/openai/gpt-5", b"", {}, "r"))
    count = ProviderRequest("POST", "/v1/messages/count_tokens", _body(), {}, "r")
    assert (await directory.send(count)).status == 200
    await directory.aclose()


def test_resolver_aliases_and_unknown_providers() -> None:
    resolver = TargetResolver(
        ["anthropic", "openai"],
        "anthropic",
        FallbackConfig(),
        aliases={"fast": "openai/gpt-4o-mini", "claude-sonnet-4-6": "openai/gpt-4o"},
    )
    assert resolver.primary("fast") == Target("openai", "gpt-4o-mini")
    assert resolver.primary("claude-sonnet-4-6") == Target("openai", "gpt-4o")
    assert resolver.primary("claude-haiku-4-5") == Target("anthropic", "claude-haiku-4-5")
    assert resolver.routes_explicitly("fast")
    assert resolver.primary("mistral/large") == Target("anthropic", "mistral/large")
    with pytest.raises(InvalidRequestError, match="no model"):
        resolver.primary("openai/")
    with pytest.raises(ValueError, match="nowhere/x"):
        TargetResolver(["anthropic"], "anthropic", FallbackConfig(), aliases={"a": "nowhere/x"})


def _auto_resolver(**config: Any) -> TargetResolver:
    prices = PricingTable(
        {
            "gpt-4o": ModelPrice(input=2.5, output=10.0),
            "gpt-4o-mini": ModelPrice(input=0.15, output=0.6),
            "claude-sonnet-4-6": ModelPrice(input=3.0, output=15.0),
        }
    )
    return TargetResolver(
        ["anthropic", "openai"], "anthropic", FallbackConfig(**config), pricing=prices
    )


def test_auto_model_routes_among_candidates() -> None:
    candidates = ["anthropic/claude-sonnet-4-6", "openai/mystery", "openai/gpt-4o-mini"]
    body = _body(model="auto", router_candidates=candidates, other=1)
    first_healthy = _auto_resolver()
    stripped, routed = first_healthy.for_request(body, "auto")
    assert "router_candidates" not in json.loads(stripped)
    assert json.loads(stripped)["other"] == 1
    assert [t.name for t in routed.chain("auto", None)] == candidates
    cheapest = _auto_resolver(router_strategy="cheapest", default_chain=("openai/gpt-4o",))
    _, routed = cheapest.for_request(body, "auto")
    assert [t.name for t in routed.chain("auto", None)] == [
        "openai/gpt-4o-mini",
        "anthropic/claude-sonnet-4-6",
        "openai/mystery",
        "openai/gpt-4o",
    ]
    assert routed.primary("auto") == Target("openai", "gpt-4o-mini")
    assert cheapest.chain("claude-haiku-4-5", None)[0] == Target("anthropic", "claude-haiku-4-5")


def test_auto_model_candidates_from_config_and_errors() -> None:
    configured = _auto_resolver(router_candidates=("openai/gpt-4o", "openai/gpt-4o-mini"))
    body = _body(model="auto")
    assert configured.for_request(body, "auto") == (body, configured)
    assert configured.primary("auto") == Target("openai", "gpt-4o")
    unrouted = _auto_resolver()
    with pytest.raises(InvalidRequestError, match="router_candidates"):
        unrouted.chain("auto", None)
    nulled, same = unrouted.for_request(_body(model="auto", router_candidates=None), "auto")
    assert same is unrouted and b"router_candidates" not in nulled
    with pytest.raises(InvalidRequestError) as not_a_list:
        unrouted.for_request(_body(model="auto", router_candidates="openai/x"), "auto")
    assert not_a_list.value.message == "router_candidates: Expected `array | null`, got `str`"
    with pytest.raises(InvalidRequestError) as not_a_name:
        unrouted.for_request(_body(model="auto", router_candidates=["openai/x", 5]), "auto")
    assert not_a_name.value.message == "router_candidates.1: Expected `str`, got `int`"
    with pytest.raises(InvalidRequestError, match="at most 8"):
        unrouted.for_request(_body(model="auto", router_candidates=["openai/x"] * 9), "auto")
    # As a requested model: a slash before no provider of ours belongs to the model id.
    _, elsewhere = unrouted.for_request(
        _body(model="auto", router_candidates=["nowhere/x"]), "auto"
    )
    assert elsewhere.candidates == (Target("anthropic", "nowhere/x"),)
    untouched = _body(model="gpt-4o", router_candidates=["openai/x"])
    assert unrouted.for_request(untouched, "gpt-4o") == (untouched, unrouted)
    off = _auto_resolver(auto_model=None)
    assert off.primary("auto") == Target("anthropic", "auto")


def test_provider_names_must_not_collide() -> None:
    openai = OpenAIUpstreamConfig(base_url=BASE_URL)
    with pytest.raises(ConfigError, match="backup"):
        Gateway(
            GatewayConfig(
                upstreams={"backup": UpstreamConfig()}, openai_upstreams={"backup": openai}
            )
        )
    with pytest.raises(ConfigError, match="anthropic"):
        Gateway(GatewayConfig(openai_upstreams={"anthropic": openai}))


def test_provider_names_cannot_hold_a_slash() -> None:
    # A target is provider/model, split at the first slash: "team/eu" could never be named,
    # and an attempt at "team/eu/claude-x" would be priced as model "eu/claude-x".
    with pytest.raises(ConfigError, match="team/eu"):
        Gateway(GatewayConfig(upstreams={"team/eu": UpstreamConfig()}))
    with pytest.raises(ConfigError, match="team/eu"):
        Gateway(GatewayConfig(), providers={"team/eu": MockProvider()})


def test_openai_upstreams_load_from_toml(tmp_path: Any) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        """
[aliases]
fast = "local/qwen3"

[openai_upstreams.local]
base_url = "http://127.0.0.1:11434/v1"
models = ["qwen3"]
extra_headers = { "x-team" = "a" }

[openai_upstreams.local.quirks]
max_tokens_field = "max_tokens"
supports_images = false
"""
    )
    config = load_config(path)
    local = config.openai_upstreams["local"]
    assert local.quirks == OpenAIQuirks(max_tokens_field="max_tokens", supports_images=False)
    assert local.models == ("qwen3",)
    assert config.aliases == {"fast": "local/qwen3"}
    path.write_text('[openai_upstreams.local]\nbase_url = "http://x"\nmodel = "typo"\n')
    with pytest.raises(ConfigError, match="model"):
        load_config(path)
    assert msgspec.structs.asdict(OpenAIUpstreamConfig(base_url="x"))["ping_interval"] == 10.0


async def test_a_body_without_a_model_string_is_rejected_before_sending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with pytest.raises(InvalidRequestError):
        await _provider(handler).send(_request(b'{"model": 5}'))


async def test_extra_headers_may_set_the_user_agent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=completion_json("Hi"))

    await _provider(handler, extra_headers={"User-Agent": "team-bot/1"}).send(_request())
    assert seen[0].headers.get_list("user-agent") == ["team-bot/1"]


async def test_a_compressed_stream_is_decoded() -> None:
    raw = b"".join(completion_chunks(["Zipped"]))

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, content=gzip.compress(raw))

    events = _events(await _read(await _provider(handler).send(_request(stream=True))))
    texts = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert "".join(texts) == "Zipped"
    assert events[-1][0] == "message_stop"


async def test_a_body_that_breaks_while_read_is_an_upstream_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, stream=_Chunks([b'{"error": '], fail=httpx.ReadError("reset")))

    with pytest.raises(UpstreamUnavailableError):
        await _provider(handler).send(_request())


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 6])
async def test_model_directory_pages_through_everything(limit: int) -> None:
    directory = _directory("gpt-4o", "gpt-4o-mini", "o3")
    ids: list[str] = []
    query = f"limit={limit}"
    for _ in range(10):
        page = await _list(directory, query)
        assert len(page["data"]) <= limit
        ids += [m["id"] for m in page["data"]]
        if not page["has_more"]:
            break
        query = f"limit={limit}&after_id={page['last_id']}"
    assert ids[:3] == ["claude-opus-5-5", "claude-sonnet-4-6", "claude-haiku-4-5"]
    assert ids[3:] == ["openai/gpt-4o", "openai/gpt-4o-mini", "openai/o3"]


async def test_model_directory_keeps_fields_it_does_not_know_on_the_page_it_extends() -> None:
    # Forward compatibility: extending the default provider's last page changes its data,
    # has_more and ids, and nothing else of what the upstream sent.
    page = {
        "data": [{"type": "model", "id": "claude-x", "display_name": "X", "created_at": "t"}],
        "has_more": False,
        "first_id": "claude-x",
        "last_id": "claude-x",
        "next_page_hint": {"cursor": "abc"},
    }
    upstream = ProviderResponse(200, [], body=json.dumps(page).encode())
    settings = OpenAIUpstreamConfig(base_url=BASE_URL, models=("gpt-4o",))
    directory = ModelDirectory(_Answering(upstream), {"openai": OpenAIProvider(settings)})
    listed = await _list(directory)
    assert listed["next_page_hint"] == {"cursor": "abc"}
    assert [m["id"] for m in listed["data"]] == ["claude-x", "openai/gpt-4o"]
    assert (listed["first_id"], listed["last_id"], listed["has_more"]) == (
        "claude-x",
        "openai/gpt-4o",
        False,
    )


class _Answering:
    """A default provider answering every request with one fixed response."""

    def __init__(self, response: ProviderResponse) -> None:
        self.response = response

    async def send(self, request: ProviderRequest) -> ProviderResponse:
        return self.response

    async def aclose(self) -> None:
        """Nothing to release."""


@pytest.mark.parametrize(
    "response",
    [
        ProviderResponse(401, [], body=b'{"type":"error"}'),
        ProviderResponse(200, [], body=b"not json"),
        ProviderResponse(200, [], body=b'{"data": [], "has_more": true}'),
    ],
)
async def test_model_directory_leaves_other_answers_alone(response: ProviderResponse) -> None:
    settings = OpenAIUpstreamConfig(base_url=BASE_URL, models=("gpt-4o",))
    directory = ModelDirectory(_Answering(response), {"openai": OpenAIProvider(settings)})
    request = ProviderRequest("GET", "/v1/models", b"", {}, "req_1", query="limit=oops")
    assert await directory.send(request) is response


def test_auto_model_can_be_turned_off_from_a_config_file(tmp_path: Path) -> None:
    # TOML has no null: an empty name is how a file says "no router", so a model called
    # "auto" (an OpenRouter-style upstream's own router) goes upstream like any other.
    path = tmp_path / "gw.toml"
    path.write_text('[fallback]\nauto_model = ""\n')
    off = TargetResolver(["anthropic"], "anthropic", load_config(path).fallback)
    assert not off.is_auto("auto") and not off.is_auto("")
    assert off.primary("auto") == Target("anthropic", "auto")


def test_only_the_first_slash_names_a_provider() -> None:
    # As the docs say: an id that itself starts with a provider name (OpenRouter's
    # "anthropic/claude-...") reaches the upstream whole once the client names the provider.
    resolver = TargetResolver(["anthropic", "openrouter"], "anthropic", FallbackConfig())
    assert resolver.primary("anthropic/claude-x") == Target("anthropic", "claude-x")
    assert resolver.primary("openrouter/anthropic/claude-x") == Target(
        "openrouter", "anthropic/claude-x"
    )
    assert resolver.primary("anthropic/anthropic/claude-x") == Target(
        "anthropic", "anthropic/claude-x"
    )
    assert resolver.primary("meta-llama/x") == Target("anthropic", "meta-llama/x")


def _overloaded(request: httpx.Request) -> httpx.Response:
    return httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error"}})


def _never(request: httpx.Request) -> httpx.Response:
    raise AssertionError("nothing may be sent")


def _anthropic(handler: Handler) -> AnthropicProvider:
    settings = UpstreamConfig(base_url="http://anthropic.test")
    return AnthropicProvider(settings, transport=httpx.MockTransport(handler))


async def _post_server_tool(gateway: Gateway) -> httpx.Response:
    # A server tool: fine for Anthropic targets, inexpressible in Chat Completions.
    body = _body(tools=[{"type": "web_search_20250305", "name": "web_search"}])
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.post("/v1/messages", content=body, headers=CLIENT_HEADERS)


async def test_a_chain_moves_past_an_openai_target_that_cannot_express_the_request() -> None:
    def served(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=message_json("claude-haiku-4-5"))

    chain = ("openai/gpt-4o", "backup/claude-haiku-4-5")
    providers = {
        "anthropic": _anthropic(_overloaded),
        "openai": _provider(_never),
        "backup": _anthropic(served),
    }
    config = GatewayConfig(fallback=FallbackConfig(default_chain=chain))
    async with Gateway(config, providers=providers) as gateway:
        response = await _post_server_tool(gateway)
    assert response.status_code == 200
    assert response.headers["x-mw-provider"] == "backup"
    assert response.headers["x-mw-fallback-used"] == "1"


async def test_a_refusing_last_target_leaves_the_primarys_retryable_error() -> None:
    providers = {"anthropic": _anthropic(_overloaded), "openai": _provider(_never)}
    config = GatewayConfig(fallback=FallbackConfig(default_chain=("openai/gpt-4o",)))
    async with Gateway(config, providers=providers) as gateway:
        response = await _post_server_tool(gateway)
    # The 529 its SDK retries, not a 400 about what the fallback target cannot express.
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"


def _reasoning_stream(request: httpx.Request) -> httpx.Response:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Hmm."}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]},
    ]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return _sse_response(httpx.ByteStream(body + b"data: [DONE]\n\n"))


def _reasoning_reply(request: httpx.Request) -> httpx.Response:
    message = {"role": "assistant", "reasoning_content": "Hmm.", "content": "Hi"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return httpx.Response(200, json={"choices": [choice]})


@pytest.mark.parametrize("stream", [True, False])
async def test_reasoning_is_shown_only_when_the_client_asked_for_thinking(stream: bool) -> None:
    # Anthropic answers with thinking blocks only when asked: a client reading content[0].text
    # must not find a reasoning model's thinking there instead.
    handler = _reasoning_stream if stream else _reasoning_reply

    async def content_types(**fields: Any) -> list[str]:
        request = _request(_body(stream, **fields), stream=stream)
        response = await _provider(handler).send(request)
        if stream:
            starts = [d for n, d in _events(await _read(response)) if n == "content_block_start"]
            return [start["content_block"]["type"] for start in starts]
        assert response.body is not None
        return [block["type"] for block in json.loads(response.body)["content"]]

    assert await content_types() == ["text"]
    assert await content_types(thinking={"type": "disabled"}) == ["text"]
    enabled = {"type": "enabled", "budget_tokens": 2048}
    assert await content_types(thinking=enabled) == ["thinking", "text"]


async def test_reasoning_kept_for_the_server_is_shown_without_a_thinking_request() -> None:
    # reasoning_history sends it back upstream, so the client must hold it to send it back.
    def provider() -> OpenAIProvider:
        quirks = OpenAIQuirks(reasoning_history="reasoning_content")
        config = OpenAIUpstreamConfig(base_url=BASE_URL, quirks=quirks)
        return OpenAIProvider(config, transport=httpx.MockTransport(_reasoning_reply))

    response = await provider().send(_request(_body()))
    assert response.body is not None
    assert [block["type"] for block in json.loads(response.body)["content"]] == ["thinking", "text"]


def _chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, usage: Any = None
) -> bytes:
    choices = (
        []
        if delta is None and finish is None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    )
    data: dict[str, Any] = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": choices,
    }
    if usage is not None:
        data["usage"] = usage
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _openai_gateway(content: bytes, *, stream: bool) -> tuple[Gateway, list[Any]]:
    from messages_mw import RequestContext

    settings = OpenAIUpstreamConfig(base_url="http://local.test/v1")
    content_type = "text/event-stream" if stream else "application/json"
    provider = OpenAIProvider(
        settings,
        name="local",
        transport=httpx.MockTransport(
            lambda request: httpx.Response(
                200, content=content, headers={"content-type": content_type}
            )
        ),
    )
    finished: list[RequestContext] = []
    gateway = Gateway(
        GatewayConfig(openai_upstreams={"local": settings}, usage_log=False),
        providers={"local": provider},
        on_request_end=finished.append,
    )
    return gateway, finished


def _post_to(gateway: Gateway, body: bytes) -> httpx.Response:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(gateway)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.post(
                "/v1/messages", content=body, headers={"content-type": "application/json"}
            )

    return asyncio.run(post())


def _through_aborted_stream(text: str, usage: dict[str, Any]) -> tuple[list[Any], httpx.Response]:
    """A stream request answered vLLM's way when it aborts: ``text``, finish_reason
    "abort", the include_usage chunk with ``usage``, then [DONE]."""
    content = (
        _chunk({"role": "assistant", "content": text})
        + _chunk({}, "abort")
        + _chunk(usage=usage)
        + b"data: [DONE]\n\n"
    )
    gateway, finished = _openai_gateway(content, stream=True)
    return finished, _post_to(gateway, _body(model="local/gpt-4o", stream=True))


def test_a_stream_the_upstream_aborts_keeps_the_usage_it_reported() -> None:
    # vLLM-style: finish_reason "abort", then the include_usage chunk, then [DONE]. The
    # client gets an error event; the gateway still records what the upstream counted.
    reported = {
        "prompt_tokens": 5000,
        "completion_tokens": 300,
        "total_tokens": 5300,
        "prompt_tokens_details": {"cached_tokens": 4000},
    }
    finished, response = _through_aborted_stream("Hello there", reported)
    assert response.status_code == 200 and b"event: error" in response.content
    usage = finished[0].usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (
        1000,
        4000,
        300,
    )
    assert not usage.output_tokens_estimated


def test_a_stream_the_upstream_aborts_before_any_content_is_an_http_error() -> None:
    # vLLM aborts (preemption, shutdown) before the first token, then sends the usage chunk
    # the gateway asks for. The usage goes out ahead of the error event, and must not commit
    # the stream: the client gets the error status its SDK retries (and a chain falls back),
    # not a 200 whose only news is an error event.
    usage = {"prompt_tokens": 50, "completion_tokens": 0, "total_tokens": 50}
    finished, response = _through_aborted_stream("", usage)
    assert response.status_code == 502, response.content[:300]
    (attempt,) = finished[0].attempts
    assert attempt.usage is not None and attempt.usage.input_tokens == 50


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'data: {"error": {"message": "slow down", "type": "rate_limit_error"}}\n\n', 429),
        (b"", 502),
    ],
    ids=["error-chunk", "nothing"],
)
def test_a_stream_failing_before_the_upstream_said_anything_bills_nothing(
    content: bytes, status: int
) -> None:
    # Only the gateway's own message_start, with its input estimate, was held: the upstream
    # reported no usage (a refusal bills none), so none goes on the failed attempt, which
    # token limits and spend would count beside the answer of a fallback.
    gateway, finished = _openai_gateway(content, stream=True)
    response = _post_to(gateway, _body(model="local/gpt-4o", stream=True))
    assert response.status_code == status
    (attempt,) = finished[0].attempts
    assert attempt.usage is None


def test_an_answer_the_upstream_aborts_keeps_its_usage_on_the_attempt() -> None:
    # A JSON answer ending in finish_reason "abort" is a 502 (or the next target's answer),
    # but the upstream counted it: its usage stays on that attempt's record.
    from messages_mw.streaming import TokenUsage

    answer = {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "finish_reason": "abort",
                "message": {"role": "assistant", "content": "Hel"},
            }
        ],
        "usage": {
            "prompt_tokens": 5000,
            "completion_tokens": 300,
            "total_tokens": 5300,
            "prompt_tokens_details": {"cached_tokens": 4000},
        },
    }
    gateway, finished = _openai_gateway(json.dumps(answer).encode(), stream=False)
    assert _post_to(gateway, _body(model="local/gpt-4o")).status_code == 502
    (attempt,) = finished[0].attempts
    assert attempt.usage == TokenUsage(
        input_tokens=1000, output_tokens=300, cache_read_input_tokens=4000
    )


@pytest.mark.parametrize("usage", [None, {}, {"prompt_tokens": 12, "completion_tokens": None}])
@pytest.mark.parametrize("stream", [True, False])
def test_counts_the_upstream_never_reported_are_flagged_as_estimates(
    stream: bool, usage: dict[str, Any] | None
) -> None:
    # A server that ignores include_usage (or stream_usage off), or sends usage without the
    # counts: the translation estimates them, and the usage event must say so, as for a
    # stream cut short.
    text = "Hello there, how are you?"
    with_usage = {} if usage is None else {"usage": usage}
    if stream:
        content = (
            _chunk({"role": "assistant", "content": text})
            + _chunk({}, "stop")
            + (b"data: " + json.dumps({"choices": [], **with_usage}).encode() + b"\n\n")
            + b"data: [DONE]\n\n"
        )
    else:
        message = {"role": "assistant", "content": text}
        content = json.dumps(
            {
                "id": "c1",
                "object": "chat.completion",
                "model": "gpt-4o",
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                **with_usage,
            }
        ).encode()
    gateway, finished = _openai_gateway(content, stream=stream)
    assert _post_to(gateway, _body(model="local/gpt-4o", stream=stream)).status_code == 200
    assert finished[0].usage.output_tokens == 7  # (25 characters + 3) // 4
    assert finished[0].usage.output_tokens_estimated


@pytest.mark.parametrize("stream", [True, False])
def test_the_response_model_is_the_snapshot_the_upstream_named(stream: bool) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    if stream:
        chunk = json.loads(_chunk({"role": "assistant", "content": "Hi"})[6:])
        chunk["model"] = "gpt-4o-2024-08-06"
        content = (
            b"data: "
            + json.dumps(chunk).encode()
            + b"\n\n"
            + _chunk({}, "stop", usage)
            + b"data: [DONE]\n\n"
        )
    else:
        message = {"role": "assistant", "content": "Hi"}
        content = json.dumps(
            {
                "id": "c1",
                "object": "chat.completion",
                "model": "gpt-4o-2024-08-06",
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                "usage": usage,
            }
        ).encode()
    gateway, finished = _openai_gateway(content, stream=stream)
    response = _post_to(gateway, _body(model="local/gpt-4o", stream=stream))
    assert response.status_code == 200
    assert finished[0].response_model == "gpt-4o-2024-08-06"
    assert not finished[0].usage.output_tokens_estimated


async def test_the_clients_trace_context_reaches_a_self_hosted_server() -> None:
    # traceparent was dropped, so vLLM behind the gateway could not join the client's trace.
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=completion_json("Hi"))

    traced = {
        **CLIENT_HEADERS,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=opaque",
    }
    request = msgspec.structs.replace(_request(), headers=traced)
    await _provider(handler).send(request)
    assert seen[0].headers["traceparent"] == traced["traceparent"]
    assert seen[0].headers["tracestate"] == "vendor=opaque"
