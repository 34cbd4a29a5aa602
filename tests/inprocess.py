"""In-process helpers: a gateway whose upstream is an ``httpx.MockTransport`` handler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import httpx

from messages_mw import AnthropicProvider, Gateway, GatewayConfig, RequestContext, UpstreamConfig
from messages_mw.context import RequestEndHook
from messages_mw.usage import UsageSink

from .servers import message_json

T = TypeVar("T")
Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """An upstream handler that records requests and answers a canned message."""

    def __init__(self, reply: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self._reply = reply

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self._reply is not None:
            return self._reply(request)
        return httpx.Response(
            200, content=message_json(), headers={"content-type": "application/json"}
        )


def make_gateway(
    handler: Handler,
    *,
    config: GatewayConfig | None = None,
    on_request_end: RequestEndHook | None = None,
    usage_sinks: Sequence[UsageSink] = (),
) -> tuple[Gateway, list[RequestContext]]:
    """A gateway over ``handler``; finished requests are collected unless a hook is given."""
    finished: list[RequestContext] = []
    upstream = (config or GatewayConfig()).upstream
    settings = UpstreamConfig(base_url="http://upstream.test", api_key=upstream.api_key)
    provider = AnthropicProvider(settings, transport=httpx.MockTransport(handler))
    hook = on_request_end or finished.append
    gateway = Gateway(config, provider=provider, on_request_end=hook, usage_sinks=usage_sinks)
    return gateway, finished


def client_for(gateway: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(gateway), base_url="http://gw.test")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def post_scope(path: str = "/v1/messages", *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    """The scope of a JSON POST to ``path``, for tests that drive the ASGI app directly."""
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
    }


async def post_then_leave(gateway: Any, body: bytes, after: float) -> None:
    """POST ``body`` to /v1/messages through the ASGI app; the client hangs up ``after``
    seconds once its body is read, and reads none of the answer."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(after)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await asyncio.wait_for(gateway(post_scope(), receive, send), 5)
