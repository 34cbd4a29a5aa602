"""The mock provider, called directly: wire shapes, limits, SSE grammar, pacing, and the SDK."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages_mw.config import MockConfig, ModelConfig
from messages_mw.errors import InvalidRequestError, MethodNotAllowedError, NotFoundError
from messages_mw.providers.base import ProviderRequest, ProviderResponse
from messages_mw.providers.mock import MockProvider, estimate_input_tokens

_MODEL = "claude-sonnet-4-6"
_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "metric": {"type": "boolean"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}},
                "required": ["lat"],
            },
            "note": {"type": "string"},
        },
        "required": ["city", "days", "metric", "unit", "where"],
    },
}
_EXPECTED_WEATHER_INPUT = {
    "city": "mock",
    "days": 1,
    "metric": True,
    "unit": "celsius",
    "where": {"lat": 1},
}
_CLOCK_TOOL = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
_IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}


def _body(text: str = "Hello there, mock!", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": _MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
    }
    body.update(fields)
    return body


def _send(
    provider: MockProvider,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    method: str = "POST",
    query: str = "",
) -> ProviderResponse:
    raw = json.dumps(body).encode() if body is not None else b""
    request = ProviderRequest(method, path, raw, {}, "req_test", query=query)
    return asyncio.run(provider.send(request))


def _message(body: dict[str, Any], provider: MockProvider | None = None) -> dict[str, Any]:
    response = _send(provider or MockProvider(), "/v1/messages", body)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.body is not None
    result: dict[str, Any] = json.loads(response.body)
    return result


def _collect(response: ProviderResponse) -> list[bytes]:
    async def drain() -> list[bytes]:
        assert response.chunks is not None
        try:
            return [chunk async for chunk in response.chunks]
        finally:
            await response.close()

    return asyncio.run(drain())


def _stream(body: dict[str, Any], provider: MockProvider | None = None) -> list[bytes]:
    response = _send(provider or MockProvider(), "/v1/messages", {**body, "stream": True})
    assert response.status == 200
    assert response.headers == [
        ("content-type", "text/event-stream; charset=utf-8"),
        ("cache-control", "no-cache"),
    ]
    assert response.body is None
    return _collect(response)


def _parse_sse(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """Parse chunks into (event name, data); each chunk must hold exactly one event."""
    events = []
    for chunk in chunks:
        assert chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1
        name_line, data_line = chunk.decode().removesuffix("\n\n").split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        events.append((name_line[len("event: ") :], json.loads(data_line[len("data: ") :])))
    return events


_DELTA_FOR_BLOCK = {
    "text": {"text_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
}


def _check_block(events: list[tuple[str, dict[str, Any]]], index: int) -> dict[str, Any]:
    """Check one block's start/deltas/stop and rebuild it the way the SDKs accumulate."""
    name, data = events[0]
    assert (name, data["index"]) == ("content_block_start", index)
    block = dict(data["content_block"])
    partial_json = ""
    deltas = [data for name, data in events[1:-1] if name != "ping"]
    assert all(name in ("content_block_delta", "ping") for name, _ in events[1:-1])
    for delta_event in deltas:
        assert delta_event["index"] == index
        delta = delta_event["delta"]
        assert delta["type"] in _DELTA_FOR_BLOCK[block["type"]]
        if delta["type"] == "text_delta":
            block["text"] += delta["text"]
        elif delta["type"] == "thinking_delta":
            block["thinking"] += delta["thinking"]
        elif delta["type"] == "signature_delta":
            block["signature"] = delta["signature"]
        else:
            partial_json += delta["partial_json"]
    if block["type"] == "tool_use":
        assert block["input"] == {}
        block["input"] = json.loads(partial_json) if partial_json else {}
    if block["type"] == "thinking":
        assert deltas[-1]["delta"]["type"] == "signature_delta"
        assert sum(d["delta"]["type"] == "signature_delta" for d in deltas) == 1
    assert events[-1] == ("content_block_stop", {"type": "content_block_stop", "index": index})
    return block


