"""The ASGI face of the gateway: routing, request reading, the policy pipeline, relaying.

:class:`Gateway` is a plain ASGI application. Mount it anywhere (FastAPI, Starlette), wrap an
app with :class:`~messages_mw.middleware.MessagesMiddleware`, or serve it alone under uvicorn.
Routes are matched on the path relative to the mount point; query strings are ignored for
routing (Claude Code adds ``?beta=true``) and forwarded upstream unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType, TracebackType

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from .assembly import (
    build_model_directory,
    build_policy,
    build_providers,
    build_telemetry,
    configured_models,
    keyed_elsewhere,
    openai_without_credentials,
)
from .body_edit import edit_top_level
from .closing import close_all
from .config import GatewayConfig
from .config_check import check_config
from .context import RequestContext, RequestEndHook
from .disconnect import DisconnectWatcher
from .errors import (
    GatewayError,
    InternalGatewayError,
    MethodNotAllowedError,
    NotFoundError,
    encode_error_body,
    error_type_for_status,
    new_request_id,
)
from .fallback import CircuitBreaker, HeldStream, Target, deadline_passed, run_chain
from .hooks import (
    AuthHook,
    CompressionHook,
    IncomingRequest,
    RouteHook,
    TagHook,
    call_hook,
    check_hook,
)
from .limits import RateLimiter
from .policy import ForwardPlan
from .pricing import add_cost_to_response_body
from .providers.base import Provider, ProviderRequest, ProviderResponse
from .relay import StallWatch, observe_response_body, relay_body, relay_stream
from .request_body import ClientDisconnectedError, header_map, read_json_body
from .response_headers import (
    EXPOSED_HEADERS,
    encode_headers,
    latin1,
    policy_headers,
    response_headers,
    tightest_limit_headers,
)
from .shared_timer import SharedTimer
from .streaming import TokenUsage, observed_usage
from .types import ASGIApp, Receive, Scope, Send
from .usage import UsageSink
from .validation import decode_count_tokens_request, decode_messages_request

__all__ = ["Gateway", "route_path"]

logger = logging.getLogger("messages_mw")

_Handler = Callable[[Scope, Receive, Send, RequestContext], Awaitable[None]]
_JSON = (b"content-type", b"application/json")


async def close_at_shutdown(gateway: Gateway) -> dict[str, str]:
    """Close ``gateway`` for a lifespan shutdown; the message to tell the server: complete,
    or failed (logged with its traceback) when closing raised, which a server reports better
    than an exception escaping the app."""
    try:
        await gateway.aclose()
    except Exception as exc:
        logger.exception("closing the gateway failed at shutdown")
        failure = f"closing the gateway failed: {type(exc).__name__}"
        return {"type": "lifespan.shutdown.failed", "message": failure}
    return {"type": "lifespan.shutdown.complete"}


def route_path(scope: Scope) -> str:
    """The request path relative to the app's mount point (``root_path`` removed)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest or rest.startswith("/"):
            return rest
    return path


def _answer_usage(context: RequestContext, target: Target) -> TokenUsage | None:
    """The usage ``target``'s last attempt reported (a held stream's, when the client left),
    now the answer's: the same object, so that
    :func:`~messages_mw.context.billed_beside_answer` does not count it twice."""
    name = target.name
    for attempt in reversed(context.attempts):
        if attempt.target == name:
            return attempt.usage
    return None


def _named(chain: Sequence[Target], name: str | None) -> Target | None:
    return next((target for target in chain if target.name == name), None)


def _is_model_path(path: str) -> bool:
    """Whether ``path`` is ``/v1/models/{id}``. A dot segment in the id would climb out of
    ``/v1/models`` once the upstream URL is normalised, reaching other endpoints with the
    gateway's own key, so such paths are not model paths."""
    model_id = path.removeprefix("/v1/models/")
    if model_id == path or not model_id:
        return False
    return not any(segment in (".", "..") for segment in model_id.split("/"))


