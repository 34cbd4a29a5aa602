"""The OpenAI-compatible provider: Anthropic requests in, Chat Completions upstream, and back.

``POST /v1/messages`` is translated to ``POST {base_url}/chat/completions`` and the answer,
whole or streamed, back to Anthropic's format (:mod:`messages_mw.translate`). Token counting
and the model list are answered locally: Chat Completions has no counting endpoint, and
upstream model lists name models the gateway may not route. Only the provider's own headers
go upstream, never a client's ``anthropic-*`` headers or credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from urllib.parse import parse_qs

import httpx
import msgspec

from ..body_edit import edit_top_level
from ..config import OpenAIUpstreamConfig
from ..errors import (
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    random_id,
)
from ..protocol import DECODE_ERRORS, CountTokensResponse, ModelInfo, ModelList
from ..streaming import frame_event
from ..translate import StreamTranslator, to_anthropic_message, translate_error
from ..translate._openai import InUsage
from ..translate.request import translate_request
from ..translate.response import completion_as_stream_data
from ..validation import decode_count_tokens_request, describe_decode_error
from .anthropic import (
    UPSTREAM_READ_ERRORS,
    is_event_stream,
    not_final_status,
    relay_upstream_chunks,
    translate_transport_error,
)
from .base import (
    Provider,
    ProviderRequest,
    ProviderResponse,
    UpstreamReport,
    read_bounded,
    split_base_url,
)
from .mock import estimate_input_tokens

__all__ = ["ModelDirectory", "OpenAIProvider"]

_MODELS_PREFIX = "/v1/models/"
_CREATED_AT = "2025-01-01T00:00:00Z"
_DEFAULT_PAGE = 20
_USER_AGENT = "messages-mw"
_PING = frame_event("ping", b'{"type":"ping"}')
# How long, and how many bytes, to read after [DONE] for the body's end (see _read_to_end).
_DRAIN_SECONDS = 0.1
_DRAIN_BYTES = 64 * 1024
_SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))
_JSON_HEADERS = (("content-type", "application/json"),)
# Upstream headers a client (and the fallback chain) needs to retry an error correctly.
_RELAYED_ERROR_HEADERS = frozenset({"retry-after", "retry-after-ms", "x-should-retry"})
_encoder = msgspec.json.Encoder()
# The W3C trace context, forwarded as the client sent it.
_TRACE_HEADERS = ("traceparent", "tracestate")


class _Model(msgspec.Struct):
    model: str = ""


_model_decoder = msgspec.json.Decoder(_Model)


def _model_of(body: bytes) -> str:
    try:
        return _model_decoder.decode(body).model
    except DECODE_ERRORS as exc:
        raise InvalidRequestError(describe_decode_error(exc, body)) from exc


def _require(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise MethodNotAllowedError(f"Method {method} is not allowed on {path}; use {allowed}.")


def _error_headers(response: httpx.Response) -> list[tuple[str, str]]:
    relayed = [(k, v) for k, v in response.headers.items() if k in _RELAYED_ERROR_HEADERS]
    return [*_JSON_HEADERS, *relayed]


def _is_event_stream(response: httpx.Response) -> bool:
    return is_event_stream(response.headers.get("content-type", ""))


def _body_stream(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it arrives: the transport's own stream when it needs no decoding (the
    upstream honoured ``accept-encoding: identity``), else httpx's decoding iterator."""
    stream = response.stream
    if (
        "content-encoding" in response.headers
        or response.is_stream_consumed
        or not isinstance(stream, httpx.AsyncByteStream)
    ):
        return response.aiter_bytes()
    return aiter(stream)