def _check_grammar(chunks: list[bytes]) -> dict[str, Any]:
    """Check the Anthropic event grammar and return the accumulated message."""
    events = _parse_sse(chunks)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[-1] == "message_stop" and names.count("message_stop") == 1
    assert names[-2] == "message_delta" and names.count("message_delta") == 1
    message = dict(events[0][1]["message"])
    assert message["content"] == [] and message["stop_reason"] is None
    assert message["usage"]["input_tokens"] > 0 and message["usage"]["output_tokens"] == 1
    starts = [i for i, name in enumerate(names) if name == "content_block_start"]
    stops = [i for i, name in enumerate(names) if name == "content_block_stop"]
    assert len(starts) == len(stops)
    for index, (start, stop) in enumerate(zip(starts, stops, strict=True)):
        message["content"].append(_check_block(events[start : stop + 1], index))
    outside = [
        n
        for i, n in enumerate(names[1:-2], 1)
        if not any(a <= i <= b for a, b in zip(starts, stops, strict=True))
    ]
    assert set(outside) <= {"ping"}
    delta = events[-2][1]
    message.update(delta["delta"])
    message["usage"] = {**message["usage"], **delta["usage"]}
    return message


def _without_id(message: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in message.items() if key != "id"}


# --- non-streaming replies ---------------------------------------------------------------------


def test_text_reply_has_the_anthropic_shape_and_echoes_the_user() -> None:
    message = _message(_body("What is the capital of France?"))
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["id"].startswith("msg_") and len(message["id"]) == 28
    assert message["model"] == _MODEL
    assert message["stop_reason"] == "end_turn"
    assert "stop_sequence" in message and message["stop_sequence"] is None
    [block] = message["content"]
    assert block["type"] == "text" and "What is the capital of France?" in block["text"]
    usage = message["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] == len(block["text"].split())
    assert usage["cache_creation_input_tokens"] == 0 and usage["cache_read_input_tokens"] == 0
    assert usage["service_tier"] == "standard"


def test_same_body_gives_the_same_bytes_and_a_new_body_a_new_id() -> None:
    provider = MockProvider()
    first = _send(provider, "/v1/messages", _body("one")).body
    assert first == _send(provider, "/v1/messages", _body("one")).body
    other = json.loads(_send(provider, "/v1/messages", _body("two")).body or b"")
    assert other["id"] != json.loads(first or b"")["id"]


def test_text_blocks_and_system_messages_are_read_for_the_echo() -> None:
    content = [{"type": "text", "text": "first part"}, _IMAGE, {"type": "text", "text": "second"}]
    body = _body(system="Be brief.")
    body["messages"] = [
        {"role": "user", "content": content},
        {"role": "system", "content": "ignore me"},
    ]
    [block] = _message(body)["content"]
    assert block["text"].endswith("You said: first part second")


def test_tool_use_for_the_first_tool_with_input_from_required_properties() -> None:
    message = _message(_body(tools=[_WEATHER_TOOL, _CLOCK_TOOL]))
    [block] = message["content"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather"
    assert block["id"].startswith("toolu_")
    assert block["input"] == _EXPECTED_WEATHER_INPUT
    assert message["stop_reason"] == "tool_use"


def test_tool_choice_tool_names_the_tool_and_none_forbids_tools() -> None:
    named = _message(
        _body(tools=[_WEATHER_TOOL, _CLOCK_TOOL], tool_choice={"type": "tool", "name": "get_time"})
    )
    assert named["content"][0]["name"] == "get_time" and named["content"][0]["input"] == {}
    none = _message(_body(tools=[_WEATHER_TOOL], tool_choice={"type": "none"}))
    assert none["content"][0]["type"] == "text" and none["stop_reason"] == "end_turn"
    with pytest.raises(InvalidRequestError, match="nope"):
        _message(_body(tools=[_WEATHER_TOOL], tool_choice={"type": "tool", "name": "nope"}))


def test_server_tools_are_never_called_as_client_tools() -> None:
    # Anthropic runs web search itself; a tool_use for it would send the client off to run
    # a tool it never defined.
    web_search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    alone = _message(_body(tools=[web_search]))
    assert alone["content"][0]["type"] == "text" and alone["stop_reason"] == "end_turn"
    mixed = _message(_body(tools=[web_search, {**_WEATHER_TOOL, "type": "custom"}]))
    assert mixed["content"][0]["name"] == "get_weather"
    named = _message(_body(tools=[web_search], tool_choice={"type": "tool", "name": "web_search"}))
    assert named["content"][0]["type"] == "text"


def test_a_tool_result_reply_gets_text_unless_a_tool_is_forced() -> None:
    first = _message(_body(tools=[_WEATHER_TOOL]))
    tool_use = first["content"][0]
    body = _body(tools=[_WEATHER_TOOL])
    body["messages"] += [
        {"role": "assistant", "content": [tool_use]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "Sunny"}],
        },
    ]
    message = _message(body)
    assert [block["type"] for block in message["content"]] == ["text"]
    assert message["stop_reason"] == "end_turn"
    # A forced choice forces a call on every turn, as it forces the model.
    for choice in ({"type": "any"}, {"type": "tool", "name": _WEATHER_TOOL["name"]}):
        forced = _message({**body, "tool_choice": choice})
        assert [block["type"] for block in forced["content"]] == ["tool_use"], choice
        assert forced["stop_reason"] == "tool_use"


