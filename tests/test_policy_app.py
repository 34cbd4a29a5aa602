"""Policy features through the in-process app: extra_headers, cost, and one event per request."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from messages_mw import GatewayConfig, UsageEvent

from .inprocess import Recorder, client_for, make_gateway, run
from .servers import message_json


def _body(**fields: object) -> bytes:
    base = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return json.dumps({**base, **fields}).encode()


async def _post(gateway: object, body: bytes, **headers: str) -> httpx.Response:
    async with client_for(gateway) as client:
        merged = {"content-type": "application/json", "x-api-key": "sk-client", **headers}
        return await client.post("/v1/messages", content=body, headers=merged)


def test_extra_headers_merge_allowed_betas_and_are_stripped() -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    body = _body(extra_headers={"anthropic-beta": "context-1m-2025-08-07"}, future={"x": 1})
    response = run(_post(gateway, body, **{"anthropic-beta": "interleaved-thinking-2025-05-14"}))
    assert response.status_code == 200
    sent = recorder.requests[0]
    assert sent.headers["anthropic-beta"] == (
        "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    )
    forwarded = json.loads(sent.content)
    assert "extra_headers" not in forwarded and forwarded["future"] == {"x": 1}


@pytest.mark.parametrize("name", ["x-api-key", "Authorization", "host", "x-custom", "connection"])
def test_extra_headers_cannot_set_other_headers(name: str) -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    response = run(_post(gateway, _body(extra_headers={name: "sk-evil"})))
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(f"extra_headers.{name.lower()}:")
    assert recorder.requests == []


def test_extra_headers_allow_list_is_configurable() -> None:
    recorder = Recorder()
    config = GatewayConfig(extra_headers_allowed=("anthropic-beta", "x-team"))
    gateway, _ = make_gateway(recorder, config=config)
    assert run(_post(gateway, _body(extra_headers={"X-Team": "blue"}))).status_code == 200
    assert "x-team" not in recorder.requests[0].headers  # allowed, yet not a forwarded name
    bad = run(_post(gateway, _body(extra_headers={"x-team": "a\r\nx-api-key: b"})))
    assert bad.status_code == 400


def test_cost_in_response_is_opt_in_and_keeps_the_body() -> None:
    def priced(request: httpx.Request) -> httpx.Response:
        content = message_json(model="claude-sonnet-4-6", input_tokens=1000, output_tokens=100)
        return httpx.Response(200, content=content, headers={"content-type": "application/json"})

    plain, _ = make_gateway(Recorder(priced))
    assert "cost" not in run(_post(plain, _body())).json()["usage"]
    gateway, finished = make_gateway(Recorder(priced), config=GatewayConfig(cost_in_response=True))
    answer = run(_post(gateway, _body())).json()
    assert answer["usage"]["cost"] == pytest.approx(1000 * 3 / 1e6 + 100 * 15 / 1e6)
    assert answer["content"][0]["text"] == "Hello from upstream."
    assert finished[0].cost == pytest.approx(answer["usage"]["cost"])


def test_every_request_emits_exactly_one_usage_event() -> None:
    events: list[UsageEvent] = []
    overloaded = b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(529, content=overloaded, headers={"retry-after": "1"})

    async def scenario() -> None:
        cases = ((Recorder(), _body()), (Recorder(failing), _body()), (Recorder(), b"{bad"))
        for handler, body in cases:
            gateway, _ = make_gateway(handler, usage_sinks=[events.append])
            await _post(gateway, body)
            await gateway.aclose()

    asyncio.run(scenario())
    assert [(e.status, e.error_type) for e in events] == [
        (200, None),
        (529, "overloaded_error"),
        (400, "invalid_request_error"),
    ]
    assert events[0].input_tokens == 12 and events[0].cost is not None