class OpenAIProvider:
    """A :class:`~messages_mw.providers.base.Provider` for an OpenAI-compatible upstream.

    ``name`` is the provider's name in the gateway: the model list shows ids as
    ``<name>/<model>``. The model sent upstream is the request body's ``model`` (the gateway
    has already replaced it with the target's model). ``transport`` replaces the network
    (``httpx.MockTransport`` in tests); by default a pooled :class:`FastHTTPTransport` opens
    on first use and :meth:`aclose` closes it.

    ``send`` answers ``POST /v1/messages`` through the upstream;
    ``POST /v1/messages/count_tokens`` with a local estimate (see
    :func:`~messages_mw.providers.mock.estimate_input_tokens`: JSON bytes / 4, fixed costs for
    images and documents), since Chat Completions has no counting endpoint; and
    ``GET /v1/models[/{id}]`` from ``settings.models``. It raises
    :class:`~messages_mw.errors.InvalidRequestError` for a body it cannot translate,
    :class:`~messages_mw.errors.NotFoundError` for other paths and unknown models, and the
    errors of :func:`~messages_mw.providers.anthropic.translate_transport_error` when no answer
    arrives. Upstream error answers come back in Anthropic's error envelope with Anthropic's
    status codes. A stream that breaks or stalls mid-way ends with an SSE ``error`` event.
    Cancelling ``send`` or the stream closes the upstream connection.
    """

    # What kind of upstream this is, for telemetry (the GenAI conventions' provider name).
    provider_type = "openai"

    def __init__(
        self,
        settings: OpenAIUpstreamConfig,
        *,
        name: str = "openai",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._given_transport = transport
        self._transport = transport
        base, query = split_base_url(settings.base_url)
        self._url = httpx.URL(base + "/chat/completions" + ("?" + query if query else ""))
        self._origin = f"'{name}'"  # as the Anthropic provider names itself in errors
        timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.write_timeout,
            pool=settings.pool_timeout,
        )
        self._extensions = {"timeout": timeout.as_dict()}
        self._headers = _fixed_headers(settings, self._url.netloc)
        self._sets_user_agent = any(name == b"user-agent" for name, _ in self._headers)
        self.models = [ModelInfo(f"{name}/{m}", m, _CREATED_AT) for m in settings.models]
        self._model_list = _encoder.encode(_page(self.models, False))
        self._models_by_id = {info.id: info for info in self.models}
        self._models_by_id.update({info.display_name: info for info in self.models})

    async def send(self, request: ProviderRequest) -> ProviderResponse:
        path, method = request.path.rstrip("/"), request.method.upper()
        if path == "/v1/messages":
            _require(method, "POST", path)
            return await self._messages(request)
        if path == "/v1/messages/count_tokens":
            _require(method, "POST", path)
            decode_count_tokens_request(request.body)
            count = CountTokensResponse(estimate_input_tokens(request.body))
            return ProviderResponse(200, list(_JSON_HEADERS), body=_encoder.encode(count))
        if path == "/v1/models":
            _require(method, "GET", path)
            return ProviderResponse(200, list(_JSON_HEADERS), body=self._model_list)
        if path.startswith(_MODELS_PREFIX):
            _require(method, "GET", path)
            info = self._models_by_id.get(path.removeprefix(_MODELS_PREFIX))
            if info is None:
                raise NotFoundError(f"model: {path.removeprefix(_MODELS_PREFIX)}")
            return ProviderResponse(200, list(_JSON_HEADERS), body=_encoder.encode(info))
        raise NotFoundError(f"Not found: {method} {request.path}")

    async def aclose(self) -> None:
        """Close pooled connections. Safe to call more than once."""
        transport, self._transport = self._transport, self._given_transport
        if transport is not None:
            await transport.aclose()

    def _get_transport(self) -> httpx.AsyncBaseTransport:
        if self._transport is None:
            from ..transport import FastHTTPTransport

            self._transport = FastHTTPTransport(max_connections=self._settings.max_connections)
        return self._transport

    async def _messages(self, request: ProviderRequest) -> ProviderResponse:
        model = _model_of(request.body)
        quirks = self._settings.quirks
        translation = translate_request(
            request.body, model=model, quirks=quirks, stream=request.stream
        )
        # Anthropic answers with thinking only when asked; reasoning a server sends anyway
        # is left out then, unless it must come back to the server (reasoning_history).
        thinking = translation.thinking or quirks.reasoning_history == "reasoning_content"
        response = await self._post(translation.body, request)
        status = response.status_code
        if not 200 <= status < 300 and not 400 <= status <= 599:
            await response.aclose()
            raise not_final_status(status, self._origin)
        if status < 300 and request.stream and _is_event_stream(response):
            translator = self._translator(model, request, thinking)
            return self._stream(response, translator)
        try:
            body = await read_bounded(response.aiter_bytes(), self._origin)
        except UPSTREAM_READ_ERRORS as exc:
            raise translate_transport_error(exc, self._origin) from exc
        finally:
            await response.aclose()
        if status >= 300:
            status, error = translate_error(status, body)
            return ProviderResponse(status, _error_headers(response), body=error)
        if request.stream:
            # Not a 502 that the SDK would retry, each retry a whole completion thrown away:
            # the stream the client asked for, or the error the body holds.
            return self._whole_as_stream(body, self._translator(model, request, thinking))
        message = to_anthropic_message(
            body,
            model=model,
            message_id=random_id("msg_"),
            estimate_input=lambda: estimate_input_tokens(request.body),
            thinking=thinking,
        )
        report = _report_of(body)
        return ProviderResponse(200, list(_JSON_HEADERS), body=message, reported=lambda: report)

    @staticmethod
    def _translator(model: str, request: ProviderRequest, thinking: bool) -> StreamTranslator:
        input_tokens = estimate_input_tokens(request.body)
        return StreamTranslator(
            model=model, message_id=random_id("msg_"), input_tokens=input_tokens, thinking=thinking
        )

    def _whole_as_stream(self, body: bytes, translator: StreamTranslator) -> ProviderResponse:
        """A whole answer to a streaming request: SSE the server labelled otherwise, or a
        completion from a server that ignored ``stream``, translated as one stream."""
        head = body.lstrip()[:6]
        looks_like_sse = head.startswith((b"data:", b"event:", b":"))
        data = body if looks_like_sse else completion_as_stream_data(body)
        events = translator.start() + translator.feed(data) + translator.finish()

        async def whole() -> AsyncIterator[bytes]:
            yield events

        return ProviderResponse(
            200,
            list(_SSE_HEADERS),
            chunks=whole(),
            ended=lambda: True,
            reported=lambda: _translator_report(translator),
        )

    def _stream(self, response: httpx.Response, translator: StreamTranslator) -> ProviderResponse:
        events = self._events(_body_stream(response), translator)

        async def close() -> None:
            try:
                await events.aclose()
            finally:  # the connection goes back whatever became of the translation
                await response.aclose()

        return ProviderResponse(
            200,
            list(_SSE_HEADERS),
            chunks=events,
            close=close,
            reported=lambda: _translator_report(translator),
        )

    async def _post(self, payload: bytes, request: ProviderRequest) -> httpx.Response:
        headers = self._headers.copy()
        headers.append((b"accept", b"text/event-stream" if request.stream else b"application/json"))
        if not self._sets_user_agent:
            agent = request.headers.get("user-agent", _USER_AGENT)
            headers.append((b"user-agent", agent.encode("latin-1")))
        for name in _TRACE_HEADERS:  # a self-hosted server (vLLM) joins the client's trace
            if (value := request.headers.get(name)) is not None:
                headers.append((name.encode(), value.encode("latin-1")))
        headers.append((b"content-length", b"%d" % len(payload)))
        upstream = httpx.Request(
            "POST",
            self._url,
            headers=headers,
            stream=httpx.ByteStream(payload),
            extensions=self._extensions,
        )
        try:
            return await self._get_transport().handle_async_request(upstream)
        except httpx.TransportError as exc:
            raise translate_transport_error(exc, self._origin) from exc

    async def _events(
        self, chunks: AsyncIterator[bytes], translator: StreamTranslator
    ) -> AsyncGenerator[bytes, None]:
        """``message_start`` at once, then the upstream chunks translated as they arrive, with
        a ping through each silence the client hears, until ``message_stop`` or an error."""
        reads = relay_upstream_chunks(chunks, self._origin)
        pending: asyncio.Future[bytes] | None = None
        loop = asyncio.get_running_loop()
        interval = self._settings.ping_interval
        # A model that thinks before its first token (a reasoning model, a long prefill) would
        # otherwise leave the client without a byte of body, as protocol.md 5.8 warns.
        yield translator.start()
        # Silence is timed from the client's last byte, not the upstream's: an upstream busy
        # with what translates to nothing (comment keep-alives, reasoning the client did not
        # ask for, usage chunks) leaves the client's idle watchdog just as hungry.
        sent_at = loop.time()
        try:
            while not translator.ended:
                if pending is None:
                    pending = asyncio.ensure_future(anext(reads))
                wait = max(0.0, sent_at + interval - loop.time())
                done, _ = await asyncio.wait((pending,), timeout=wait)
                events = b""
                if done:
                    arrived, pending = pending, None
                    try:
                        events = translator.feed(arrived.result())
                    except StopAsyncIteration:
                        break
                if not events and loop.time() - sent_at >= interval:
                    events = _PING
                if events:
                    yield events
                    sent_at = loop.time()
        except GatewayError as exc:
            failure = translator.fail(exc)
            if failure:
                yield failure
            return
        finally:
            if pending is not None:
                pending.cancel()
        if translator.ended:
            await _read_to_end(reads)
        tail = translator.finish()
        if tail:
            yield tail