@pytest.mark.parametrize("kind", ["enabled", "adaptive"])
def test_thinking_comes_first_with_a_signature(kind: str) -> None:
    thinking = {"type": kind, "budget_tokens": 2048} if kind == "enabled" else {"type": kind}
    message = _message(_body(thinking=thinking, max_tokens=4096))
    first, second = message["content"]
    assert first["type"] == "thinking" and first["thinking"] and first["signature"]
    assert second["type"] == "text"
    words = len(first["thinking"].split()) + len(second["text"].split())
    assert message["usage"]["output_tokens"] == words


def test_omitted_thinking_has_empty_text_but_a_signature_and_counts_tokens() -> None:
    shown = _message(_body(thinking={"type": "adaptive"}))
    hidden = _message(_body(thinking={"type": "adaptive", "display": "omitted"}))
    assert hidden["content"][0] == {
        "type": "thinking",
        "thinking": "",
        "signature": hidden["content"][0]["signature"],
    }
    assert hidden["content"][0]["signature"]
    assert hidden["usage"]["output_tokens"] == shown["usage"]["output_tokens"]


def test_disabled_thinking_gives_no_thinking_block() -> None:
    message = _message(_body(thinking={"type": "disabled"}))
    assert [block["type"] for block in message["content"]] == ["text"]


def test_stop_sequence_cuts_the_text_before_the_match() -> None:
    message = _message(_body("alpha beta STOP gamma END", stop_sequences=["END", "STOP"]))
    [block] = message["content"]
    assert block["text"].endswith("You said: alpha beta ")
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "STOP"


def test_max_tokens_truncates_the_output() -> None:
    message = _message(_body("one two three four five", max_tokens=3))
    assert message["content"][0]["text"] == "Mock reply from "
    assert message["stop_reason"] == "max_tokens" and message["stop_sequence"] is None
    assert message["usage"]["output_tokens"] == 3


def test_max_tokens_wins_over_a_later_stop_sequence() -> None:
    message = _message(_body("a b c d e f STOP", max_tokens=4, stop_sequences=["STOP"]))
    assert message["stop_reason"] == "max_tokens" and message["stop_sequence"] is None


def test_max_tokens_zero_gives_empty_content() -> None:
    message = _message(_body(max_tokens=0, thinking={"type": "adaptive"}))
    assert message["content"] == [] and message["stop_reason"] == "max_tokens"


def test_max_tokens_zero_reports_zero_output_tokens() -> None:
    assert _message(_body(max_tokens=0))["usage"]["output_tokens"] == 0


def test_max_tokens_too_small_for_the_tool_call_drops_it() -> None:
    message = _message(_body(tools=[_WEATHER_TOOL], max_tokens=2))
    assert message["content"] == [] and message["stop_reason"] == "max_tokens"


