"""The Anthropic provider: forwards requests to an Anthropic-compatible upstream over httpx.

Bodies go upstream exactly as the app hands them over; responses come back as raw bytes,
streamed chunk by chunk for SSE. Only an allow-list of client headers is forwarded, so
hop-by-hop headers, cookies and the client's credentials never leak upstream by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import NamedTuple
from urllib.parse import quote

import httpx
from httpx import _decoders as httpx_decoders

from ..config import UpstreamConfig
from ..errors import (
    GatewayError,
    InvalidRequestError,
    NoFreeConnectionError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from ..streaming import StreamObserver, TokenUsage, message_usage
from ..transport import FastHTTPTransport, Origin, origin_of
from .base import (
    ProviderRequest,
    ProviderResponse,
    never_ended,
    never_ready,
    read_bounded,
    split_base_url,
)

__all__ = ["AnthropicProvider"]

logger = logging.getLogger("messages_mw")

# Client headers forwarded as they are; everything else is dropped. anthropic-* covers
# version, beta, workspace and future routing headers. An idempotency key also lets the
# gateway's transport resend a POST that died unanswered on a reused connection. The W3C
# trace context goes on as the client would have sent it to Anthropic: a self-hosted
# upstream joins the client's trace.
_FORWARDED_PREFIXES = ("anthropic-", "x-stainless-")
_FORWARDED_NAMES = frozenset(
    {
        "user-agent",
        "x-app",
        "x-claude-code-session-id",
        "accept",
        "idempotency-key",
        "x-idempotency-key",
        "traceparent",
        "tracestate",
    }
)
# Upstream response headers never relayed: hop-by-hop ones, framing the server redoes,
# and infrastructure headers that would describe the upstream's edge, not ours.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"content-length",
        b"content-encoding",
        b"date",
        b"server",
        b"set-cookie",
        b"alt-svc",
        b"via",
    }
)
# Which Anthropic organization a key belongs to: relayed only to a client whose own key was
# used. The gateway's key is the operator's, and its organization no tenant's business (no
# SDK reads the header).
_ORGANIZATION_HEADER = b"anthropic-organization-id"
# Headers are handed to httpx as bytes, which it takes without re-encoding; latin-1 gives back
# exactly the bytes the ASGI server decoded, and the bytes the upstream sent.
_FIXED_REQUEST_HEADERS = [(b"content-type", b"application/json"), (b"accept-encoding", b"identity")]
_CACHED_URLS = 64
# The codings httpx decodes here: br and zstd only with their optional packages installed.
_DECODABLE = frozenset(
    getattr(httpx_decoders, "SUPPORTED_DECODERS", ("identity", "gzip", "deflate"))
)
# RFC 3986 path characters besides unreserved ones, which quote() never escapes.
_PATH_SAFE = "/:@!$&'()*+,;="
_MODEL_PATH = "/v1/models/"
_MESSAGES_PATH = "/v1/messages"


# The most of a stream read, and for how long at most, for the usage of an answer the gateway
# discards (see _discarded_usage): a message_start comes first, and is a few hundred bytes.
_DISCARDED_STREAM_BYTES = 64 * 1024
_DISCARDED_STREAM_SECONDS = 2.0

# What reading an upstream answer can raise besides cancellation: the connection failing, or
# a compressed body that does not decompress.
UPSTREAM_READ_ERRORS = (httpx.TransportError, httpx.DecodingError)


def translate_transport_error(exc: httpx.RequestError, origin: str) -> GatewayError:
    """Map an httpx failure to the error a client's SDK retries correctly."""
    if isinstance(exc, httpx.DecodingError):
        return UpstreamUnavailableError(
            f"The upstream {origin} sent a body that does not decompress."
        )
    if isinstance(exc, httpx.PoolTimeout):
        return NoFreeConnectionError("The gateway has no free upstream connection; retry shortly.")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(f"The upstream {origin} did not answer in time.")
    if isinstance(exc, httpx.ReadError | httpx.WriteError) or _closed_early(exc):
        # Reached, then lost: "could not be reached" would send an operator to the network.
        return UpstreamUnavailableError(
            f"The upstream {origin} closed the connection before it answered."
        )
    if isinstance(exc, httpx.RemoteProtocolError):
        return UpstreamUnavailableError(
            f"The upstream {origin} answered with a response that is not valid HTTP."
        )
    return UpstreamUnavailableError(f"The upstream {origin} could not be reached.")


