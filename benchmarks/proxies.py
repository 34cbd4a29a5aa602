"""The gateways under test, each started as ``python -m benchmarks.proxies KIND --upstream URL``.

- ``starlette``: the baseline, a minimal Starlette + httpx pass-through served by uvicorn;
- ``aiohttp``: the same pass-through on aiohttp's server and client;
- ``messages_mw``: the real gateway, served by uvicorn as ``messages-mw serve`` serves it
  (uvicorn's server with the protocol of :mod:`messages_mw.server`);
- ``messages_mw_policy``: the same with every policy built-in on;
- ``messages_mw_openai``: the same routing every sample's model to an OpenAI-compatible
  upstream (the mock's ``/v1/chat/completions``), so each request is translated both ways.

The pass-throughs do what any proxy must and nothing more: read the body, forward it with the
upstream key, and relay status, content type and bytes (streamed when the upstream streams).
Each framework is imported only by the child that serves it, so RSS compares like with like.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import uvloop

from .serving import (
    announce_port,
    announce_unavailable,
    bind_loopback,
    pin_to_core,
    server_arg_parser,
)

UPSTREAM_API_KEY = "bench-key"
# Generous pools: 32 client connections must never queue behind a pool limit in a pass-through.
POOL_SIZE = 1024
TIMEOUT_SECONDS = 60.0


def upstream_headers(client_headers: Mapping[str, str]) -> dict[str, str]:
    """What a pass-through sends upstream: the client's protocol headers and our key."""
    headers = {"x-api-key": UPSTREAM_API_KEY, "content-type": "application/json"}
    for name in ("anthropic-version", "anthropic-beta"):
        value = client_headers.get(name)
        if value is not None:
            headers[name] = value
    return headers