def test_invalid_bodies_raise_invalid_request() -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        _message({"model": _MODEL, "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        asyncio.run(MockProvider().send(ProviderRequest("POST", "/v1/messages", b"{", {}, "r")))


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("messages", [{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages.0."),
        ("tools", [{"name": 5, "input_schema": {}}], "tools.0.name"),
    ],
)
def test_a_wrong_field_is_named_by_its_full_path(field: str, value: Any, path: str) -> None:
    # The mock decodes turns and tools apart from the body; its errors still name the path
    # from the body's top, as the gateway's own validation and Anthropic do.
    with pytest.raises(InvalidRequestError) as caught:
        _message({**_body("hi"), field: value})
    assert caught.value.message.startswith(path), caught.value.message


# --- count_tokens --------------------------------------------------------------------------------


def _count(body: dict[str, Any]) -> int:
    body = {key: value for key, value in body.items() if key not in ("max_tokens", "stream")}
    response = _send(MockProvider(), "/v1/messages/count_tokens", body)
    assert response.content_type == "application/json"
    result = json.loads(response.body or b"")
    assert list(result) == ["input_tokens"]
    count: int = result["input_tokens"]
    return count


def test_count_tokens_matches_the_messages_input_tokens() -> None:
    body = _body("Count me please", system="You are terse.", tools=[_WEATHER_TOOL])
    assert _count(body) == _message(body)["usage"]["input_tokens"]
    streamed = _check_grammar(_stream({**body, "max_tokens": 7}))
    assert _count(body) == streamed["usage"]["input_tokens"]


def test_count_tokens_counts_tool_definitions() -> None:
    base = _count(_body())
    with_tool = _count(_body(tools=[_WEATHER_TOOL]))
    assert with_tool > base + 40
    assert _count(_body(tools=[_WEATHER_TOOL, _CLOCK_TOOL])) > with_tool


def test_count_tokens_prices_images_by_count_not_by_base64_size() -> None:
    small = _body()
    small["messages"][0]["content"] = [{"type": "text", "text": "look"}, _IMAGE]
    big = json.loads(json.dumps(small))
    big["messages"][0]["content"][1]["source"]["data"] = "A" * 400_000
    assert _count(small) == _count(big)
    assert 1_600 <= _count(small) - _count(_body("look")) < 1_700


def test_count_tokens_finds_images_nested_in_tool_results() -> None:
    body = _body()
    body["messages"] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {"q": 1}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [_IMAGE, _IMAGE]}
            ],
        },
    ]
    assert _count(body) > 3_200


def test_count_tokens_prices_documents_per_page() -> None:
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "A" * 250_000},
    }
    text_doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "x" * 400},
    }
    body = _body()
    body["messages"][0]["content"] = [pdf]
    assert 6_000 <= _count(body) < 6_100
    body["messages"][0]["content"] = [text_doc]
    assert 100 < _count(body) < 200


def test_estimate_counts_text_at_about_four_bytes_per_token() -> None:
    body = json.dumps(_body("x" * 4_000)).encode()
    assert 1_000 <= estimate_input_tokens(body) <= 1_020


# --- models ---------------------------------------------------------------------------------------


_FIVE = tuple(ModelConfig(id=f"claude-m{i}", display_name=f"M{i}") for i in range(5))


def _models(query: str = "", models: tuple[ModelConfig, ...] = _FIVE) -> dict[str, Any]:
    response = _send(MockProvider(models=models), "/v1/models", method="GET", query=query)
    result: dict[str, Any] = json.loads(response.body or b"")
    return result


def test_models_lists_everything_with_has_more_false() -> None:
    page = _models()
    assert [model["id"] for model in page["data"]] == [model.id for model in _FIVE]
    assert page["has_more"] is False
    assert (page["first_id"], page["last_id"]) == ("claude-m0", "claude-m4")
    assert page["data"][0] == {
        "type": "model",
        "id": "claude-m0",
        "display_name": "M0",
        "created_at": "2025-01-01T00:00:00Z",
    }