def not_final_status(status: int, origin: str) -> GatewayError:
    """The error (502, which falls back) for an answer whose status cannot end one: a 101
    (the gateway asks for no upgrade, so its client would wait on a protocol switch), a number
    outside 100-599, which no ASGI server sends, or a redirect. Anthropic never redirects, and
    relayed, a redirect would send the client (the SDKs follow them, ``x-api-key`` and body
    included) past the gateway to wherever it points. Callers test the status inline, on
    every request's path, and close the response before raising this."""
    if 300 <= status < 400:
        error = UpstreamUnavailableError(
            f"The upstream {origin} answered with a redirect ({status}), which the gateway"
            " neither follows nor relays: check its base_url."
        )
    else:
        error = UpstreamUnavailableError(
            f"The upstream {origin} answered with status {status}, which does not end an answer."
        )
    error.upstream_status = status
    return error


def _closed_early(exc: httpx.RequestError) -> bool:
    # How httpx (and the gateway's own transport, after it) says a server hung up cleanly.
    return isinstance(exc, httpx.RemoteProtocolError) and "disconnected" in str(exc)


async def relay_upstream_chunks(chunks: AsyncIterable[bytes], origin: str) -> AsyncIterator[bytes]:
    """Yield an upstream body's chunks, turning a mid-stream httpx failure into the
    :class:`GatewayError` the app reports as an SSE ``error`` event."""
    try:
        async for chunk in chunks:
            yield chunk
    except httpx.TimeoutException as exc:
        raise UpstreamTimeoutError(
            f"The upstream {origin} sent nothing for longer than the read timeout."
        ) from exc
    except httpx.TransportError as exc:
        raise UpstreamUnavailableError(
            f"The connection to the upstream {origin} broke mid-stream."
        ) from exc
    except httpx.DecodingError as exc:
        raise UpstreamUnavailableError(
            f"The upstream {origin} sent a stream that does not decompress."
        ) from exc


def _upstream_headers(
    client_headers: Mapping[str, str], api_key: str | None, mode: str = "default"
) -> list[tuple[bytes, bytes]]:
    headers = _FIXED_REQUEST_HEADERS.copy()
    # anthropic-version goes up as the client sent it, or not at all: Anthropic answers a
    # request without one with its own 400, which a drop-in gateway must not paper over.
    for name, value in client_headers.items():
        if name in _FORWARDED_NAMES or name.startswith(_FORWARDED_PREFIXES):
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
    for credential, secret in _credentials(client_headers, api_key, mode):
        headers.append((credential, secret.encode("latin-1")))
    return headers


def _credentials(
    client_headers: Mapping[str, str], api_key: str | None, mode: str = "default"
) -> list[tuple[bytes, str]]:
    """The key to send upstream, in the header style the client used.

    ``mode`` (see :class:`ProviderRequest`): ``forward`` sends the client's own credentials,
    ``strip`` only ``api_key`` (the client's were a gateway key), ``default`` ``api_key`` when
    there is one and the client's otherwise.
    """
    bearer = client_headers.get("authorization")
    client_key = client_headers.get("x-api-key")
    if mode == "forward" or (api_key is None and mode == "default"):
        # One credential, the one Anthropic itself would use: x-api-key wins over a bearer.
        if client_key:
            return [(b"x-api-key", client_key)]
        return [(b"authorization", bearer)] if bearer else []
    if api_key is None:
        return []
    if bearer and not client_key:
        return [(b"authorization", f"Bearer {api_key}")]
    return [(b"x-api-key", api_key)]


class _Target(NamedTuple):
    """An upstream URL, with what sending to it needs."""

    url: httpx.URL
    host: bytes  # the Host header's value
    raw_path: bytes  # path and query, as the request line has them


class _ResponseHead(NamedTuple):
    headers: list[tuple[str, str]]
    event_stream: bool
    encoded: bool
    # A content-encoding httpx cannot decode (br or zstd without their packages), else "".
    undecodable: str


