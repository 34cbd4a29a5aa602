"""Hypothesis: valid requests reach the upstream unchanged; invalid ones, odd gateway fields
and odd headers never cause a 5xx, under any of a few configurations."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from messages_mw import AnthropicProvider, FallbackConfig, Gateway, GatewayConfig, UpstreamConfig
from messages_mw.auth import ApiKeyConfig, AuthConfig

from .inprocess import Recorder, client_for, make_gateway
from .servers import message_json, text_stream_events

_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json = st.recursive(
    _json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_names, children, max_size=4),
    max_leaves=12,
)
_block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "hologram", "x_future_block"])},
    optional={"text": st.text(), "cache_control": st.just({"type": "ephemeral"}), "extra": _json},
)
_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "narrator"]),
        "content": st.text() | st.lists(_block, max_size=3),
    },
    optional={"name": _names, "future": _json},
)
_valid_request = st.fixed_dictionaries(
    {
        # "provider/model" is the gateway's own addressing, so routed names have no "/".
        "model": st.text(max_size=30).filter(lambda name: "/" not in name),
        "max_tokens": st.integers(min_value=0, max_value=2**31),
        "messages": st.lists(_message, min_size=1, max_size=4),
    },
    optional={
        "stream": st.just(False),
        "system": st.text() | st.lists(_block, max_size=2),
        "temperature": st.floats(0, 1),
        "metadata": st.fixed_dictionaries({"user_id": st.text()}),
        "stop_sequences": st.lists(st.text(), max_size=3),
        "unknown_future_field": _json,
        "context_management": _json,
    },
)


def _roundtrip(body: bytes, recorder: Recorder) -> httpx.Response:
    gateway, _ = make_gateway(recorder)

    async def call() -> httpx.Response:
        async with client_for(gateway) as client:
            headers = {"content-type": "application/json"}
            return await client.post("/v1/messages", content=body, headers=headers)

    return asyncio.run(call())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_request, st.booleans())
def test_valid_requests_reach_upstream_unchanged(request: dict[str, Any], compact: bool) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    body = json.dumps(request, separators=separators).encode()
    recorder = Recorder()
    response = _roundtrip(body, recorder)
    assert response.status_code == 200, response.text
    (upstream,) = recorder.requests
    assert upstream.content == body
    assert json.loads(upstream.content) == request


_invalid_body = (
    st.binary(max_size=200)
    | _json.map(lambda value: json.dumps(value).encode())
    | _valid_request.flatmap(
        lambda request: st.sampled_from(sorted(request)).flatmap(
            lambda key: _json.map(lambda junk: json.dumps({**request, key: junk}).encode())
        )
    )
)


def _answering_like_anthropic(request: httpx.Request) -> httpx.Response:
    """A stream when the request asks for one (its body is then a valid request), else a
    message: an upstream answering a stream request with JSON earns its 502."""
    if json.loads(request.content).get("stream") is True:
        content = b"".join(text_stream_events(["Hello"]))
        return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, content=message_json(), headers={"content-type": "application/json"})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_invalid_body)
# "Junk" can make a valid request: "stream": true was found once, in a full CI run.
@example(b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}],"stream":true}')
def test_arbitrary_bodies_never_cause_a_5xx(body: bytes) -> None:
    response = _roundtrip(body, Recorder(_answering_like_anthropic))
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        payload = response.json()
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "invalid_request_error"
        assert payload["error"]["message"]


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=20).filter(lambda p: "/" not in p and p != "anthropic"))
def test_model_ids_with_a_slash_before_no_provider_go_upstream_unchanged(provider: str) -> None:
    # A Bedrock ARN or an OpenRouter-style "anthropic/claude-..." id: the upstream judges it,
    # as Anthropic would (protocol.md 3.1: map unknown ids instead of failing).
    body = json.dumps(
        {"model": f"{provider}/m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    recorder = Recorder()
    response = _roundtrip(body, recorder)
    assert response.status_code == 200
    assert recorder.requests[-1].content == body


_any_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.sampled_from(["a/b", "backup/m", "anthropic/x", "auto", "default", "", " ", "x" * 2000])
)
_keys = st.text(max_size=8) | st.sampled_from(
    ["type", "tags", "user_id", "name", "model", "anthropic-beta", "text"]
)
_any_json = st.recursive(
    _any_leaf,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=3),
    max_leaves=10,
)
# Top-level fields the gateway reads, consumes or checks.
_FIELDS = [
    "model",
    "max_tokens",
    "messages",
    "stream",
    "system",
    "metadata",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "fallbacks",
    "extra_headers",
    "router_candidates",
]
_PATHS = ["/v1/messages", "/v1/messages/count_tokens"]


def _configs() -> dict[str, GatewayConfig]:
    backup = {"backup": UpstreamConfig(base_url="http://upstream.test")}
    key = ApiKeyConfig(
        id="k", key="sk-test", models=("claude-sonnet-4-6", "auto", "backup/m"), tags=("team",)
    )
    return {
        "plain": GatewayConfig(),
        "gateway fields": GatewayConfig(
            upstreams=backup,
            fallback=FallbackConfig(body_fallbacks="always", router_candidates=("backup/m",)),
            extra_headers_allowed=("anthropic-beta", "x-custom"),
        ),
        "allow-list": GatewayConfig(upstreams=backup, auth=AuthConfig(mode="static", keys=(key,))),
    }


_CONFIGS = _configs()


def _answering_by_path(request: httpx.Request) -> httpx.Response:
    """:func:`_answering_like_anthropic`, but never a stream to a count_tokens request."""
    if request.url.path == "/v1/messages":
        return _answering_like_anthropic(request)
    return httpx.Response(200, json={"input_tokens": 7})


def _gateway(config: GatewayConfig) -> Gateway:
    settings = UpstreamConfig(base_url="http://upstream.test")
    transport = httpx.MockTransport(Recorder(_answering_by_path))
    providers = {"backup": AnthropicProvider(settings, transport=transport)}
    return Gateway(
        config,
        provider=AnthropicProvider(settings, transport=transport),
        providers=providers if "backup" in config.upstreams else {},
    )


async def _asgi_post(
    gateway: Gateway, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, bytes]:
    """POST through the ASGI app with headers as raw bytes, which an HTTP client would check."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": headers,
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(gateway(scope, receive, send), 10)
    (status,) = [m["status"] for m in sent if m["type"] == "http.response.start"]
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _assert_answered(status: int, body: bytes) -> None:
    assert status < 500, body
    if status >= 400:
        payload = json.loads(body)
        assert payload["type"] == "error" and payload["error"]["message"], body