def test_models_pages_with_limit_after_id_and_before_id() -> None:
    first = _models("limit=2")
    assert [m["id"] for m in first["data"]] == ["claude-m0", "claude-m1"] and first["has_more"]
    second = _models(f"limit=2&after_id={first['last_id']}")
    assert [m["id"] for m in second["data"]] == ["claude-m2", "claude-m3"] and second["has_more"]
    last = _models("limit=2&after_id=claude-m3")
    assert [m["id"] for m in last["data"]] == ["claude-m4"] and not last["has_more"]
    before = _models("limit=2&before_id=claude-m3")
    assert [m["id"] for m in before["data"]] == ["claude-m1", "claude-m2"] and before["has_more"]
    empty = _models("after_id=claude-unknown")
    assert empty == {"data": [], "has_more": False, "first_id": None, "last_id": None}


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=many"])
def test_models_rejects_a_bad_limit(query: str) -> None:
    with pytest.raises(InvalidRequestError, match="limit"):
        _models(query)


def test_a_model_by_id_and_a_404_naming_an_unknown_one() -> None:
    response = _send(MockProvider(), "/v1/models/claude-haiku-4-5", method="GET")
    model = json.loads(response.body or b"")
    assert model == {
        "type": "model",
        "id": "claude-haiku-4-5",
        "display_name": "Claude Haiku 4.5",
        "created_at": "2025-01-01T00:00:00Z",
    }
    with pytest.raises(NotFoundError, match="claude-nonexistent-1"):
        _send(MockProvider(), "/v1/models/claude-nonexistent-1", method="GET")


def test_unknown_paths_and_methods() -> None:
    with pytest.raises(NotFoundError):
        _send(MockProvider(), "/v1/messages/batches", _body())
    with pytest.raises(MethodNotAllowedError):
        _send(MockProvider(), "/v1/messages", method="GET")
    with pytest.raises(MethodNotAllowedError):
        _send(MockProvider(), "/v1/models", method="POST")
    asyncio.run(MockProvider().aclose())


# --- streaming ------------------------------------------------------------------------------------


_STREAM_CASES = {
    "text": _body("Stream me a few words please, it is a test"),
    "tool": _body(tools=[_WEATHER_TOOL]),
    "thinking_text": _body(thinking={"type": "enabled", "budget_tokens": 2048}, max_tokens=4096),
    "omitted_thinking_tool": _body(
        thinking={"type": "adaptive", "display": "omitted"}, tools=[_WEATHER_TOOL]
    ),
    "stop_sequence": _body("one two three", stop_sequences=["two"]),
    "max_tokens": _body("one two three", max_tokens=5),
    "max_tokens_zero": _body(max_tokens=0),
}


@pytest.mark.parametrize("case", list(_STREAM_CASES))
def test_stream_follows_the_grammar_and_matches_the_json_reply(case: str) -> None:
    body = _STREAM_CASES[case]
    streamed = _check_grammar(_stream(body))
    assert _without_id(streamed) == _without_id(_message(body))


def test_stream_sends_ping_first_and_text_in_several_word_chunks() -> None:
    events = _parse_sse(_stream(_STREAM_CASES["text"]))
    assert events[1] == ("ping", {"type": "ping"})
    text_deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert len(text_deltas) > 3 and all(1 <= len(text.split()) <= 3 for text in text_deltas)


def test_stream_splits_tool_input_json_inside_strings() -> None:
    events = _parse_sse(_stream(_STREAM_CASES["tool"]))
    fragments = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert fragments[0] == "" and len(fragments) > 3
    assert json.loads("".join(fragments)) == _EXPECTED_WEATHER_INPUT
    assert any(fragment.count('"') % 2 == 1 for fragment in fragments)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(st.characters(codec="utf-8"), max_size=80),
    stop=st.lists(st.text(min_size=1, max_size=3), max_size=2),
    max_tokens=st.integers(1, 30),
    thinking=st.booleans(),
)
def test_any_reply_streams_by_the_grammar(
    text: str, stop: list[str], max_tokens: int, thinking: bool
) -> None:
    body = _body(text, stop_sequences=stop, max_tokens=max_tokens)
    if thinking:
        body["thinking"] = {"type": "adaptive"}
    message = _message(body)
    assert message["usage"]["output_tokens"] <= max_tokens
    assert _without_id(_check_grammar(_stream(body))) == _without_id(message)


