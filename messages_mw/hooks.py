"""The hook interfaces, and the fixed order in which the gateway calls them.

Every hook is a plain callable, sync or async, or an object with ``__call__``; each is passed to
:class:`~messages_mw.app.Gateway` and checked there, so a bad hook fails at construction, not
at the first request. Per request the gateway calls, in this order:

1. ``auth(request)`` -> :class:`~messages_mw.context.Principal` or ``None`` (anonymous).
   Raise :class:`~messages_mw.errors.AuthenticationError` (401) or
   :class:`~messages_mw.errors.PermissionDeniedError` (403) to reject. A hook with the
   attribute ``reads_model = False`` (the built-ins have it) runs before the body is read,
   so a caller without a key gets its 401 before the body is read or validated, and
   ``request.model`` is ``None``; any other runs once the body is validated, with the model.
2. ``tagger(request, context)`` -> extra tags (the built-in tagging reads headers, the key's
   policy and ``metadata.tags`` before this hook runs).
3. the model allow-list of the principal (403 when the model is not allowed), then the body's
   gateway fields (``fallbacks``, ``extra_headers``, ``router_candidates``) are checked and
   consumed, so that a request refused for them is not counted against a limit.
4. ``limiter.admit(context)`` (429 over a limit; first, 403 for a model without a price when
   a spend budget applies and ``limits.unpriced_models`` is ``"reject"``).
5. ``compressor(body, context)`` -> new body bytes, or ``None`` to leave the body untouched
   (default: :class:`~messages_mw.compression.builtin.BundleCompressor`, which compresses tool
   output when a header, the key's policy or the configuration picks a bundle).
6. ``router(context, chain)`` -> the targets to try, in order (default: ``chain`` unchanged).
   Under a spend budget, the models it picks must have prices (403 otherwise, the request
   already counted against the limits).
7. the upstream attempts, with retries, fallback and the circuit breaker.
8. ``limiter.record(context)`` and the usage sinks, once, whatever happened.

A :class:`~messages_mw.errors.GatewayError` raised by a hook becomes that error's response; any
other exception becomes a 500 ``api_error`` carrying the request id, logged with its traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from .context import Principal, RequestContext
from .fallback import Target

__all__ = [
    "AuthHook",
    "CompressionHook",
    "IncomingRequest",
    "RouteHook",
    "TagHook",
    "call_hook",
    "check_hook",
]


class IncomingRequest(msgspec.Struct, frozen=True):
    """What hooks may read of the client's request; ``headers`` have lower-case names."""

    # A frozen struct, not a frozen dataclass: built for every request, in a twentieth of the
    # time (a frozen dataclass sets each field through object.__setattr__).

    method: str
    path: str
    headers: Mapping[str, str]
    model: str | None


class AuthHook(Protocol):
    def __call__(
        self, request: IncomingRequest
    ) -> Principal | Awaitable[Principal | None] | None: ...


class TagHook(Protocol):
    def __call__(
        self, request: IncomingRequest, context: RequestContext
    ) -> Sequence[str] | Awaitable[Sequence[str] | None] | None: ...


class CompressionHook(Protocol):
    def __call__(
        self, body: bytes, context: RequestContext
    ) -> bytes | Awaitable[bytes | None] | None: ...


class RouteHook(Protocol):
    def __call__(
        self, context: RequestContext, chain: Sequence[Target]
    ) -> Sequence[Target] | Awaitable[Sequence[Target]]: ...


def check_hook(name: str, hook: object) -> None:
    """Reject a hook that cannot be called, at construction time."""
    if hook is not None and not callable(hook):
        raise TypeError(f"{name} must be callable (a function, sync or async), got {hook!r}")


async def call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async hook and return its result (awaited if it is awaitable)."""
    result = hook(*args)
    if inspect.isawaitable(result):
        return await result
    return result
