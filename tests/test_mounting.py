"""The gateway inside host apps: FastAPI and Starlette mounts, and as ASGI middleware."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from messages_mw import (
    Gateway,
    GatewayConfig,
    LimitRule,
    LimitsConfig,
    MessagesMiddleware,
    RateLimiter,
    UsageEvent,
)
from messages_mw.closing import close_all
from messages_mw.providers.base import ProviderRequest, ProviderResponse
from messages_mw.types import ASGIApp

from .conftest import sample
from .inprocess import Recorder, client_for, make_gateway, run

CHAT = sample("small_chat.json")


def _hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("host")


async def _echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


async def _exchange(app: object, path: str) -> tuple[httpx.Response, httpx.Response]:
    async with client_for(app) as client:
        gateway_answer = await client.post(path, content=CHAT, headers={"x-api-key": "k"})
        host_answer = await client.get("/hello")
        return gateway_answer, host_answer


def test_fastapi_mount_with_root_path() -> None:
    recorder = Recorder()
    gateway, finished = make_gateway(recorder)
    host = FastAPI()
    host.get("/hello")(lambda: "host")
    host.mount("/anthropic", gateway)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(host, root_path="/edge")
        async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
            return await client.post("/edge/anthropic/v1/messages", content=CHAT)

    assert run(call()).status_code == 200
    assert finished[0].path == "/v1/messages"
    assert recorder.requests[0].url.path == "/v1/messages"


def test_starlette_mount_leaves_host_routes_alone() -> None:
    gateway, _ = make_gateway(Recorder())
    host = Starlette(routes=[Route("/hello", _hello), Mount("/llm", app=gateway)])
    answer, host_answer = run(_exchange(host, "/llm/v1/messages"))
    assert answer.status_code == 200
    assert host_answer.text == "host"
    missing, _ = run(_exchange(host, "/llm/v2/messages"))
    assert missing.status_code == 404 and missing.json()["type"] == "error"


def test_middleware_routes_prefix_and_passes_everything_else() -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    host = Starlette(routes=[Route("/hello", _hello), WebSocketRoute("/ws", _echo)])
    app = MessagesMiddleware(host, gateway, prefix="/anthropic")
    answer, host_answer = run(_exchange(app, "/anthropic/v1/messages?beta=true"))
    assert answer.status_code == 200 and host_answer.text == "host"
    assert recorder.requests[0].url.path == "/v1/messages"
    other, _ = run(_exchange(app, "/anthropicx/v1/messages"))
    assert other.status_code == 404 and other.text == "Not Found"  # the host's own 404
    with TestClient(app) as client, client.websocket_connect("/ws") as socket:
        socket.send_text("ping")
        assert socket.receive_text() == "ping"


def test_the_prefix_itself_is_a_404_naming_the_path_asked_for() -> None:
    gateway, _ = make_gateway(Recorder())
    app = MessagesMiddleware(Starlette(), gateway, prefix="/anthropic")
    answer, _ = run(_exchange(app, "/anthropic"))
    assert answer.status_code == 404
    assert answer.json()["error"]["message"].startswith("Not found: /. This gateway serves")


def test_middleware_closes_the_gateway_on_host_shutdown() -> None:
    closed: list[bool] = []
    gateway, _ = make_gateway(Recorder())
    original = gateway.aclose

    async def tracking_aclose() -> None:
        closed.append(True)
        await original()

    gateway.aclose = tracking_aclose  # type: ignore[method-assign]
    app = MessagesMiddleware(Starlette(), gateway)
    with TestClient(app):
        assert closed == []
    assert closed == [True]


def test_middleware_rejects_a_malformed_prefix() -> None:
    gateway, _ = make_gateway(Recorder())
    with pytest.raises(ValueError):
        MessagesMiddleware(Starlette(), gateway, prefix="anthropic/")


def test_fastapi_lifespan_helper_closes_the_gateway() -> None:
    closed: list[bool] = []
    gateway, _ = make_gateway(Recorder())

    async def tracking_aclose() -> None:
        closed.append(True)

    gateway.aclose = tracking_aclose  # type: ignore[method-assign]
    host = FastAPI(lifespan=gateway.lifespan)
    host.mount("/anthropic", gateway)
    with TestClient(host) as client:
        assert client.post("/anthropic/v1/messages", content=CHAT).status_code == 200
    assert closed == [True]


class _ClosingProvider:
    """A provider that only records being closed, or fails to close when told to."""

    def __init__(self, closed: list[str], name: str, fails: bool = False) -> None:
        self.closed, self.name, self.fails = closed, name, fails

    async def send(self, request: ProviderRequest) -> ProviderResponse:
        raise RuntimeError("this provider only closes")

    async def aclose(self) -> None:
        self.closed.append(self.name)
        if self.fails:
            raise OSError(f"{self.name} could not close")


class _FailingStoreLimiter(RateLimiter):
    async def aclose(self) -> None:
        raise OSError("the store could not close")


def test_aclose_closes_every_provider_even_when_one_close_fails() -> None:
    # A store or a provider that fails to close must not leave the others' connections open;
    # the first failure is still reported once all are closed.
    closed: list[str] = []
    providers = {
        "first": _ClosingProvider(closed, "first", fails=True),
        "second": _ClosingProvider(closed, "second"),
    }
    limiter = _FailingStoreLimiter(
        LimitsConfig(rules=(LimitRule(scope="key", requests_per_minute=10),))
    )
    gateway = Gateway(
        GatewayConfig(),
        provider=_ClosingProvider(closed, "default"),
        providers=providers,
        limiter=limiter,
    )
    with pytest.raises(OSError, match="the store could not close"):
        run(gateway.aclose())
    assert sorted(closed) == ["default", "first", "second"]


def test_aclose_cancelled_while_flushing_usage_still_closes_the_providers() -> None:
    closed: list[str] = []
    flushing = asyncio.Event()

    async def slow_sink(event: UsageEvent) -> None:
        flushing.set()
        await asyncio.sleep(3600)

    gateway = Gateway(
        GatewayConfig(usage_log=False),
        provider=_ClosingProvider(closed, "default"),
        usage_sinks=[slow_sink],
    )

    async def scenario() -> None:
        async with client_for(gateway) as client:
            answer = await client.post("/v1/messages", content=CHAT)
        assert answer.status_code == 500  # the provider sends nothing, but the event is due
        await flushing.wait()
        closing = asyncio.ensure_future(gateway.aclose())
        await asyncio.sleep(0.01)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing

    run(scenario())
    assert closed == ["default"]


def _run_lifespan(app: ASGIApp) -> list[dict[str, object]]:
    """Drive ``app`` through startup and shutdown as a server does; what it sent back."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return next(incoming)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    run(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    return sent