def test_pacing_pings_during_long_silences_and_keeps_the_grammar() -> None:
    provider = MockProvider(MockConfig(latency_ms=30, tokens_per_second=400), ping_interval=0.005)
    body = _body(thinking={"type": "adaptive", "display": "omitted"})
    started = time.perf_counter()
    chunks = _stream(body, provider)
    elapsed = time.perf_counter() - started
    message = _check_grammar(chunks)
    assert elapsed >= 0.03 + message["usage"]["output_tokens"] / 400 * 0.9
    events = _parse_sse(chunks)
    signature_at = next(
        i
        for i, (n, d) in enumerate(events)
        if n == "content_block_delta" and d["delta"]["type"] == "signature_delta"
    )
    assert events[signature_at - 1][0] == "ping"


def test_non_streaming_reply_waits_for_latency_and_generation() -> None:
    provider = MockProvider(MockConfig(latency_ms=40, tokens_per_second=500))
    started = time.perf_counter()
    message = _message(_body(), provider)
    assert time.perf_counter() - started >= 0.04 + message["usage"]["output_tokens"] / 500 * 0.9


def test_closing_a_stream_early_is_clean() -> None:
    provider = MockProvider(MockConfig(tokens_per_second=1000))
    response = _send(provider, "/v1/messages", _body(stream=True))

    async def read_two() -> list[bytes]:
        assert response.chunks is not None
        chunks = [await anext(response.chunks), await anext(response.chunks)]
        await response.close()
        return chunks

    assert [name for name, _ in _parse_sse(asyncio.run(read_two()))] == ["message_start", "ping"]


# --- the official SDK -----------------------------------------------------------------------------


def _sdk_client(
    provider: MockProvider, bodies: list[bytes] | None = None
) -> anthropic.AsyncAnthropic:
    """An SDK client served by ``provider`` in process; ``bodies`` collects what it sent."""

    async def handle(request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        if bodies is not None:
            bodies.append(body)
        provider_request = ProviderRequest(
            request.method,
            request.url.path,
            body,
            dict(request.headers),
            "req_sdk",
            query=request.url.query.decode(),
        )
        response = await provider.send(provider_request)
        content: bytes | AsyncIterator[bytes] = (
            response.body if response.body is not None else _chunks(response)
        )
        return httpx2.Response(response.status, headers=response.headers, content=content)

    transport = httpx2.MockTransport(handle)
    http_client = anthropic.DefaultAsyncHttpxClient(transport=transport)
    return anthropic.AsyncAnthropic(
        api_key="x", base_url="http://mock.test", http_client=http_client, max_retries=0
    )


async def _chunks(response: ProviderResponse) -> AsyncIterator[bytes]:
    assert response.chunks is not None
    try:
        async for chunk in response.chunks:
            yield chunk
    finally:
        await response.close()


@pytest.mark.parametrize("case", ["text", "tool", "thinking_text", "stop_sequence", "max_tokens"])
def test_the_sdk_accumulates_the_stream_into_the_json_reply(case: str) -> None:
    body = _STREAM_CASES[case]
    params = {key: value for key, value in body.items() if key != "stream"}

    bodies: list[bytes] = []

    async def run() -> tuple[Any, Any]:
        async with _sdk_client(MockProvider(), bodies) as client:
            async with client.messages.stream(**params) as stream:
                streamed = await stream.get_final_message()
            created = await client.messages.create(**params)
            return streamed, created

    streamed, created = asyncio.run(run())
    assert streamed.id.startswith("msg_") and streamed.id != created.id
    assert streamed.model_dump(exclude={"id"}) == created.model_dump(exclude={"id"})
    replayed = asyncio.run(
        MockProvider().send(ProviderRequest("POST", "/v1/messages", bodies[-1], {}, "r"))
    )
    expected = json.loads(replayed.body or b"")
    assert [block.model_dump(exclude_none=True) for block in created.content] == expected["content"]
    sdk_view = created.model_dump(include={"model", "stop_reason", "stop_sequence"})
    assert sdk_view == {key: expected[key] for key in sdk_view}
    assert created.usage.output_tokens == expected["usage"]["output_tokens"]


def test_the_sdk_lists_every_model_and_counts_tokens() -> None:
    async def run() -> tuple[list[str], int]:
        async with _sdk_client(MockProvider(models=_FIVE)) as client:
            ids = [model.id async for model in client.models.list(limit=2)]
            count = await client.messages.count_tokens(
                model=_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            return ids, count.input_tokens

    ids, tokens = asyncio.run(run())
    assert ids == [model.id for model in _FIVE]
    assert tokens > 0


def test_an_unknown_block_whose_text_is_no_string_is_accepted() -> None:
    # The gateway passes unknown block types through; the mock refused this one with a 400.
    content = [
        {"type": "future_block", "text": {"kind": "rich", "runs": []}},
        {"type": "text", "text": "hi"},
    ]
    body = _body(messages=[{"role": "user", "content": content}])
    assert _message(body)["stop_reason"] == "end_turn"
    assert "You said: hi" in _message(body)["content"][0]["text"]
    assert _count(body) > 0


def test_tool_input_meets_the_schemas_the_sdk_helpers_write() -> None:
    # A pydantic argument becomes a $ref into $defs, an optional one anyOf with null; the
    # mock answered "mock" for both, and the SDK's tool runner refused the call.
    schema = {
        "type": "object",
        "$defs": {
            "Point": {
                "type": "object",
                "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                "required": ["x", "y"],
            }
        },
        "properties": {
            "to": {"$ref": "#/$defs/Point"},
            "speed": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 3}]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "ratio": {"type": "number", "exclusiveMinimum": 1, "maximum": 5},
            "name": {"type": "string", "minLength": 10},
        },
        "required": ["to", "speed", "tags", "ratio", "name"],
    }
    tool = {"name": "move", "description": "Move.", "input_schema": schema}
    (block,) = _message(_body("move please", tools=[tool]))["content"]
    assert block["type"] == "tool_use"
    assert block["input"] == {
        "to": {"x": 1, "y": 1},
        "speed": 3,
        "tags": ["mock", "mock"],
        "ratio": 2,
        "name": "mmmmmmmmmm",
    }