async def _read_to_end(reads: AsyncIterator[bytes]) -> None:
    """Read, briefly, what the upstream sends after ``[DONE]``: most often the chunked body's
    terminator, in a write of its own (vLLM and other Starlette servers). A body read to its
    end lets the keep-alive connection back into the pool; a body left unread closes it, and
    the next request pays for a new connection (and TLS handshake)."""
    size = 0
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for chunk in reads:
                size += len(chunk)
                if size > _DRAIN_BYTES:
                    return
    except (TimeoutError, GatewayError):
        return


def _fixed_headers(settings: OpenAIUpstreamConfig, host: bytes) -> list[tuple[bytes, bytes]]:
    """The headers every upstream request carries; ``extra_headers`` replace same-named ones.

    ``accept-encoding: identity`` because the pooled transport relays bytes undecoded."""
    fixed: dict[str, str] = {
        "content-type": "application/json",
        "accept-encoding": "identity",
    }
    if settings.api_key is not None:
        fixed["authorization"] = f"Bearer {settings.api_key}"
    fixed.update({name.lower(): value for name, value in settings.extra_headers.items()})
    headers = [(b"host", host)]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fixed.items()]
    return headers


def _page(models: Sequence[ModelInfo], has_more: bool) -> ModelList:
    first, last = (models[0].id, models[-1].id) if models else (None, None)
    return ModelList(list(models), has_more, first, last)