@pytest.mark.parametrize("wrapped", [False, True], ids=["gateway", "middleware"])
def test_a_failed_close_at_shutdown_is_reported_as_a_failed_shutdown(
    wrapped: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The server must hear that shutdown failed (ASGI's lifespan.shutdown.failed), not see
    # an exception escape the app or, behind the middleware, the host's message vanish.
    closed: list[str] = []
    gateway = Gateway(GatewayConfig(), provider=_ClosingProvider(closed, "default", fails=True))
    app: ASGIApp = MessagesMiddleware(Starlette(), gateway) if wrapped else gateway
    sent = _run_lifespan(app)
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.failed",
    ]
    assert "OSError" in str(sent[1]["message"])
    assert closed == ["default"]
    assert "closing the gateway failed" in caplog.text


def test_close_all_raises_a_cancellation_before_any_failure_and_logs_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []

    def closer(name: str, error: BaseException | None = None) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            closed.append(name)
            if error is not None:
                raise error

        return close

    store, cancelled = OSError("store down"), asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError):
        run(close_all([closer("store", store), closer("a", cancelled), closer("b")]))
    assert closed == ["store", "a", "b"] and "store down" in caplog.text
    closed.clear()
    with pytest.raises(OSError, match="first"):
        run(close_all([closer("a", OSError("first")), closer("b", OSError("second"))]))
    assert closed == ["a", "b"] and "second" in caplog.text
    closed.clear()
    with pytest.raises(KeyboardInterrupt):
        run(close_all([closer("a", KeyboardInterrupt()), closer("b")]))
    assert closed == ["a", "b"]