def _request(model: str, fields: dict[str, Any]) -> bytes:
    base = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({**base, **fields}).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(sorted(_CONFIGS)),
    st.sampled_from(["claude-sonnet-4-6", "auto", "backup/m"]),
    st.dictionaries(st.sampled_from(_FIELDS), _any_json, max_size=4),
    st.sampled_from(_PATHS),
)
def test_odd_gateway_fields_never_cause_a_5xx(
    config: str, model: str, fields: dict[str, Any], path: str
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"x-api-key", b"sk-test"),
        (b"anthropic-version", b"2023-06-01"),
    ]
    body = _request(model, fields)
    gateway = _gateway(_CONFIGS[config])
    _assert_answered(*asyncio.run(_asgi_post(gateway, path, headers, body)))


_header_names = st.sampled_from(
    [
        b"x-api-key",
        b"authorization",
        b"anthropic-version",
        b"anthropic-beta",
        b"x-mw-debug",
        b"content-type",
        b"content-encoding",
        b"content-length",
        b"x-mw-tags",
        b"x-claude-code-session-id",
        b"traceparent",
        b"tracestate",
        b"x-mw-compression",
        b"user-agent",
        b"x-stainless-timeout",
        b"transfer-encoding",
        b"accept-encoding",
    ]
)
_header_values = st.binary(max_size=60) | st.sampled_from(
    [
        b"\xe9\xff",
        b"gzip",
        b"deflate, gzip",
        b"-1",
        b"99999999999999999999999",
        b"1_0",
        b"\xa05",
        b"Bearer \xff",
        b"Bearer ",
        b"application/json; charset=\xff",
        b"a," * 200,
        b"1",
        b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01",
        b"k=v,\xff=1",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(sorted(_CONFIGS)),
    st.lists(st.tuples(_header_names, _header_values), max_size=5),
    st.booleans(),
    st.sampled_from([*_PATHS, "/v1/models"]),
)
def test_odd_headers_never_cause_a_5xx(
    config: str, extra: list[tuple[bytes, bytes]], stream: bool, path: str
) -> None:
    body = _request("claude-sonnet-4-6", {"stream": stream})
    headers = [(b"x-api-key", b"sk-test"), *extra]
    status, answer = asyncio.run(_asgi_post(_gateway(_CONFIGS[config]), path, headers, body))
    if answer.startswith(b"{"):
        _assert_answered(status, answer)
    assert status < 500, answer


_block_keys = st.sampled_from(
    [
        "type",
        "text",
        "source",
        "id",
        "name",
        "input",
        "content",
        "tool_use_id",
        "thinking",
        "signature",
        "data",
        "cache_control",
        "citations",
        "is_error",
    ]
)
_block_types = st.sampled_from(
    [
        "text",
        "image",
        "tool_use",
        "tool_result",
        "thinking",
        "document",
        "redacted_thinking",
        "server_tool_use",
        "search_result",
        "x",
    ]
)
_odd_block = st.dictionaries(_block_keys, _any_json | _block_types, max_size=5)
_odd_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system"]) | _any_json,
        "content": st.text(max_size=5) | st.lists(_odd_block | _any_json, max_size=3) | _any_json,
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(_odd_message, min_size=1, max_size=3),
    st.dictionaries(st.sampled_from(_FIELDS[3:]), _any_json, max_size=3),
    st.sampled_from(_PATHS),
)
def test_the_mock_provider_never_fails_with_a_5xx(
    messages: list[Any], fields: dict[str, Any], path: str
) -> None:
    gateway = Gateway(GatewayConfig(provider="mock"))
    body = _request("claude-sonnet-4-6", {"messages": messages, **fields})
    headers = [(b"content-type", b"application/json")]
    assert asyncio.run(_asgi_post(gateway, path, headers, body))[0] < 500