def test_a_client_leaving_while_the_mock_thinks_is_a_disconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The gateway holds a stream back until its first content; the mock's latency_ms is
    # spent inside the stream, in the read the hold awaits when the client leaves.
    import logging

    from messages_mw import Gateway, GatewayConfig, RequestContext

    from .inprocess import post_then_leave

    finished: list[RequestContext] = []
    provider = MockProvider(MockConfig(latency_ms=500))
    gateway = Gateway(
        GatewayConfig(usage_log=False), provider=provider, on_request_end=finished.append
    )
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 8,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }

    with caplog.at_level(logging.ERROR, logger="messages_mw"):
        asyncio.run(post_then_leave(gateway, json.dumps(body).encode(), after=0.1))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert (finished[0].client_disconnected, finished[0].error_type, errors) == (True, None, [])


@pytest.mark.parametrize("created_at", ["yesterday", "2025-01-01", "2025-01-01T00:00:00"])
def test_a_model_creation_time_must_be_rfc_3339(created_at: str, tmp_path: Any) -> None:
    # The SDKs parse it as a datetime: a listing holding "yesterday" breaks models.list().
    from messages_mw.config import ConfigError, load_config

    with pytest.raises(ValueError, match="created_at must be an RFC 3339 time"):
        ModelConfig(id="m", created_at=created_at)
    path = tmp_path / "gateway.toml"
    path.write_text(f'[[models]]\nid = "m"\ncreated_at = "{created_at}"\n')
    with pytest.raises(ConfigError, match="created_at"):
        load_config(path)
    assert ModelConfig(id="m", created_at="2025-02-19T08:30:00.5+01:00").created_at


def _nested_arrays(levels: int, leaf: dict[str, Any]) -> dict[str, Any]:
    schema = leaf
    for _ in range(levels):
        schema = {"type": "array", "items": schema, "minItems": 8}
    return {"type": "object", "properties": {"grid": schema}, "required": ["grid"]}


