"""End to end through an OpenAI-compatible upstream, with the official Anthropic SDK as client.

Real loopback servers throughout: the SDK talks to a FastAPI host mounting the gateway, which
routes ``openai/...`` models to a mock OpenAI-compatible server (``tests.openai_upstream``) and
everything else to a scripted Anthropic upstream. Each test checks what the SDK hands its
caller and what the upstream received.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam

from messages_mw import (
    BreakerPolicy,
    FallbackConfig,
    Gateway,
    GatewayConfig,
    ModelPrice,
    RequestContext,
    UpstreamConfig,
)
from messages_mw.config import OpenAIUpstreamConfig

from .conftest import build_host_app
from .openai_upstream import ChatReply, OpenAIUpstream, completion_chunks, openai_error
from .servers import (
    Received,
    Reply,
    ScriptedUpstream,
    error_json,
    message_json,
    serve,
    text_stream_events,
)

HELLO: list[MessageParam] = [{"role": "user", "content": "Hello"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME: ToolParam = {
    "name": "get_time",
    "description": "Current time in a time zone.",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
ANTHROPIC_MODELS = {
    "data": [
        {
            "type": "model",
            "id": "claude-sonnet-4-6",
            "display_name": "Claude Sonnet 4.6",
            "created_at": "2025-01-01T00:00:00Z",
        }
    ],
    "has_more": False,
    "first_id": "claude-sonnet-4-6",
    "last_id": "claude-sonnet-4-6",
}
PRICES = {
    "gpt-4o": ModelPrice(input=2.5, output=10.0),
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.6),
}


def _anthropic_default(request: Received) -> Reply:
    if request.path.endswith("/v1/models"):
        return Reply(body=json.dumps(ANTHROPIC_MODELS).encode())
    return Reply(status=529, body=error_json("overloaded_error", "Overloaded"))


@dataclass
class OpenAIStack:
    openai: OpenAIUpstream
    anthropic: ScriptedUpstream
    base_url: str
    finished: list[RequestContext]

    def client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.base_url, api_key="sk-ant-client", max_retries=0)

    def sent(self) -> dict[str, Any]:
        """The last Chat Completions body the OpenAI upstream received."""
        return self.openai.received[-1].json


@pytest.fixture(scope="module")
def _servers() -> Iterator[OpenAIStack]:
    openai, scripted = OpenAIUpstream(), ScriptedUpstream(default=_anthropic_default)
    with serve(openai) as openai_url, serve(scripted) as anthropic_url:
        config = GatewayConfig(
            upstream=UpstreamConfig(base_url=anthropic_url, read_timeout=5.0),
            openai_upstreams={
                "openai": OpenAIUpstreamConfig(
                    base_url=openai_url + "/v1",
                    api_key="sk-openai",
                    models=("gpt-4o", "gpt-4o-mini"),
                    read_timeout=5.0,
                )
            },
            aliases={"fast": "openai/gpt-4o-mini"},
            pricing=PRICES,
            # The servers are shared by the module's tests: no circuit may open between them.
            fallback=FallbackConfig(
                router_strategy="cheapest", breaker=BreakerPolicy(failure_threshold=10_000)
            ),
        )
        finished: list[RequestContext] = []
        gateway = Gateway(config, on_request_end=finished.append)
        with serve(build_host_app(gateway)) as host_url:
            yield OpenAIStack(openai, scripted, host_url + "/anthropic", finished)


@pytest.fixture
def ostack(_servers: OpenAIStack) -> OpenAIStack:
    for recorded in (
        _servers.openai.received,
        _servers.openai.replies,
        _servers.anthropic.received,
        _servers.anthropic.replies,
        _servers.finished,
    ):
        recorded.clear()
    return _servers


def _last_finished(stack: OpenAIStack, model: str | None = None) -> RequestContext:
    """The last finished request (asking for ``model``, when given).

    on_request_end runs after the last byte went out, so the client can be ahead of it; and a
    previous test's request on the shared servers may still be finishing.
    """
    deadline = time.monotonic() + 2
    while True:
        matching = [c for c in stack.finished if model is None or c.model == model]
        if matching:
            return matching[-1]
        assert time.monotonic() < deadline, "the request never finished"
        time.sleep(0.005)


def _text(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def _tool_uses(message: anthropic.types.Message) -> list[tuple[str, object]]:
    return [(block.name, block.input) for block in message.content if block.type == "tool_use"]


@pytest.mark.parametrize("stream", [False, True])
def test_text_through_the_openai_provider(ostack: OpenAIStack, stream: bool) -> None:
    client = ostack.client()
    if stream:
        with client.messages.stream(model="openai/gpt-4o", max_tokens=64, messages=HELLO) as events:
            pieces = list(events.text_stream)
            message = events.get_final_message()
            headers = events.response.headers
        assert "".join(pieces) == "Echo: Hello"
    else:
        raw = client.messages.with_raw_response.create(
            model="openai/gpt-4o", max_tokens=64, messages=HELLO
        )
        message, headers = raw.parse(), raw.headers
    assert _text(message) == "Echo: Hello"
    assert message.stop_reason == "end_turn"
    assert message.id.startswith("msg_")
    assert message.usage.output_tokens >= 1
    assert (headers["x-mw-provider"], headers["x-mw-model"]) == ("openai", "gpt-4o")
    (received,) = ostack.openai.received
    assert received.path == "/v1/chat/completions"
    assert received.headers["authorization"] == "Bearer sk-openai"
    assert not [name for name in received.headers if name.startswith(("anthropic", "x-api"))]
    assert "sk-ant-client" not in json.dumps(received.headers)
    sent = ostack.sent()
    assert sent["model"] == "gpt-4o"
    assert sent["messages"] == [{"role": "user", "content": "Hello"}]
    assert bool(sent.get("stream")) is stream
    assert ostack.anthropic.received == []


@pytest.mark.parametrize("stream", [False, True])
def test_images_reach_the_upstream_as_data_urls(ostack: OpenAIStack, stream: bool) -> None:
    content: list[Any] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is this?"},
    ]
    messages: list[MessageParam] = [{"role": "user", "content": content}]
    message = _create(ostack.client(), stream, model="openai/gpt-4o", messages=messages)
    assert _text(message) == "Echo: What is this? (1 image(s))"
    parts = ostack.sent()["messages"][0]["content"]
    image = next(part for part in parts if part["type"] == "image_url")
    assert image["image_url"]["url"] == f"data:image/png;base64,{PNG}"


def _create(client: anthropic.Anthropic, stream: bool, **params: Any) -> anthropic.types.Message:
    params.setdefault("max_tokens", 256)
    if not stream:
        return client.messages.create(**params)
    with client.messages.stream(**params) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call(ostack: OpenAIStack, stream: bool) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    message = _create(
        ostack.client(), stream, model="openai/gpt-4o", messages=messages, tools=[WEATHER]
    )
    assert message.stop_reason == "tool_use"
    assert _tool_uses(message) == [("get_weather", {"city": "Paris"})]
    tool = ostack.sent()["tools"][0]
    assert tool["type"] == "function"
    assert tool["function"]["name"] == "get_weather"
    assert tool["function"]["parameters"] == WEATHER["input_schema"]


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_with_split_arguments(ostack: OpenAIStack, stream: bool) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "parallel: weather and time"}]
    message = _create(
        ostack.client(), stream, model="openai/gpt-4o", messages=messages, tools=[WEATHER, TIME]
    )
    assert message.stop_reason == "tool_use"
    assert _tool_uses(message) == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "Paris"}),
    ]
    ids = [block.id for block in message.content if block.type == "tool_use"]
    assert len(set(ids)) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_tool_results_go_back_as_tool_messages(ostack: OpenAIStack, stream: bool) -> None:
    messages: list[MessageParam] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "Sunny, 24C"}
            ],
        },
    ]
    message = _create(
        ostack.client(), stream, model="openai/gpt-4o", messages=messages, tools=[WEATHER]
    )
    assert _text(message) == "The tool said: Sunny, 24C"
    assert message.stop_reason == "end_turn"
    assistant, tool = ostack.sent()["messages"][1:]
    assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert tool["role"] == "tool"
    assert tool["tool_call_id"] == assistant["tool_calls"][0]["id"]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_are_passed_on(ostack: OpenAIStack, stream: bool) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "count one two STOP three"}]
    message = _create(
        ostack.client(), stream, model="openai/gpt-4o", messages=messages, stop_sequences=["STOP"]
    )
    assert _text(message) == "Echo: count one two "
    assert message.stop_reason == "end_turn"  # OpenAI does not say which sequence matched
    assert ostack.sent()["stop"] == ["STOP"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "error_type", "exception"),
    [
        (401, "invalid_request_error", anthropic.AuthenticationError),
        (429, "rate_limit_exceeded", anthropic.RateLimitError),
        (500, "server_error", anthropic.InternalServerError),
    ],
)
def test_upstream_errors_become_the_sdk_exceptions(
    ostack: OpenAIStack, stream: bool, status: int, error_type: str, exception: type[Exception]
) -> None:
    body = openai_error(f"upstream says {status}", error_type)
    ostack.openai.push(ChatReply(status=status, body=body, headers=[("retry-after", "0")]))
    with pytest.raises(exception) as caught:
        _create(ostack.client(), stream, model="openai/gpt-4o", messages=HELLO)
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert caught.value.status_code == status
    assert f"upstream says {status}" in caught.value.message


def test_a_stream_that_breaks_mid_way_ends_with_an_error_event(ostack: OpenAIStack) -> None:
    chunks = completion_chunks(["partial", " answer"])[:3]
    ostack.openai.push(ChatReply(chunks=chunks))
    with pytest.raises(anthropic.APIStatusError, match="before the response was complete"):
        _create(ostack.client(), True, model="openai/gpt-4o", messages=HELLO)


def test_count_tokens_is_local_and_counts_tools_and_images(ostack: OpenAIStack) -> None:
    client = ostack.client()
    plain = client.messages.count_tokens(model="openai/gpt-4o", messages=HELLO)
    content: list[Any] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "Hello"},
    ]
    rich = client.messages.count_tokens(
        model="openai/gpt-4o",
        messages=[{"role": "user", "content": content}],
        tools=[WEATHER, TIME],
    )
    with_tools = client.messages.count_tokens(model="fast", messages=HELLO, tools=[WEATHER, TIME])
    assert plain.input_tokens >= 1
    assert with_tools.input_tokens > plain.input_tokens + 20
    assert rich.input_tokens >= with_tools.input_tokens + 1_600
    assert ostack.openai.received == []


def test_models_list_includes_the_openai_models_and_terminates(ostack: OpenAIStack) -> None:
    client = ostack.client()
    expected = ["claude-sonnet-4-6", "openai/gpt-4o", "openai/gpt-4o-mini"]
    assert [model.id for model in client.models.list()] == expected
    assert [model.id for model in client.models.list(limit=2)] == expected
    assert client.models.retrieve("openai/gpt-4o-mini").display_name == "gpt-4o-mini"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("openai/gpt-5")


def test_a_slash_before_no_provider_is_part_of_the_model_id(ostack: OpenAIStack) -> None:
    # An OpenRouter-style or Bedrock id goes to the default upstream whole, which judges it
    # as Anthropic would, rather than a 404 from the gateway.
    ostack.anthropic.push(Reply(body=message_json(model="mistral/large")))
    raw = ostack.client().messages.with_raw_response.create(
        model="mistral/large", max_tokens=8, messages=HELLO
    )
    assert raw.headers["x-mw-provider"] == "anthropic"
    assert ostack.openai.received == []
    assert json.loads(ostack.anthropic.received[-1].body)["model"] == "mistral/large"


def test_an_alias_routes_to_its_target(ostack: OpenAIStack) -> None:
    raw = ostack.client().messages.with_raw_response.create(
        model="fast", max_tokens=8, messages=HELLO
    )
    assert _text(raw.parse()) == "Echo: Hello"
    assert (raw.headers["x-mw-provider"], raw.headers["x-mw-model"]) == ("openai", "gpt-4o-mini")
    assert ostack.sent()["model"] == "gpt-4o-mini"


@pytest.mark.parametrize("stream", [False, True])
def test_cross_provider_fallback_from_anthropic_to_openai(
    ostack: OpenAIStack, stream: bool
) -> None:
    params: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "messages": HELLO,
        "extra_body": {"fallbacks": ["openai/gpt-4o"]},
    }
    client = ostack.client()
    if stream:
        with client.messages.stream(**params) as events:
            message = events.get_final_message()
            headers = events.response.headers
    else:
        raw = client.messages.with_raw_response.create(**params)
        message, headers = raw.parse(), raw.headers
    assert _text(message) == "Echo: Hello"
    assert headers["x-mw-provider"] == "openai"
    assert headers["x-mw-model"] == "gpt-4o"
    assert headers["x-mw-fallback-used"] == "1"
    (to_anthropic,) = ostack.anthropic.received
    assert json.loads(to_anthropic.body)["model"] == "claude-sonnet-4-6"
    assert "fallbacks" not in json.loads(to_anthropic.body)
    assert ostack.sent()["model"] == "gpt-4o"
    attempts = [(a.target, a.status) for a in _last_finished(ostack).attempts]
    assert attempts == [("anthropic/claude-sonnet-4-6", 529), ("openai/gpt-4o", 200)]


def test_cross_provider_fallback_from_openai_to_anthropic(ostack: OpenAIStack) -> None:
    ostack.openai.push(ChatReply(status=503, body=openai_error("busy", "server_error")))
    ostack.anthropic.push(Reply(chunks=text_stream_events(["From ", "Claude"])))
    params: dict[str, Any] = {"extra_body": {"fallbacks": ["anthropic/claude-sonnet-4-6"]}}
    with ostack.client().messages.stream(
        model="openai/gpt-4o", max_tokens=64, messages=HELLO, **params
    ) as events:
        message = events.get_final_message()
        headers = events.response.headers
    assert _text(message) == "From Claude"
    assert (headers["x-mw-provider"], headers["x-mw-fallback-used"]) == ("anthropic", "1")


@pytest.mark.parametrize("stream", [False, True])
def test_router_candidates_with_the_cheapest_strategy(ostack: OpenAIStack, stream: bool) -> None:
    candidates = ["anthropic/claude-sonnet-4-6", "openai/gpt-4o", "openai/gpt-4o-mini"]
    message = _create(
        ostack.client(),
        stream,
        model="auto",
        messages=HELLO,
        extra_body={"router_candidates": candidates},
    )
    assert _text(message) == "Echo: Hello"
    sent = ostack.sent()
    assert sent["model"] == "gpt-4o-mini"
    assert "router_candidates" not in sent
    context = _last_finished(ostack, model="auto")
    assert (context.provider, context.served_model, context.model) == (
        "openai",
        "gpt-4o-mini",
        "auto",
    )
    assert ostack.anthropic.received == []


def test_a_client_leaving_while_an_openai_stream_is_held_frees_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging

    from .inprocess import post_then_leave
    from .servers import serve

    upstream = OpenAIUpstream()
    # The role chunk at once (the gateway's message_start), then the model is silent for 1 s:
    # the stream is held back, waiting for its first content, when the client leaves.
    upstream.push(ChatReply(chunks=completion_chunks([])[:1], hang_after=1))
    body = json.dumps(
        {
            "model": "openai/gpt-4o",
            "max_tokens": 16,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    with serve(upstream) as url:
        config = GatewayConfig(
            usage_log=False,
            upstream=UpstreamConfig(base_url="http://127.0.0.1:9"),
            openai_upstreams={"openai": OpenAIUpstreamConfig(base_url=url + "/v1")},
        )
        finished: list[RequestContext] = []
        gateway = Gateway(config, on_request_end=finished.append)

        async def scenario() -> tuple[int, int]:
            await post_then_leave(gateway, body, after=0.3)
            await asyncio.sleep(0.1)
            pool = gateway._providers["openai"]._transport._pool  # type: ignore[attr-defined]
            return len(pool._connections), pool._open

        with caplog.at_level(logging.ERROR, logger="messages_mw"):
            connections, slots = asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert finished[0].client_disconnected
    assert (connections, slots, finished[0].error_type, errors) == (0, 0, None, [])
