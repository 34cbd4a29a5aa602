"""The ASGI face of the gateway: routing, request reading, relaying, and error answers.

:class:`Gateway` is a plain ASGI application. Mount it anywhere (FastAPI, Starlette), wrap an
app with :class:`~messages_mw.middleware.MessagesMiddleware`, or serve it alone under uvicorn.
Routes are matched on the path relative to the mount point; query strings are ignored for
routing (Claude Code adds ``?beta=true``) and forwarded upstream unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

import msgspec

from .config import GatewayConfig
from .context import RequestContext, RequestEndHook
from .errors import (
    GatewayError,
    InternalGatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    UpstreamUnavailableError,
    new_request_id,
)
from .protocol import ObservedResponse
from .providers.base import Provider, ProviderRequest, ProviderResponse
from .request_body import ClientDisconnectedError, decode_content_encoding, read_body
from .streaming import StreamObserver, frame_event, merge_usage
from .types import Receive, Scope, Send
from .validation import decode_count_tokens_request, decode_messages_request

__all__ = ["Gateway", "route_path"]

logger = logging.getLogger("messages_mw")

_Handler = Callable[[Scope, Receive, Send, RequestContext], Awaitable[None]]
_response_decoder = msgspec.json.Decoder(ObservedResponse)
_JSON = (b"content-type", b"application/json")


def route_path(scope: Scope) -> str:
    """The request path relative to the app's mount point (``root_path`` removed)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest or rest.startswith("/"):
            return rest
    return path