def test_a_tool_schema_asking_for_a_huge_input_gets_a_bounded_one() -> None:
    # 400 bytes of schema asked for 8**8 strings of 1,024 characters: the mock built them
    # on the event loop, stalling every other request, and ran out of memory.
    schema = _nested_arrays(8, {"type": "string", "minLength": 1024})
    tool = {"name": "fill", "input_schema": schema}
    (block,) = _message(_body("fill it", tools=[tool], max_tokens=100_000))["content"]
    assert block["type"] == "tool_use"
    assert 1_000 < len(json.dumps(block["input"])) < 100_000
    # Small inputs are whole: the budget only ends runaway ones.
    small = {"name": "fill", "input_schema": _nested_arrays(2, {"type": "integer"})}
    (block,) = _message(_body("fill it", tools=[small]))["content"]
    assert block["input"] == {"grid": [[1] * 8] * 8}


def test_tool_input_meets_the_constraints_pydantic_schemas_state() -> None:
    # The SDK's tool runner validates the input against the function's own types: the mock
    # sent "mock" for a date, strings for tuple[int, int], and ignored upper bounds.
    import datetime
    import uuid

    from pydantic import BaseModel, Field

    class Booking(BaseModel):
        day: datetime.date
        at: datetime.datetime
        ident: uuid.UUID
        seats: tuple[int, int]
        pair: tuple[str, bool]
        code: str = Field(max_length=2)
        below_zero: int = Field(lt=0)
        small: float = Field(gt=0, lt=0.5)
        at_most: float = Field(le=0.3)
        sevens: int = Field(multiple_of=7)
        steps: float = Field(multiple_of=0.25, ge=1.1)
        distinct: set[str] = Field(min_length=3)
        counts: dict[str, int] = Field(min_length=2)
        named: dict[str, int] = Field(json_schema_extra={"minProperties": 1})

    tool = {"name": "book", "input_schema": Booking.model_json_schema()}
    (block,) = _message(_body("book it", tools=[tool]))["content"]
    booking = Booking.model_validate(block["input"])
    assert booking.seats == (1, 1) and booking.below_zero == -1 and booking.sevens == 7
    assert len(booking.distinct) == 3 and len(booking.counts) == 2


@pytest.mark.parametrize(
    ("fields", "version", "message"),
    [
        ({"thinking": {"type": "enabled"}}, None, "thinking.enabled.budget_tokens: Field"),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 1023}},
            None,
            "budget_tokens: Input should be greater than or equal to 1024",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 1024},
            None,
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (
            {
                "thinking": {"type": "adaptive"},
                "tools": [_WEATHER_TOOL],
                "tool_choice": {"type": "any"},
            },
            None,
            "Thinking may not be enabled when tool_choice forces tool use",
        ),
        ({"temperature": 1}, "2026-10-21", "temperature: Extra inputs are not permitted"),
        ({"top_k": 5}, "2026-10-21", "top_k: Extra inputs are not permitted"),
    ],
)
def test_the_mock_refuses_what_the_api_refuses(
    fields: dict[str, Any], version: str | None, message: str
) -> None:
    # Code tried against the demo answered 200 here, then failed against Anthropic.
    headers = {"anthropic-version": version} if version else {}
    raw = json.dumps(_body(**fields)).encode()
    request = ProviderRequest("POST", "/v1/messages", raw, headers, "req_test")
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        asyncio.run(MockProvider().send(request))


def test_sampling_fields_and_adaptive_thinking_with_auto_tools_are_accepted() -> None:
    assert _message(_body(temperature=0.5, top_p=0.9))["stop_reason"] == "end_turn"
    body = _body(thinking={"type": "adaptive"}, tools=[_WEATHER_TOOL], tool_choice={"type": "auto"})
    assert _message(body)["stop_reason"] == "tool_use"


def test_the_token_estimate_does_not_depend_on_the_json_layout() -> None:
    # Pretty-printed JSON (curl users) counted 23% more tokens than the same request compact.
    body = json.loads((Path(__file__).parent / "samples" / "agent_turn.json").read_bytes())
    compact = estimate_input_tokens(json.dumps(body, separators=(",", ":")).encode())
    assert estimate_input_tokens(json.dumps(body, indent=2).encode()) == compact
    assert estimate_input_tokens(json.dumps(body, indent="\t").encode()) == compact
