"""The provider seam: what the app hands an upstream, and what it gets back.

A provider is anything with ``send`` and ``aclose`` (see :class:`Provider`). The app never
knows which upstream it talks to; the fallback chain and format translators plug in here.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import msgspec

from ..errors import UpstreamUnavailableError
from ..redaction import repr_without_secrets

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "UpstreamReport",
    "never_ended",
    "never_ready",
    "no_close",
    "nothing_reported",
    "read_bounded",
    "split_base_url",
]

# The most a non-streamed upstream answer may hold. A reply of Anthropic's is at most a few
# MB (128K output tokens of text, with citations); an upstream whose body never ends must not
# take the host's memory with it.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


async def read_bounded(
    chunks: AsyncIterable[bytes], origin: str, limit: int = MAX_RESPONSE_BYTES
) -> bytes:
    """A whole response body, or :class:`UpstreamUnavailableError` (502) once it passes
    ``limit`` bytes; the caller closes the response either way."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise UpstreamUnavailableError(
                f"The upstream {origin} sent a response body over {limit} bytes; "
                "the gateway reads no more."
            )
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ProviderRequest(msgspec.Struct, frozen=True):
    """One request for an upstream.

    ``path`` is relative to the API root (``/v1/messages``, ``/v1/messages/count_tokens``,
    ``/v1/models``, ``/v1/models/{id}``); ``query`` is the client's raw query string;
    ``body`` is the exact bytes to send (the client's own bytes when no hook changed them);
    ``headers`` are the client's request headers with lower-case names. ``api_key``
    replaces the provider's configured key (a per-key "virtual key"). ``client_credentials``:
    ``default`` sends the configured key, or the client's own when none is configured;
    ``forward`` always sends the client's own; ``strip`` never does (it was a gateway key).
    """

    method: str
    path: str
    body: bytes
    headers: Mapping[str, str]
    request_id: str
    query: str = ""
    stream: bool = False
    api_key: str | None = None
    client_credentials: Literal["default", "forward", "strip"] = "default"

    def __repr__(self) -> str:
        # A provider that logs its request must not log a key.
        return repr_without_secrets(self)


async def no_close() -> None:
    """The ``close`` of a response that holds no resources."""


def never_ended() -> bool:
    """The ``ended`` of a stream that can only tell it has ended by ending."""
    return False


def never_ready() -> bool:
    """The ``ready`` of a stream that cannot tell whether its next read will wait."""
    return False


class UpstreamReport(NamedTuple):
    """What a provider translating its upstream's answer knows that the answer's body no
    longer says: the model the upstream named (a dated snapshot, say; ``None``: as in the
    body), whether the usage in the body is the provider's own estimate (in part at least),
    and whether the upstream reported any usage at all (else every count is the provider's
    guess, which a failed attempt must not bill)."""

    model: str | None = None
    usage_estimated: bool = False
    usage_seen: bool = True


_NOTHING_REPORTED = UpstreamReport()


def nothing_reported() -> UpstreamReport:
    """The ``reported`` of an answer relayed as the upstream sent it."""
    return _NOTHING_REPORTED


@dataclass(slots=True)
class ProviderResponse:
    """An upstream answer, ready to relay.

    Exactly one of ``body`` (complete) and ``chunks`` (streamed as they arrive) is set.
    ``headers`` are already filtered to what may reach the client (no hop-by-hop headers, no
    ``content-length``). ``close`` must be awaited once the app is done, even after an error or
    a client disconnect: it releases the upstream connection promptly. ``ended``, asked right
    after ``chunks`` yielded, says whether the upstream body is already complete, so the relay
    can end the client's response in the same write as the last chunk; a provider that cannot
    tell keeps the default, and the response then ends in a write of its own. ``ready`` says
    whether the next read of ``chunks`` returns without waiting (its chunk, or the end, has
    arrived): the gateway then reads it in the request's own task rather than one of its own,
    which is only safe if true; a provider that cannot tell keeps the default. ``reported``,
    asked once the body has been relayed, is what a translating provider knows beyond the
    body (see :class:`UpstreamReport`).
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None
    close: Callable[[], Awaitable[None]] = field(default=no_close)
    ended: Callable[[], bool] = field(default=never_ended)
    ready: Callable[[], bool] = field(default=never_ready)
    reported: Callable[[], UpstreamReport] = field(default=nothing_reported)

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name == "content-type":
                return value
        return ""


@runtime_checkable
class Provider(Protocol):
    """An upstream the gateway can forward to.

    ``send`` is called once per attempt. It may raise a
    :class:`~messages_mw.errors.GatewayError` (unreachable, timeout, overloaded) before any
    response exists; once it has returned, failures while iterating ``chunks`` are raised from
    the iterator as ``GatewayError`` too, and the app turns them into an SSE ``error`` event.
    If the request task is cancelled (client gone), the provider must not leak the connection.
    ``aclose`` releases pooled connections; it is called once, at gateway shutdown.
    A ``provider_type`` attribute, if present, names the kind of upstream for telemetry
    (``"anthropic"``, ``"openai"``); usage events otherwise carry the provider's name.
    """

    async def send(self, request: ProviderRequest) -> ProviderResponse: ...

    async def aclose(self) -> None: ...


def split_base_url(base_url: str) -> tuple[str, str]:
    """``base_url`` without its query and trailing slash, and the query: request paths go
    between the two."""
    base, _, query = base_url.partition("?")
    return base.rstrip("/"), query