class Gateway:
    """A drop-in Anthropic Messages API endpoint as an ASGI app.

    ``provider`` replaces the default upstream chosen by ``config.provider`` (tests hand in one
    with a mock transport); ``providers`` adds or replaces named ones for ``provider/model``
    targets and fallback chains. The hooks (``auth``, ``tagger``, ``compressor``, ``router``,
    ``limiter``, ``usage_sinks``) run in the order documented in :mod:`messages_mw.hooks`;
    each defaults to the built-in configured in ``config``. ``on_request_end`` is called once
    per finished request with its :class:`RequestContext`. Hook failures are logged and never
    leak a traceback to the client.

    Upstream connections open lazily. Close them with ``await gateway.aclose()``, ``async with
    gateway``, ``FastAPI(lifespan=gateway.lifespan)``, or, when served alone, the ASGI lifespan
    shutdown event, which the gateway handles itself. A bad argument or configuration fails
    at construction (see ``__init__``).
    """

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        provider: Provider | None = None,
        providers: Mapping[str, Provider] | None = None,
        auth: AuthHook | None = None,
        tagger: TagHook | None = None,
        compressor: CompressionHook | None = None,
        router: RouteHook | None = None,
        limiter: RateLimiter | None = None,
        usage_sinks: Sequence[UsageSink] = (),
        on_request_end: RequestEndHook | None = None,
    ) -> None:
        """Check the hooks and build the providers, policy and usage sinks; nothing connects
        upstream yet, but ``config.usage_file`` is opened here.

        Raises :class:`TypeError` for a ``provider`` (or a ``providers`` value) without
        ``send()`` and ``aclose()`` methods, a ``limiter`` without ``RateLimiter``'s methods
        and flags, or a hook, usage sink or ``on_request_end`` that is not callable;
        :class:`ValueError` for a configured fallback chain, alias or router candidate
        ``provider/model`` naming no configured provider, or a configured auth key
        whose ``sha256`` is not 64 hex digits (or that has neither or both of ``sha256`` and
        ``key``), or tag limits with ``tags_from="key"`` that no configured key could meet
        (built-in auth, no key with tags);
        :class:`~messages_mw.config.ConfigError` (a ``ValueError``) for a config value of the
        wrong type, choice or bound (checked as decoding a file checks it; constructors do
        not), provider names repeated across ``provider``, ``upstreams`` and
        ``openai_upstreams``, a provider name (``providers`` too) holding a ``/``, or an
        unknown compression bundle; :class:`OSError` if
        ``usage_file`` cannot be opened;
        :class:`ImportError` for a Redis limit store without redis-py installed, or
        ``config.telemetry`` asking for Prometheus or OpenTelemetry without its extra.
        """
        self.config = check_config(config or GatewayConfig(), "config")
        if provider is not None and not isinstance(provider, Provider):
            raise TypeError("provider must have async send() and aclose() methods")
        check_hook("on_request_end", on_request_end, "context")
        self._providers = build_providers(self.config, provider, providers)
        # Each provider's kind, for telemetry; a custom provider without one goes by its name.
        self._provider_types = {
            name: str(getattr(each, "provider_type", name))
            for name, each in self._providers.items()
        }
        self._model_source = build_model_directory(self._providers, self.config.provider)
        self._keyed_elsewhere = keyed_elsewhere(self.config, self._providers, providers)
        telemetry_sinks, metrics_app = build_telemetry(
            self.config.telemetry, configured_models(self.config)
        )
        self._policy = build_policy(
            self.config,
            list(self._providers),
            auth=auth,
            tagger=tagger,
            compressor=compressor,
            router=router,
            limiter=limiter,
            usage_sinks=[*usage_sinks, *telemetry_sinks],
            keyed_providers=self._keyed_elsewhere - openai_without_credentials(self.config),
        )
        self._breaker = CircuitBreaker(self.config.fallback.breaker)
        # One timer for every attempt's deadline and stream hold, one for the disconnect watch.
        self._timer = SharedTimer()
        self._disconnects = DisconnectWatcher()
        self._headers = self.config.headers.resolved()
        self._key_header = self.config.auth.header.lower() if self.config.auth.header else None
        self._on_request_end = on_request_end
        self._policy.reports_contexts = on_request_end is not None
        self._routes: dict[str, dict[str, _Handler]] = {
            "/v1/messages": {"POST": self._messages},
            "/v1/messages/count_tokens": {"POST": self._count_tokens},
            "/v1/models": {"GET": self._models},
            "/api/hello": {"HEAD": self._hello, "GET": self._hello},
        }
        timeout = self.config.client_write_timeout
        self._stalls = StallWatch(timeout) if timeout else None
        self._serve_http: ASGIApp = self._handle_http
        if self.config.cors_origins:
            self._serve_http = self._with_cors(self._handle_http)
        if metrics_app is not None:
            path = self.config.telemetry.metrics_path
            self._serve_http = _with_metrics(path, metrics_app, self._serve_http)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point, called by the server (or a host app) once per connection
        scope.

        ``http``: serves the request. A failure is answered in Anthropic's error envelope
        (any exception not a :class:`GatewayError` as a 500 ``api_error``, logged), and a
        client that leaves ends the upstream request; either way this returns normally. If
        the request's task is cancelled, the request is still accounted (limits, usage
        event, ``on_request_end``) before the cancellation propagates.

        ``lifespan``: answers startup at once; on shutdown awaits :meth:`aclose`, then
        answers ``lifespan.shutdown.complete``, or ``lifespan.shutdown.failed`` (logged) if
        ``aclose`` raised. ``websocket``: closed with code 1003 before
        accepting, which servers turn into a 403 refusal of the handshake. Other scope types
        are ignored.
        """
        kind = scope["type"]
        if kind == "http":
            await self._serve_http(scope, receive, send)
        elif kind == "lifespan":
            await self._handle_lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    def _with_cors(self, app: ASGIApp) -> ASGIApp:
        """``app`` answering browsers from ``config.cors_origins``: preflights, and the headers
        a page's script may read (the SDKs' request id, retry and rate-limit headers, ours)."""
        names = self._headers
        return _EnvelopeCORS(
            app,
            allow_origins=self.config.cors_origins,
            allow_methods=("GET", "HEAD", "POST"),
            allow_headers=("*",),
            expose_headers=(
                *EXPOSED_HEADERS,
                names.provider,
                names.model,
                names.fallback_used,
                names.compression_report,
            ),
        )

    async def aclose(self) -> None:
        """Flush the usage sinks (waiting at most 5 s for queued events, 10 s if a sink
        ignores its cancellation), close the limiter's store, then every provider's
        connections.

        Call it once the host has stopped sending requests; requests after it reopen what
        they need, and calling it again is harmless. Everything is closed even when one close
        raises or this coroutine is cancelled; then the cancellation, or else the first
        failure, is raised (later failures are logged).
        """
        providers = [provider.aclose for provider in self._providers.values()]
        await close_all([self._policy.aclose, *providers])

    async def __aenter__(self) -> Gateway:
        """Return the gateway; opens nothing (upstream connections open lazily)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Await :meth:`aclose`, whether the block ended normally, raised or was cancelled.
        The block's exception is never suppressed; one from ``aclose`` replaces it."""
        await self.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """A lifespan for the host app (``FastAPI(lifespan=gateway.lifespan)``): closes the
        gateway's connections when the host shuts down.

        ``app`` is ignored, and nothing happens at startup. :meth:`aclose` runs in a
        ``finally``: also when the host's lifespan ends with an exception or is cancelled,
        which then propagates, unless ``aclose`` raises, which replaces it.
        """
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
                await send(await close_at_shutdown(self))
                return

    def _resolve(self, path: str, method: str) -> _Handler:
        methods = self._routes.get(path)
        if methods is None and _is_model_path(path):
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
        except asyncio.CancelledError:
            # The server or host gave up on the request (a shutdown, its own timeout): the
            # client's answer was cut short, which the usage event must not call a success.
            context.error_type = context.error_type or "cancelled"
            raise
        except Exception:
            logger.exception("request %s failed inside the gateway", context.request_id)
            message = f"Internal gateway error (request {context.request_id})."
            await self._send_error(send, context, InternalGatewayError(message))
        finally:
            context.finished_at = time.perf_counter()
            try:
                await self._policy.finish(context)
            finally:  # cancelled while a remote limit store counts: the host still hears
                if self._on_request_end is not None:
                    await self._report(context)

    async def _report(self, context: RequestContext) -> None:
        assert self._on_request_end is not None
        try:
            await call_hook(self._on_request_end, context)
        except Exception:
            logger.exception("on_request_end failed for request %s", context.request_id)

    async def _send_error(self, send: Send, context: RequestContext, error: GatewayError) -> None:
        context.error_type = error.error_type
        if context.response_started:
            logger.error("request %s: %s after the response started", context.request_id, error)
            return
        context.status = error.status
        context.response_started = True
        if error.upstream_request_id is not None:
            context.upstream_request_id = error.upstream_request_id
        request_id = context.upstream_request_id or context.request_id
        body = error.body(request_id)
        headers = [_JSON, (b"request-id", latin1(request_id))]
        extra = policy_headers(context, self._headers)
        carried = list(error.headers.items())  # an upstream's, for one it answered
        if context.response_headers:
            carried, extra = tightest_limit_headers(carried, extra)
        # The gateway's own headers win over an upstream's of the same name, as when relaying.
        replaced = {name for name, _ in extra}
        own = [(name, value) for name, value in carried if name not in replaced]
        headers += encode_headers([*own, *extra])
        headers.append((b"content-length", b"%d" % len(body)))
        context.first_byte_at = time.perf_counter()  # errors have a time to first byte too
        try:
            await send({"type": "http.response.start", "status": error.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except OSError:  # an ASGI server's way to say the client has gone
            context.client_disconnected = True

    async def _read_json_body(
        self, scope: Scope, receive: Receive, context: RequestContext
    ) -> tuple[bytes, dict[str, str]]:
        """The request's headers and its (decoded) body, once the caller has been let in by an
        auth hook that reads only headers."""
        headers = header_map(scope)
        # Hooks read the headers through a view: what goes upstream is the gateway's to shape.
        context.request_headers = MappingProxyType(headers)  # before any hook, as promised
        policy = self._policy
        if policy.auth_first:
            incoming = IncomingRequest(context.method, context.path, context.request_headers, None)
            await policy.authenticate(incoming, context)
        body = await read_json_body(receive, headers, self.config.max_body_bytes)
        return body, headers

    async def _messages(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        body, headers = await self._read_json_body(scope, receive, context)
        parsed = decode_messages_request(body)
        context.model, context.stream = parsed.model, parsed.stream
        incoming = IncomingRequest(
            context.method, context.path, context.request_headers, parsed.model
        )
        plan = await self._policy.admit(incoming, context, parsed, body, headers)
        plan = await self._policy.prepare(plan, parsed, context)

        async def attempt(target: Target) -> ProviderResponse:
            return await self._send_to(target, plan, scope, context)

        await self._disconnects.run(receive, self._run_chain(plan, attempt, send, context), context)

    async def _count_tokens(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        body, headers = await self._read_json_body(scope, receive, context)
        parsed = decode_count_tokens_request(body)
        context.model = parsed.model
        incoming = IncomingRequest(
            context.method, context.path, context.request_headers, context.model
        )
        await self._policy.authenticate_with_body(incoming, context)
        await self._policy.label(incoming, context, parsed)
        # Counting is free at Anthropic and rate-limited apart from messages, so the limits
        # do not apply; the key's model allow-list does.
        allowed = self._policy.check_model(context, context.model)
        plan = self._policy.consume_gateway_fields(body, headers, parsed, allowed)
        # The messages chain, retries and breaker included: Claude Code counts tokens too, and
        # should not fail at it through an outage its messages survive.
        resolver = plan.resolver or self._policy.resolver
        plan.chain = resolver.chain(context.model, plan.body_targets)

        async def attempt(target: Target) -> ProviderResponse:
            return await self._send_to(target, plan, scope, context)

        # The breakers read only: counting often works while messages fail (and an OpenAI
        # target counts locally), so its successes would keep a failing target's circuit
        # shut; but a target messages skip is skipped here too, not waited out.
        chain = self._run_chain(plan, attempt, send, context, breaker=self._breaker.read_only())
        await self._disconnects.run(receive, chain, context)

    async def _models(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        headers = header_map(scope)
        context.request_headers = MappingProxyType(headers)  # read-only for hooks
        incoming = IncomingRequest(context.method, context.path, context.request_headers, None)
        await self._policy.authenticate(incoming, context)
        # The default provider answers (with the OpenAI-compatible ones' models merged in).
        context.provider = self.config.provider
        context.provider_type = self._provider_types[self.config.provider]
        request = self._provider_request(scope, context, b"", headers)
        relaying = self._send_and_relay(self._model_source, request, send, context)
        await self._disconnects.run(receive, relaying, context)

    async def _hello(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        context.status = 200
        context.response_started = True
        headers = [(b"request-id", context.request_id.encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _provider_request(
        self,
        scope: Scope,
        context: RequestContext,
        body: bytes,
        headers: dict[str, str],
        own_key: bool = False,
    ) -> ProviderRequest:
        """What goes to the upstream; ``own_key``: the target provider is one that must get
        neither a key's virtual key nor the client's own key (see ``_keyed_elsewhere``)."""
        if self._key_header is not None and self._key_header in headers:
            # The gateway key's own header never goes upstream, whatever it is called.
            headers = {name: value for name, value in headers.items() if name != self._key_header}
        principal = context.principal
        credentials = "default"
        api_key = None
        if principal is not None:
            # A provider keyed on its own (a second vendor, say) gets its own key only: never a
            # key's virtual key nor a client's own key, both meant for the default upstream.
            credentials = "forward" if principal.passthrough and not own_key else "strip"
            api_key = None if own_key else principal.upstream_api_key
        return ProviderRequest(
            method=context.method,
            path=context.path,
            body=body,
            headers=headers,
            request_id=context.request_id,
            query=scope["query_string"].decode("latin-1"),
            stream=context.stream,
            api_key=api_key,
            client_credentials=credentials,  # type: ignore[arg-type]
        )

    async def _send_to(
        self, target: Target, plan: ForwardPlan, scope: Scope, context: RequestContext
    ) -> ProviderResponse:
        body = plan.body
        if target.model != context.model:
            body = edit_top_level(body, set_fields={"model": target.model})
        own_key = target.provider in self._keyed_elsewhere
        request = self._provider_request(scope, context, body, plan.headers, own_key)
        return await self._providers[target.provider].send(request)

    async def _run_chain(
        self,
        plan: ForwardPlan,
        attempt: Callable[[Target], Awaitable[ProviderResponse]],
        send: Send,
        context: RequestContext,
        *,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """Run ``plan``'s chain and relay its answer, through ``breaker`` (by default the
        gateway's circuit breakers)."""
        # Only a stream is ever held back (JSON answers are final as they come).
        held = HeldStream() if context.stream else None
        try:
            result = await run_chain(
                plan.chain,
                attempt,
                policy=self.config.fallback.retry,
                breaker=breaker if breaker is not None else self._breaker,
                stream=context.stream,
                attempts=context.attempts,
                held=held,
                timer=self._timer,
            )
        except asyncio.CancelledError:
            # The client left while a stream was held back: its message_start still says what
            # that target's upstream bills for the input, which the event must not lose. (The
            # chain logged it on that target's attempt, the last: the same usage, not more.)
            if held is not None and (target := held.target) is not None:
                context.usage = _answer_usage(context, target) or observed_usage(held.chunks)
                self._record_server(context, target, target != plan.chain[0])
            raise
        except GatewayError as exc:
            # A target's failure, raised (no answer, or a stream's error event): the answer
            # names that target, as a relayed error response does, and bills what its
            # upstream reported before failing (a stream's message_start, say).
            if (target := _named(plan.chain, exc.target_name)) is not None:
                self._record_server(context, target, target != plan.chain[0])
                # The failing attempt's own usage object, which the chain put on the error.
                context.usage = exc.usage or context.usage
            raise
        # Inline, not _record_server: this is every request's path.
        target = result.target
        context.provider, context.served_model = target.provider, target.model
        context.provider_type = self._provider_types[target.provider]
        context.fallback_used = result.fallback_used
        try:
            await self._relay(result.response, send, context)
        finally:
            if held is not None and held.chunks and context.first_byte_at is None:
                # The client went at the response's first send, before the relay read the
                # opening events held back for the chain: their message_start says what the
                # upstream bills for the input all the same.
                context.usage = observed_usage(held.chunks)

    def _record_server(self, context: RequestContext, target: Target, fallback: bool) -> None:
        context.provider, context.served_model = target.provider, target.model
        context.provider_type = self._provider_types[target.provider]
        context.fallback_used = fallback

    async def _send_and_relay(
        self, provider: Provider, request: ProviderRequest, send: Send, context: RequestContext
    ) -> None:
        """One attempt, no chain, held to the retry policy's overall deadline as a chain is:
        the read timeout alone would let an upstream sending a byte at a time hold on."""
        seconds = self.config.fallback.retry.deadline
        deadline = self._timer.timeout(seconds)
        try:
            async with deadline:
                response = await provider.send(request)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise deadline_passed(seconds) from None
        await self._relay(response, send, context)

    async def _relay(self, response: ProviderResponse, send: Send, context: RequestContext) -> None:
        try:
            if response.chunks is not None:
                await relay_stream(
                    response,
                    send,
                    context,
                    response_headers(response, context, self._headers),
                    self._stalls,
                )
                return
            body = response.body or b""
            observe_response_body(body, context)
            if response.status >= 400 and context.error_type is None:
                # An error body not in Anthropic's shape (an HTML page from a proxy before the
                # upstream) is relayed as it came; the usage event still gets its type.
                context.error_type = error_type_for_status(response.status)
            if response.status == 200:
                body = self._with_cost(body, context)
            headers = response_headers(response, context, self._headers)
            await relay_body(response, send, context, headers, body)
        finally:
            _note_report(response, context)
            await response.close()

    def _with_cost(self, body: bytes, context: RequestContext) -> bytes:
        if not self.config.cost_in_response or self._policy.pricing is None:
            return body
        asked = context.served_model or context.model
        cost = self._policy.pricing.answer_cost(asked, context.response_model, context.usage)
        return body if cost is None else add_cost_to_response_body(body, cost)


def _with_metrics(path: str, metrics: ASGIApp, app: ASGIApp) -> ASGIApp:
    """``app``, with ``metrics`` answering at ``path``, with or without a trailing slash (a
    mounted metrics app would redirect one to the other). Scrapes are not requests to the
    gateway: no auth, no usage event."""
    base = path.rstrip("/")
    paths = frozenset({base or "/", base + "/"})

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if route_path(scope) in paths:
            await metrics(scope, receive, send)
        else:
            await app(scope, receive, send)

    return serve


def _not_found_message(path: str) -> str:
    path = path or "/"  # the mount point itself, under middleware: "/anthropic"
    if path.startswith("/v1/v1/"):
        return (
            f"Not found: {path}. Clients append /v1/... to the base URL themselves; "
            "drop the trailing /v1 from your base URL."
        )
    return (
        f"Not found: {path}. This gateway serves /v1/messages, /v1/messages/count_tokens "
        "and /v1/models."
    )


def _note_report(response: ProviderResponse, context: RequestContext) -> None:
    """What the provider knows beyond the answer it relayed (a translating one)."""
    report = response.reported()
    if report.usage_estimated:
        context.usage.output_tokens_estimated = True
    if report.model:
        context.response_model = report.model


class _EnvelopeCORS(CORSMiddleware):
    """Starlette's CORS handling, with a refused preflight answered in Anthropic's error
    envelope, as every error the gateway makes is (Starlette answers it in plain text)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        request_id = new_request_id()
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        headers["request-id"] = request_id
        # Starlette's text names what was refused: "Disallowed CORS origin, method".
        message = f"{bytes(response.body).decode()}."
        body = encode_error_body("invalid_request_error", message, request_id)
        return Response(body, response.status_code, headers, "application/json")