class _Page(msgspec.Struct):
    data: list[msgspec.Raw] = msgspec.field(default_factory=list)
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


_page_decoder = msgspec.json.Decoder(_Page)


def _query_value(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _page_size(params: dict[str, list[str]]) -> int:
    # The default provider already rejected a bad limit; this only sizes the merged page.
    try:
        return max(1, int(_query_value(params, "limit") or _DEFAULT_PAGE))
    except ValueError:
        return _DEFAULT_PAGE


class ModelDirectory:
    """The gateway's ``GET /v1/models[/{id}]`` when OpenAI-compatible providers are configured.

    The list is the default provider's, forwarded page by page as before, followed by the
    models each provider in ``listed`` serves (ids ``<name>/<model>``): they fill the default
    provider's last page up to ``limit``, and a page ``after_id`` one of them is served here.
    Paging backwards (``before_id``) from one of them stays among them. A model id with a
    listed provider's prefix is answered by that provider, every other request by
    ``default``. Raises what those providers raise; holds no resources of its own.
    """

    def __init__(self, default: Provider, listed: Mapping[str, OpenAIProvider]) -> None:
        self._default = default
        self._listed = dict(listed)
        self._extra = [info for provider in listed.values() for info in provider.models]
        self._positions = {info.id: position for position, info in enumerate(self._extra)}

    async def send(self, request: ProviderRequest) -> ProviderResponse:
        path = request.path.rstrip("/")
        if path.startswith(_MODELS_PREFIX):
            owner = self._listed.get(path.removeprefix(_MODELS_PREFIX).partition("/")[0])
            return await (owner or self._default).send(request)
        if path != "/v1/models" or request.method.upper() != "GET":
            return await self._default.send(request)
        params = parse_qs(request.query)
        local = self._local_page(params)
        if local is not None:
            return ProviderResponse(200, list(_JSON_HEADERS), body=_encoder.encode(local))
        return self._extended(await self._default.send(request), params)

    async def aclose(self) -> None:
        """Nothing to release: the gateway closes the providers themselves."""

    def _local_page(self, params: dict[str, list[str]]) -> ModelList | None:
        limit = _page_size(params)
        after = self._positions.get(_query_value(params, "after_id") or "")
        if after is not None:
            window = self._extra[after + 1 :]
            return _page(window[:limit], len(window) > limit)
        before = self._positions.get(_query_value(params, "before_id") or "")
        if before is not None:
            window = self._extra[:before]
            return _page(window[-limit:], len(window) > limit)
        return None

    def _extended(
        self, response: ProviderResponse, params: dict[str, list[str]]
    ) -> ProviderResponse:
        """The default provider's last page with the listed models appended, room allowing."""
        if response.status != 200 or response.body is None or "before_id" in params:
            return response
        try:
            page = _page_decoder.decode(response.body)
        except DECODE_ERRORS:
            return response
        if page.has_more or not self._extra:
            return response
        added = self._extra[: max(0, _page_size(params) - len(page.data))]
        changed: dict[str, object] = {
            "data": [*page.data, *(msgspec.Raw(_encoder.encode(info)) for info in added)],
            "has_more": len(added) < len(self._extra),
        }
        if added:
            changed["first_id"] = page.first_id or added[0].id
            changed["last_id"] = added[-1].id
        # Only these fields change: a field Anthropic adds to the page later passes through.
        body = edit_top_level(response.body, set_fields=changed)
        return ProviderResponse(response.status, response.headers, body=body)


class _Facts(msgspec.Struct):
    model: str | None = None
    usage: InUsage | None = None


_facts_decoder = msgspec.json.Decoder(_Facts)


def _report_of(body: bytes) -> UpstreamReport:
    """The snapshot a completion names and whether it came without usage (the translation
    then estimated it); read apart from the translation, which keeps neither."""
    try:
        facts = _facts_decoder.decode(body)
    except DECODE_ERRORS:
        return UpstreamReport()
    usage = facts.usage
    reported = usage is not None and usage.fully_reported()
    seen = usage is not None and not usage.empty()
    return UpstreamReport(facts.model or None, not reported, seen)


def _translator_report(translator: StreamTranslator) -> UpstreamReport:
    return UpstreamReport(
        translator.upstream_model, not translator.usage_reported, translator.any_usage_reported
    )