def build_starlette_proxy(upstream_url: str) -> Any:
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
    # Built outside the loop on purpose: httpx binds to the running loop lazily, on first use.
    client = httpx.AsyncClient(base_url=upstream_url, limits=limits, timeout=TIMEOUT_SECONDS)

    async def messages(request: Request) -> Response:
        body = await request.body()
        outgoing = client.build_request(
            "POST", "/v1/messages", content=body, headers=upstream_headers(request.headers)
        )
        upstream = await client.send(outgoing, stream=True)
        content_type = upstream.headers.get("content-type", "application/json")
        if content_type.startswith("text/event-stream"):
            return StreamingResponse(
                upstream.aiter_raw(),
                status_code=upstream.status_code,
                media_type=content_type,
                background=BackgroundTask(upstream.aclose),
            )
        content = await upstream.aread()
        return Response(content, status_code=upstream.status_code, media_type=content_type)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    routes = [Route("/v1/messages", messages, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def build_gateway(upstream_url: str) -> Any:
    """messages_mw's Gateway, or announce it unavailable when it cannot be imported yet."""
    try:
        from messages_mw.app import Gateway
        from messages_mw.config import GatewayConfig, UpstreamConfig
    except ImportError as exc:
        announce_unavailable(f"cannot import messages_mw.app.Gateway: {exc}")
    upstream = UpstreamConfig(base_url=upstream_url, api_key=UPSTREAM_API_KEY)
    # The core alone: no usage sinks, no auth, no limits.
    return Gateway(GatewayConfig(upstream=upstream, usage_log=False))


def build_gateway_with_policy(upstream_url: str) -> Any:
    """messages_mw with every built-in on: static key auth with the key's tags, tags and a
    session id from the request's headers, request, token and spend limits per key and per
    tag (so each request is counted before and charged after), a fallback chain, pricing
    and a JSON-lines usage sink (to /dev/null, so disk speed does not count)."""
    from messages_mw import (
        ApiKeyConfig,
        AuthConfig,
        FallbackConfig,
        Gateway,
        GatewayConfig,
        LimitRule,
        LimitsConfig,
        UpstreamConfig,
    )

    upstream = UpstreamConfig(base_url=upstream_url, api_key=UPSTREAM_API_KEY)
    config = GatewayConfig(
        upstream=upstream,
        upstreams={"backup": upstream},
        auth=AuthConfig(
            mode="static", keys=(ApiKeyConfig(id="bench", key="client-key", tags=("bench",)),)
        ),
        limits=LimitsConfig(
            rules=(
                LimitRule(
                    scope="key", requests_per_minute=10**9, tokens_per_minute=10**12, spend=1e9
                ),
                LimitRule(scope="tag", requests_per_minute=10**9, tokens_per_minute=10**12),
            )
        ),
        fallback=FallbackConfig(default_chain=("backup/claude-haiku-4-5",)),
        usage_log=False,
        usage_file="/dev/null",
    )
    return Gateway(config)


# The models the samples ask for; the OpenAI gateway aliases each to its OpenAI upstream.
SAMPLE_MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5")


def build_gateway_to_openai(upstream_url: str) -> Any:
    """messages_mw with the core alone, answering from the mock's Chat Completions route."""
    from messages_mw import Gateway, GatewayConfig, OpenAIUpstreamConfig, UpstreamConfig

    openai = OpenAIUpstreamConfig(base_url=f"{upstream_url}/v1", api_key=UPSTREAM_API_KEY)
    config = GatewayConfig(
        upstream=UpstreamConfig(base_url=upstream_url, api_key=UPSTREAM_API_KEY),
        openai_upstreams={"openai": openai},
        aliases={model: "openai/gpt-4o" for model in SAMPLE_MODELS},
        usage_log=False,
    )
    return Gateway(config)


# The baseline proxy as anyone would serve it: uvicorn's defaults, its access log off (as for
# every gateway measured here).
_BASELINE_OPTIONS: dict[str, Any] = {"http": "httptools", "access_log": False}


async def serve_with_uvicorn(app: Any, sock: socket.socket, options: dict[str, Any]) -> None:
    import uvicorn

    config = uvicorn.Config(app, loop="uvloop", lifespan="on", log_level="warning", **options)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    # uvicorn sets `started` after lifespan start-up and binding; announce only then.
    while not server.started:
        if serving.done():
            await serving
            raise SystemExit("uvicorn stopped during start-up")
        await asyncio.sleep(0.01)
    announce_port(sock)
    await serving


async def serve_aiohttp_proxy(upstream_url: str, sock: socket.socket) -> None:
    import aiohttp
    from aiohttp import web

    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=POOL_SIZE)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(
            upstream_url, connector=connector, timeout=timeout
        ) as session:
            app[session_key] = session
            yield

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session = request.app[session_key]
        headers = upstream_headers(request.headers)
        async with session.post("/v1/messages", data=body, headers=headers) as upstream:
            content_type = upstream.headers.get("content-type", "application/json")
            if not content_type.startswith("text/event-stream"):
                content = await upstream.read()
                return web.Response(
                    body=content, status=upstream.status, headers={"content-type": content_type}
                )
            response = web.StreamResponse(
                status=upstream.status, headers={"content-type": content_type}
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(client_session)
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    announce_port(sock)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


_UVICORN_APPS: dict[str, Callable[[str], Any]] = {
    "starlette": build_starlette_proxy,
    "messages_mw": build_gateway,
    "messages_mw_policy": build_gateway_with_policy,
    "messages_mw_openai": build_gateway_to_openai,
}
KINDS = (*_UVICORN_APPS, "aiohttp")


def _uvicorn_options(kind: str) -> dict[str, Any]:
    """messages_mw is served as ``messages-mw serve`` serves it (its own HTTP protocol, no
    access log or proxy-headers middleware); the baseline with uvicorn's defaults."""
    if kind.startswith("messages_mw"):
        from messages_mw.cli import serving_options

        return serving_options()
    return _BASELINE_OPTIONS


def main(argv: list[str] | None = None) -> None:
    parser = server_arg_parser(__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--upstream", required=True, help="base URL of the mock upstream")
    args = parser.parse_args(argv)
    pin_to_core(args.cpu)
    sock = bind_loopback()
    from messages_mw.tuning import tune_for_serving

    if args.kind == "aiohttp":
        # Process-wide garbage-collector and allocator settings help any Python server: the
        # aiohttp baseline gets them too, so d is compared with c on its code alone. (The
        # Starlette + httpx baseline measured slower with them, so it runs as it is.)
        tune_for_serving()
        uvloop.run(serve_aiohttp_proxy(args.upstream, sock))
    else:
        app = _UVICORN_APPS[args.kind](args.upstream)
        if args.kind.startswith("messages_mw"):
            tune_for_serving()  # as messages-mw serve does once its gateway is built
        uvloop.run(serve_with_uvicorn(app, sock, _uvicorn_options(args.kind)))


if __name__ == "__main__":
    main()
