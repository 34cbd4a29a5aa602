"""The Anthropic provider: forwards requests to an Anthropic-compatible upstream over httpx.

Bodies go upstream exactly as the app hands them over; responses come back as raw bytes,
streamed chunk by chunk for SSE. Only an allow-list of client headers is forwarded, so
hop-by-hop headers, cookies and the client's credentials never leak upstream by accident.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx

from ..config import UpstreamConfig
from ..errors import (
    GatewayError,
    OverloadedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from .base import ProviderRequest, ProviderResponse

__all__ = ["AnthropicProvider"]

_DEFAULT_VERSION = "2023-06-01"
# Client headers forwarded as they are; everything else is dropped. anthropic-* covers
# version, beta, workspace and future routing headers.
_FORWARDED_PREFIXES = ("anthropic-", "x-stainless-")
_FORWARDED_NAMES = frozenset({"user-agent", "x-app", "x-claude-code-session-id", "accept"})
# Upstream response headers never relayed: hop-by-hop ones, framing the server redoes,
# and infrastructure headers that would describe the upstream's edge, not ours.
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "content-length",
        "content-encoding",
        "date",
        "server",
        "set-cookie",
        "alt-svc",
        "via",
    }
)


def translate_transport_error(exc: httpx.TransportError, base_url: str) -> GatewayError:
    """Map an httpx failure to the error a client's SDK retries correctly."""
    if isinstance(exc, httpx.PoolTimeout):
        return OverloadedError("The gateway has no free upstream connection; retry shortly.")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(f"The upstream {base_url} did not answer in time.")
    return UpstreamUnavailableError(f"The upstream {base_url} could not be reached.")


def _upstream_headers(
    client_headers: Mapping[str, str], api_key: str | None, mode: str = "default"
) -> list[tuple[str, str]]:
    headers = [("content-type", "application/json"), ("accept-encoding", "identity")]
    for name, value in client_headers.items():
        if name in _FORWARDED_NAMES or name.startswith(_FORWARDED_PREFIXES):
            headers.append((name, value))
    if "anthropic-version" not in client_headers:
        headers.append(("anthropic-version", _DEFAULT_VERSION))
    headers.extend(_credentials(client_headers, api_key, mode))
    return headers


def _credentials(
    client_headers: Mapping[str, str], api_key: str | None, mode: str = "default"
) -> list[tuple[str, str]]:
    """The key to send upstream, in the header style the client used.

    ``mode`` (see :class:`ProviderRequest`): ``forward`` sends the client's own credentials,
    ``strip`` only ``api_key`` (the client's were a gateway key), ``default`` ``api_key`` when
    there is one and the client's otherwise.
    """
    bearer = client_headers.get("authorization")
    client_key = client_headers.get("x-api-key")
    if mode == "forward" or (api_key is None and mode == "default"):
        passed = [("x-api-key", client_key)] if client_key else []
        return passed + ([("authorization", bearer)] if bearer else [])
    if api_key is None:
        return []
    if bearer and not client_key:
        return [("authorization", f"Bearer {api_key}")]
    return [("x-api-key", api_key)]


def _relayed_headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in response.headers.multi_items()
        if name not in _DROPPED_RESPONSE_HEADERS
    ]


def _is_event_stream(headers: list[tuple[str, str]]) -> bool:
    return any(
        name == "content-type" and value.startswith("text/event-stream") for name, value in headers
    )


def _default_transport(settings: UpstreamConfig) -> httpx.AsyncBaseTransport:
    if settings.http2:
        limits = httpx.Limits(max_connections=settings.max_connections)
        return httpx.AsyncHTTPTransport(http2=True, limits=limits)
    from ..transport import FastHTTPTransport

    return FastHTTPTransport(max_connections=settings.max_connections)


class AnthropicProvider:
    """Forwards to ``settings.base_url`` over one pooled keep-alive transport.

    Requests are httpx ``Request`` objects handed straight to the transport: the gateway needs
    none of ``AsyncClient``'s cookies, redirects or auth flows, and skipping them halves the
    client-side cost per request. The transport opens on first use, so constructing a provider
    does no I/O; :meth:`aclose` closes it, and a later request opens a fresh default one.
    ``transport`` replaces the network, as in tests (``httpx.MockTransport``) or for a custom
    connection strategy; it is closed by :meth:`aclose` too.
    """

    def __init__(
        self,
        settings: UpstreamConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings or UpstreamConfig()
        self._base_url = self._settings.base_url.rstrip("/")
        self._given_transport = transport
        self._transport: httpx.AsyncBaseTransport | None = transport
        timeout = httpx.Timeout(
            connect=self._settings.connect_timeout,
            read=self._settings.read_timeout,
            write=self._settings.write_timeout,
            pool=self._settings.pool_timeout,
        )
        self._extensions = {"timeout": timeout.as_dict()}
        # Parsing a URL costs tens of microseconds; the gateway only ever calls a handful.
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    def _get_transport(self) -> httpx.AsyncBaseTransport:
        if self._transport is None:
            self._transport = _default_transport(self._settings)
        return self._transport

    def _url(self, path: str, query: str) -> httpx.URL:
        key = (path, query)
        url = self._urls.get(key)
        if url is None:
            url = httpx.URL(self._base_url + path + ("?" + query if query else ""))
            if not query and len(self._urls) < 64:
                self._urls[key] = url
        return url

    async def send(self, request: ProviderRequest) -> ProviderResponse:
        """Send one request; raises a :class:`GatewayError` if no response arrives.

        Cancellation while waiting closes the upstream connection.
        """
        upstream = httpx.Request(
            request.method,
            self._url(request.path, request.query),
            content=request.body if request.method == "POST" else None,
            headers=_upstream_headers(
                request.headers,
                request.api_key or self._settings.api_key,
                request.client_credentials,
            ),
            extensions=self._extensions,
        )
        try:
            response = await self._get_transport().handle_async_request(upstream)
        except httpx.TransportError as exc:
            raise translate_transport_error(exc, self._base_url) from exc
        headers = _relayed_headers(response)
        if response.status_code == 200 and _is_event_stream(headers):
            return ProviderResponse(
                200, headers, chunks=self._relay_chunks(response), close=response.aclose
            )
        try:
            body = await response.aread()
        except httpx.TransportError as exc:
            raise translate_transport_error(exc, self._base_url) from exc
        finally:
            await response.aclose()
        return ProviderResponse(response.status_code, headers, body=body)

    async def _relay_chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        # Raw bytes are cheapest; decoding is needed only if the upstream compressed anyway
        # despite ``accept-encoding: identity``, or if a test transport pre-read the body.
        raw = "content-encoding" not in response.headers and not response.is_stream_consumed
        try:
            async for chunk in response.aiter_raw() if raw else response.aiter_bytes():
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(
                f"The upstream {self._base_url} sent nothing for longer than the read timeout."
            ) from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailableError(
                f"The connection to the upstream {self._base_url} broke mid-stream."
            ) from exc

    async def aclose(self) -> None:
        """Close pooled connections. Safe to call more than once."""
        transport, self._transport = self._transport, self._given_transport
        if transport is not None:
            await transport.aclose()