def _read_head(raw_headers: Iterable[tuple[bytes, bytes]], client_key: bool) -> _ResponseHead:
    """The headers to relay, whether the body is an event stream, and whether it is encoded;
    ``client_key``: the request went up with the client's own key."""
    relayed: list[tuple[str, str]] = []
    event_stream = encoded = False
    undecodable = ""
    connection_options: set[str] = set()
    for raw_name, raw_value in raw_headers:
        name = raw_name.lower()
        if name in _DROPPED_RESPONSE_HEADERS:
            if name == b"content-encoding":
                encoded = True
                undecodable = undecodable or _undecodable(raw_value.decode("latin-1"))
            elif name == b"connection":
                connection_options.update(_listed_headers(raw_value))
            continue
        if name == _ORGANIZATION_HEADER and not client_key:
            continue
        value = raw_value.decode("latin-1")
        if name == b"content-type" and is_event_stream(value):
            event_stream = True
        relayed.append((name.decode("latin-1"), value))
    if connection_options - _CONNECTION_TOKENS:
        # Headers the upstream's Connection header names are for that hop alone: a proxy
        # must drop them (RFC 9110, section 7.6.1).
        relayed = [(name, value) for name, value in relayed if name not in connection_options]
    return _ResponseHead(relayed, event_stream, encoded, undecodable)


def is_event_stream(content_type: str) -> bool:
    """Whether a Content-Type names an SSE stream (media types ignore case)."""
    return content_type.startswith("text/event-stream") or (
        content_type[:17].lower() == "text/event-stream"
    )


# Connection options that name no header.
_CONNECTION_TOKENS = frozenset({"keep-alive", "close"})


def _listed_headers(connection: bytes) -> list[str]:
    return [token.strip().lower() for token in connection.decode("latin-1").split(",")]


def _undecodable(content_encoding: str) -> str:
    """The first coding in ``content_encoding`` httpx would pass through undecoded, or ""."""
    for coding in content_encoding.split(","):
        coding = coding.strip().lower()
        if coding and coding not in _DECODABLE:
            return coding
    return ""


def _default_transport(settings: UpstreamConfig) -> httpx.AsyncBaseTransport:
    if settings.http2:
        limits = httpx.Limits(max_connections=settings.max_connections)
        return _PerLoopTransport(
            lambda: _H2ErrorsAsHttpx(httpx.AsyncHTTPTransport(http2=True, limits=limits))
        )
    return FastHTTPTransport(max_connections=settings.max_connections)


def _check_http2_installed() -> None:
    """httpx imports ``h2`` only once TLS has chosen HTTP/2, so without it every request
    would fail: refused when the provider is built instead."""
    if importlib.util.find_spec("h2") is None:
        raise ImportError("upstream.http2 needs the h2 package: pip install 'messages-mw[http2]'")