def _header_map(scope: Scope) -> dict[str, str]:
    # ASGI servers deliver lower-case names; latin-1 round-trips any header byte.
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _is_json_content_type(value: str) -> bool:
    media_type = value.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _default_provider(config: GatewayConfig) -> Provider:
    if config.provider == "mock":
        from .providers.mock import MockProvider

        return MockProvider(config.mock, config.models)
    from .providers.anthropic import AnthropicProvider

    return AnthropicProvider(config.upstream)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Gateway:
    """A drop-in Anthropic Messages API endpoint as an ASGI app.

    ``provider`` replaces the upstream chosen by ``config.provider`` (tests hand in one with a
    mock transport). ``on_request_end`` is called once per finished request (success, error or
    client disconnect) with its :class:`RequestContext`; it may be sync or async, and an
    exception in it is logged, never sent to the client.

    Upstream connections open lazily. Close them with ``await gateway.aclose()``, ``async with
    gateway``, ``FastAPI(lifespan=gateway.lifespan)``, or, when served alone, the ASGI lifespan
    shutdown event, which the gateway handles itself.
    """

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        provider: Provider | None = None,
        on_request_end: RequestEndHook | None = None,
    ) -> None:
        self.config = config or GatewayConfig()
        if provider is not None and not isinstance(provider, Provider):
            raise TypeError("provider must have async send() and aclose() methods")
        if on_request_end is not None and not callable(on_request_end):
            raise TypeError("on_request_end must be callable")
        self._provider = provider if provider is not None else _default_provider(self.config)
        self._on_request_end = on_request_end
        self._routes: dict[str, dict[str, _Handler]] = {
            "/v1/messages": {"POST": self._messages},
            "/v1/messages/count_tokens": {"POST": self._count_tokens},
            "/v1/models": {"GET": self._forward_get},
            "/api/hello": {"HEAD": self._hello, "GET": self._hello},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._handle_http(scope, receive, send)
        elif kind == "lifespan":
            await self._handle_lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def aclose(self) -> None:
        """Close upstream connections; requests after this reopen them lazily."""
        await self._provider.aclose()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """A lifespan for the host app (``FastAPI(lifespan=gateway.lifespan)``): closes the
        gateway's connections when the host shuts down."""
        try:
            yield
        finally:
            await self.aclose()

    async def _handle_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _resolve(self, path: str, method: str) -> _Handler:
        methods = self._routes.get(path)
        if methods is None and path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            methods = self._routes["/v1/models"]
        if methods is None:
            raise NotFoundError(_not_found_message(path))
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(methods)
            raise MethodNotAllowedError(
                f"Method {method} is not allowed on {path}; use {allowed}.",
                headers={"allow": allowed},
            )
        return handler

    async def _handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = RequestContext(new_request_id(), scope["method"], route_path(scope))
        try:
            handler = self._resolve(context.path, context.method)
            await handler(scope, receive, send, context)
        except GatewayError as exc:
            await self._send_error(send, context, exc)
        except ClientDisconnectedError:
            context.client_disconnected = True
        except Exception:
            logger.exception("request %s failed inside the gateway", context.request_id)
            message = f"Internal gateway error (request {context.request_id})."
            await self._send_error(send, context, InternalGatewayError(message))
        finally:
            context.finished_at = time.perf_counter()
            if self._on_request_end is not None:
                await self._report(context)

    async def _report(self, context: RequestContext) -> None:
        assert self._on_request_end is not None
        try:
            result = self._on_request_end(context)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_request_end failed for request %s", context.request_id)

    async def _send_error(self, send: Send, context: RequestContext, error: GatewayError) -> None:
        context.error_type = error.error_type
        if context.response_started:
            logger.error("request %s: %s after the response started", context.request_id, error)
            return
        context.status = error.status
        context.response_started = True
        body = error.body(context.request_id)
        headers = [_JSON, (b"request-id", context.request_id.encode())]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _read_json_body(self, scope: Scope, receive: Receive) -> tuple[bytes, dict[str, str]]:
        headers = _header_map(scope)
        content_type = headers.get("content-type")
        if content_type is not None and not _is_json_content_type(content_type):
            raise InvalidRequestError(
                f"content-type: expected application/json, got '{content_type}'."
            )
        limit = self.config.max_body_bytes
        body = await read_body(receive, limit, _declared_length(headers))
        encoding = headers.get("content-encoding")
        if encoding:
            body = decode_content_encoding(body, encoding, limit)
        return body, headers

    async def _messages(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        body, headers = await self._read_json_body(scope, receive)
        request = decode_messages_request(body)
        context.model, context.stream = request.model, request.stream
        await self._forward(scope, receive, send, context, body, headers)

    async def _count_tokens(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        body, headers = await self._read_json_body(scope, receive)
        context.model = decode_count_tokens_request(body).model
        await self._forward(scope, receive, send, context, body, headers)

    async def _forward_get(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        await self._forward(scope, receive, send, context, b"", _header_map(scope))

    async def _hello(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        context.status = 200
        context.response_started = True
        headers = [(b"request-id", context.request_id.encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        request = ProviderRequest(
            method=context.method,
            path=context.path,
            body=body,
            headers=headers,
            request_id=context.request_id,
            query=scope["query_string"].decode("latin-1"),
            stream=context.stream,
        )
        work = asyncio.ensure_future(self._send_and_relay(request, send, context))
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not work.done():
                # The client left: cancelling closes the upstream request at once, so no
                # tokens are generated for nobody.
                context.client_disconnected = True
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work

    async def _send_and_relay(
        self, request: ProviderRequest, send: Send, context: RequestContext
    ) -> None:
        response = await self._provider.send(request)
        try:
            if response.chunks is None:
                await self._relay_body(response, send, context)
            else:
                await self._relay_stream(response, send, context)
        finally:
            await response.close()

    def _response_headers(
        self, response: ProviderResponse, context: RequestContext
    ) -> list[tuple[bytes, bytes]]:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        for name, value in response.headers:
            if name == "request-id":
                context.upstream_request_id = value
                return headers
        headers.append((b"request-id", context.request_id.encode()))
        return headers

    async def _relay_body(
        self, response: ProviderResponse, send: Send, context: RequestContext
    ) -> None:
        body = response.body or b""
        context.status = response.status
        if response.status == 200:
            _observe_response_body(body, context)
        headers = self._response_headers(response, context)
        context.response_started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        context.first_byte_at = time.perf_counter()

    async def _relay_stream(
        self, response: ProviderResponse, send: Send, context: RequestContext
    ) -> None:
        observer = StreamObserver()
        try:
            await self._pump(response, send, context, observer)
        finally:
            _record_stream(observer, context)

    async def _pump(
        self,
        response: ProviderResponse,
        send: Send,
        context: RequestContext,
        observer: StreamObserver,
    ) -> None:
        assert response.chunks is not None
        context.status = response.status
        headers = self._response_headers(response, context)
        context.response_started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        error: GatewayError | None = None
        try:
            async for chunk in response.chunks:
                if context.first_byte_at is None:
                    context.first_byte_at = time.perf_counter()
                observer.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except GatewayError as exc:
            error = exc
        except Exception:
            logger.exception("request %s: relaying the stream failed", context.request_id)
            error = InternalGatewayError(f"Internal gateway error (request {context.request_id}).")
        if error is None and not observer.finished:
            error = UpstreamUnavailableError("The upstream stream ended before message_stop.")
        tail = b"" if error is None else _error_event(error, observer, context)
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def _error_event(error: GatewayError, observer: StreamObserver, context: RequestContext) -> bytes:
    # A half-relayed event is closed first, so the error event parses on its own.
    prefix = b"" if observer.at_event_boundary else b"\n\n"
    context.error_type = error.error_type
    logger.warning("request %s: stream failed: %s", context.request_id, error)
    return prefix + frame_event("error", error.body(context.request_id))


def _record_stream(observer: StreamObserver, context: RequestContext) -> None:
    context.usage = observer.usage
    context.stop_reason = observer.stop_reason
    if observer.error_type is not None and context.error_type is None:
        context.error_type = observer.error_type


def _observe_response_body(body: bytes, context: RequestContext) -> None:
    try:
        observed = _response_decoder.decode(body)
    except msgspec.DecodeError:
        return
    merge_usage(context.usage, observed.usage)
    context.stop_reason = observed.stop_reason


def _declared_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"content-length: '{value}' is not an integer.") from None


def _not_found_message(path: str) -> str:
    if path.startswith("/v1/v1/"):
        return (
            f"Not found: {path}. Clients append /v1/... to the base URL themselves; "
            "drop the trailing /v1 from your base URL."
        )
    return (
        f"Not found: {path}. This gateway serves /v1/messages, /v1/messages/count_tokens "
        "and /v1/models."
    )