class _H2ErrorsAsHttpx(httpx.AsyncBaseTransport):
    """httpx's HTTP/2 transport, with the ``h2`` library's protocol errors (an upstream
    breaking HTTP/2 mid-body, which httpx lets through unwrapped) raised as
    :class:`httpx.RemoteProtocolError`, so that they become a 502 or an SSE error event
    like any broken upstream, not an internal error."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import h2.exceptions

        try:
            response = await self._transport.handle_async_request(request)
        except h2.exceptions.ProtocolError as exc:
            raise httpx.RemoteProtocolError(f"HTTP/2: {exc}", request=request) from exc
        response.stream = _H2ErrorsAsHttpxStream(response.stream, request)
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


class _H2ErrorsAsHttpxStream(httpx.AsyncByteStream):
    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, request: httpx.Request
    ):
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        import h2.exceptions

        try:
            async for chunk in self._stream:
                yield chunk
        except h2.exceptions.ProtocolError as exc:
            raise httpx.RemoteProtocolError(f"HTTP/2: {exc}", request=self._request) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Answer:
    """An upstream answer's status and raw headers, with its body still to read: from
    :meth:`FastHTTPTransport.send_raw`, or from any transport as an ``httpx.Response``."""

    __slots__ = ("_response", "_stream", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        stream: httpx.AsyncByteStream | None,
        response: httpx.Response | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self._stream = stream
        self._response = response

    @classmethod
    def of(cls, response: httpx.Response) -> _Answer:
        stream = response.stream
        raw = stream if isinstance(stream, httpx.AsyncByteStream) else None
        return cls(response.status_code, response.headers.raw, raw, response)

    def raw_stream(self, head: _ResponseHead) -> httpx.AsyncByteStream | None:
        """The body stream to read as it is, or None if it needs httpx's decoding: the
        upstream compressed anyway despite ``accept-encoding: identity``, or the transport
        pre-read it. Reading the stream itself skips the chunker and decoder layers of
        ``aiter_raw``."""
        response = self._response
        if head.encoded or (response is not None and response.is_stream_consumed):
            return None
        return self._stream

    def decoded(self) -> AsyncIterator[bytes]:
        """The body as httpx decodes it."""
        if self._response is None:
            self._response = httpx.Response(self.status, headers=self.headers, stream=self._stream)
        return self._response.aiter_bytes()

    def body(self, head: _ResponseHead) -> AsyncIterator[bytes] | httpx.AsyncByteStream:
        """The body to relay: as it came where it can be, decoded where it must be."""
        raw = self.raw_stream(head)
        return self.decoded() if raw is None else raw

    async def aclose(self) -> None:
        if self._response is not None:
            await self._response.aclose()
        elif self._stream is not None:
            await self._stream.aclose()


class _PerLoopTransport(httpx.AsyncBaseTransport):
    """A transport built anew for each event loop that uses it. httpx's own (the HTTP/2 one)
    keeps connections bound to the loop that opened them, and a host may call the gateway
    from a new loop (a test client per request, a pytest loop per test): reused there, the
    old loop's connections fail every request with "Event loop is closed"."""

    def __init__(self, build: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._build = build
        self._transport: httpx.AsyncBaseTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        if self._transport is None or self._loop is not loop:
            # The old loop's connections cannot be closed from this one: they go with it.
            self._transport, self._loop = self._build(), loop
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None and self._loop is asyncio.get_running_loop():
            await transport.aclose()


class AnthropicProvider:
    """Forwards to ``settings.base_url`` over one pooled keep-alive transport.

    Requests go straight to the transport, never through ``AsyncClient``: the gateway needs
    none of its cookies, redirects or auth flows, and skipping them halves the client-side cost
    per request. The default transport is sent raw header lists, without httpx's ``Request``
    and ``Response`` objects, whose header handling was an eighth of the core's CPU per
    request; any other transport (a subclass of it too) gets them. The transport opens on first
    use, so constructing a provider does no I/O; :meth:`aclose` closes it, and a later request
    opens a fresh default one.
    ``transport`` replaces the network, as in tests (``httpx.MockTransport``) or for a custom
    connection strategy; it is closed by :meth:`aclose` too. ``name``, the provider's name in
    the gateway's configuration, is how errors a client sees refer to this upstream: its URL
    (an internal host, perhaps a tenant id in the path) is the operator's to know.
    """

    # What kind of upstream this is, for telemetry (the GenAI conventions' provider name).
    provider_type = "anthropic"

    def __init__(
        self,
        settings: UpstreamConfig | None = None,
        *,
        name: str = "anthropic",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings or UpstreamConfig()
        if self._settings.http2 and transport is None:
            _check_http2_installed()
        # A query in the base URL (a proxy's key, say) goes after the request's path, ahead
        # of the client's own query.
        self._base_url, self._base_query = split_base_url(self._settings.base_url)
        self._origin = f"'{name}'"
        if self._base_url.endswith("/v1"):
            # Clients add /v1/messages themselves: this upstream would get /v1/v1/messages.
            logger.warning(
                "upstream %s: base_url ends in /v1, so requests go to .../v1/v1/messages; "
                "Anthropic-compatible base URLs are given without /v1",
                self._origin,
            )
        self._given_transport = transport
        self._transport: httpx.AsyncBaseTransport | None = transport
        timeout = httpx.Timeout(
            connect=self._settings.connect_timeout,
            read=self._settings.read_timeout,
            write=self._settings.write_timeout,
            pool=self._settings.pool_timeout,
        )
        self._timeouts = timeout.as_dict()
        self._extensions = {"timeout": self._timeouts}
        # Parsing a URL costs tens of microseconds; the gateway only ever calls a handful
        # (clients such as Claude Code add a fixed query like ?beta=true).
        self._urls: dict[tuple[str, str], _Target] = {}
        # Where every URL of this upstream connects, found on the first request.
        self._connect_to: Origin | None = None

    def _get_transport(self) -> httpx.AsyncBaseTransport:
        if self._transport is None:
            self._transport = _default_transport(self._settings)
        return self._transport

    def _url(self, path: str, query: str) -> _Target:
        """The upstream URL for ``path`` and ``query``, with what sending to it needs."""
        key = (path, query)
        found = self._urls.get(key)
        if found is None:
            # The path arrives percent-decoded: a model id holding "?" or "#" must stay part of
            # the path, not start a query upstream.
            quoted = _quoted_path(path)
            try:
                full_query = "&".join(part for part in (self._base_query, query) if part)
                url = httpx.URL(self._base_url + quoted + ("?" + full_query if full_query else ""))
            except httpx.InvalidURL as exc:
                # Past httpx's 65,536 characters, say, with this upstream's base URL in front.
                # The client's error, and final: were it about this target, the chain would
                # move on to the next one without this upstream ever checking the client's key,
                # which in passthrough mode hands a made-up key a keyed backup.
                raise InvalidRequestError(
                    f"The request's URL cannot be forwarded to this upstream: {exc}."
                ) from None
            found = _Target(url, url.netloc, url.raw_path)
            if len(self._urls) < _CACHED_URLS:
                self._urls[key] = found
        return found

    def _request_headers(self, request: ProviderRequest, host: bytes) -> list[tuple[bytes, bytes]]:
        """Every header to send, ``Host`` and ``Content-Length`` included, as httpx.Request
        (content=...) would send them."""
        api_key = request.api_key or self._settings.api_key
        headers = _upstream_headers(request.headers, api_key, request.client_credentials)
        headers.insert(0, (b"Host", host))
        if request.method == "POST":
            headers.append((b"Content-Length", b"%d" % len(request.body)))
        return headers

    async def _exchange(self, request: ProviderRequest) -> _Answer:
        """Send ``request`` and return the answer once its head has arrived."""
        target = self._url(request.path, request.query)
        headers = self._request_headers(request, target.host)
        body = request.body if request.method == "POST" else b""
        transport = self._get_transport()
        if type(transport) is FastHTTPTransport:  # a subclass may override the httpx entry
            connect_to = self._connect_to or origin_of(target.url)
            self._connect_to = connect_to
            head, stream = await transport.send_raw(
                request.method, connect_to, target.raw_path, headers, body, self._timeouts
            )
            return _Answer(head.status_code, head.headers, stream)
        # Handing httpx byte headers and a ready stream skips its header normalisation and
        # body encoding, which cost more than the rest of the request.
        upstream = httpx.Request(
            request.method,
            target.url,
            headers=headers,
            stream=httpx.ByteStream(body),
            extensions=self._extensions,
        )
        return _Answer.of(await transport.handle_async_request(upstream))

    def _sent_client_key(self, request: ProviderRequest) -> bool:
        """Whether the request went up with the client's own key (see _credentials)."""
        mode = request.client_credentials
        return mode == "forward" or (
            mode == "default" and (request.api_key or self._settings.api_key) is None
        )

    async def send(self, request: ProviderRequest) -> ProviderResponse:
        """Send one request; raises a :class:`GatewayError` if no response arrives.

        Cancellation while waiting closes the upstream connection.
        """
        try:
            answer = await self._exchange(request)
        except httpx.TransportError as exc:
            raise translate_transport_error(exc, self._origin) from exc
        status = answer.status
        if not 200 <= status < 300 and not 400 <= status <= 599:
            await answer.aclose()
            raise not_final_status(status, self._origin)
        head = _read_head(answer.headers, self._sent_client_key(request))
        if head.undecodable:
            await answer.aclose()
            undecodable = UpstreamUnavailableError(
                f"The upstream {self._origin} answered with content-encoding "
                f"'{head.undecodable}', which the gateway cannot decode (it asks for identity)."
            )
            undecodable.upstream_status = status
            raise undecodable
        success = status < 300
        if success and head.event_stream != request.stream:
            # A client asking for a stream would read none from a JSON body (the SDKs yield
            # no events and raise nothing), and one asking for a message would get raw SSE.
            mismatch = UpstreamUnavailableError(_stream_mismatch(self._origin, request.stream))
            mismatch.upstream_status = status
            try:  # a message is billed all the same: its usage goes on the attempt
                if request.path == _MESSAGES_PATH:  # count_tokens and models bill nothing
                    wait = min(self._settings.read_timeout, _DISCARDED_STREAM_SECONDS)
                    mismatch.usage = await _discarded_usage(answer, head, self._origin, wait)
            finally:  # cancelled while reading, too: the connection goes back to the pool
                await answer.aclose()
            raise mismatch
        if success and head.event_stream:
            raw = answer.raw_stream(head)
            return ProviderResponse(
                status,
                head.headers,
                chunks=relay_upstream_chunks(answer.body(head), self._origin),
                close=answer.aclose,
                ended=_body_complete_check(raw),
                ready=_chunk_ready_check(raw),
            )
        try:
            body = await read_bounded(answer.body(head), self._origin)
        except UPSTREAM_READ_ERRORS as exc:
            broken = translate_transport_error(exc, self._origin)
            broken.upstream_status = status  # it answered, then its body broke
            raise broken from exc
        finally:
            await answer.aclose()
        return ProviderResponse(status, head.headers, body=body)

    async def aclose(self) -> None:
        """Close pooled connections. Safe to call more than once."""
        transport, self._transport = self._transport, self._given_transport
        if transport is not None:
            await transport.aclose()


def _quoted_path(path: str) -> str:
    """``path`` percent-encoded for the upstream URL. A model id is one path segment: a "/"
    in it (a Bedrock ARN's), which the SDKs send as %2F and the server decoded, is sent as
    %2F again, not as a deeper path."""
    if path.startswith(_MODEL_PATH):
        return _MODEL_PATH + quote(path[len(_MODEL_PATH) :], safe=_PATH_SAFE.replace("/", ""))
    return quote(path, safe=_PATH_SAFE)


async def _discarded_usage(
    answer: _Answer, head: _ResponseHead, origin: str, wait: float
) -> TokenUsage | None:
    """The usage of an answer the gateway will not relay, as far as it can be read; the
    caller closes ``answer``.

    A whole message is read to its end. A stream is read only until its ``message_start``,
    which reports the input tokens, most of a bill: reading on would hold the client (and
    its fallback) until the upstream finished generating, while closing the connection now
    stops it generating more. The output relayed by then is estimated as for a client that
    leaves mid-stream (:meth:`StreamObserver.settled_usage`). Anthropic's streams open with
    it, so the read also ends at any other event the observer reads, after
    :data:`_DISCARDED_STREAM_BYTES`, or after ``wait`` seconds: a stream that has shown no
    ``message_start`` by then (pings only, silence) is not worth the fallback's time.
    """
    if not head.event_stream:
        try:
            body = await read_bounded(answer.body(head), origin)
        except (*UPSTREAM_READ_ERRORS, UpstreamUnavailableError):
            return None  # broken off or too large: the attempt fails for its mismatch anyway
        return message_usage(body)
    observer = StreamObserver()
    read = 0
    with contextlib.suppress(*UPSTREAM_READ_ERRORS, TimeoutError):
        async with asyncio.timeout(wait):
            async for chunk in answer.body(head):
                observer.feed(chunk)
                read += len(chunk)
                if observer.events_read or read > _DISCARDED_STREAM_BYTES:
                    break
    return observer.settled_usage() if observer.saw_message_start else None


def _stream_mismatch(origin: str, streaming: bool) -> str:
    if streaming:
        return f"The upstream {origin} answered a streaming request without a stream."
    return f"The upstream {origin} answered a request that asked for no stream with a stream."


def _chunk_ready_check(stream: httpx.AsyncByteStream | None) -> Callable[[], bool]:
    """How to tell the next read returns without waiting, where the transport knows
    (messages_mw's own transport does; httpx's reads may hold task-bound state, such as
    anyio's cancel scopes, and are read in a task of their own regardless)."""
    check: Callable[[], bool] | None = getattr(stream, "chunk_ready", None)
    return check if check is not None else never_ready


def _body_complete_check(stream: httpx.AsyncByteStream | None) -> Callable[[], bool]:
    """How to tell the stream has been read whole before it says so, where the transport knows
    (messages_mw's own transport does)."""
    check: Callable[[], bool] | None = getattr(stream, "body_complete", None)
    return check if check is not None else never_ended
