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
   consumed, and the model's chain of targets is resolved, so that a request refused for
   them, or for a model that routes nowhere, is not counted against a limit.
4. ``limiter.admit(context)`` (429 over a limit; first, 403 for a model without a price when
   a spend budget applies and ``limits.unpriced_models`` is ``"reject"``).
5. ``compressor(body, context)`` -> new body bytes, or ``None`` to leave the body untouched
   (default: :class:`~messages_mw.compression.builtin.BundleCompressor`, which compresses tool
   output when a header, the key's policy or the configuration picks a bundle).
6. ``router(context, chain)`` -> the targets to try, in order (default: ``chain`` unchanged).
   Under a spend budget, the models it picks must have prices (403 otherwise). A request
   refused at step 5 or 6 (no route, a hook raising) has already counted against the
   request limits.
7. the upstream attempts, with retries, fallback and the circuit breaker.
8. the usage sinks, then ``limiter.record(context)``, once, whatever happened.

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
from .redaction import repr_without_secrets

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

    def __repr__(self) -> str:
        # A hook that logs its request must not log the keys in its headers.
        return repr_without_secrets(self)


class AuthHook(Protocol):
    """Decides who is calling: returns a :class:`~messages_mw.context.Principal`, or ``None``
    for an anonymous caller (sync, or an awaitable of either).

    Called once per request to ``/v1/messages``, ``/v1/messages/count_tokens`` and
    ``/v1/models`` (not ``/api/hello``), before any other hook. With ``reads_model = False``
    it runs before the body is read and ``request.model`` is ``None``; otherwise it runs once
    the body is validated, with the model (on ``/v1/models`` always without one).

    Raise :class:`~messages_mw.errors.AuthenticationError` (401) or
    :class:`~messages_mw.errors.PermissionDeniedError` (403) to refuse: any
    :class:`~messages_mw.errors.GatewayError` becomes that error's response; any other
    exception a 500 ``api_error``, logged. It runs before the gateway watches for the client
    leaving, so a slow async hook is not cancelled when the client disconnects; it is
    cancelled only with the request's task (by the server or host).
    """

    def __call__(
        self, request: IncomingRequest
    ) -> Principal | Awaitable[Principal | None] | None: ...


class TagHook(Protocol):
    """Adds tags to a ``POST /v1/messages`` request: returns a sequence of tags, one ``str``
    (a single tag), or ``None`` (sync, or an awaitable of those).

    Called once per request, after the auth hook (``context.principal`` is set) and after the
    tags of the header, the key's policy and ``metadata.tags`` are read, but before they are
    merged: ``context.tags`` is still empty. What it returns is merged after those, duplicates
    dropped, and checked against the :class:`~messages_mw.tags.TagPolicy` like them: a bad tag,
    or too many tags in all, answers the client 400 ``invalid_request_error``. Not called for
    ``count_tokens`` or ``/v1/models``.

    A :class:`~messages_mw.errors.GatewayError` it raises becomes that error's response; any
    other exception a 500 ``api_error``, logged. It runs before the gateway watches for the
    client leaving, so it is not cancelled when the client disconnects; only with the
    request's task (by the server or host).
    """

    def __call__(
        self, request: IncomingRequest, context: RequestContext
    ) -> Sequence[str] | Awaitable[Sequence[str] | None] | None: ...


class CompressionHook(Protocol):
    """Rewrites a ``POST /v1/messages`` body before it goes upstream: returns the new body
    bytes, or ``None`` (or empty bytes) to forward the body unchanged (sync, or an awaitable
    of those). One passed to the gateway replaces the built-in compressor.

    Called once per request, after the limits admitted it (step 5), with the body to forward
    (the gateway's own fields already removed); the result is not validated again.
    Not called for ``count_tokens`` or ``/v1/models``.

    A :class:`~messages_mw.errors.GatewayError` it raises becomes that error's response; any
    other exception a 500 ``api_error``, logged; either way the request has already counted
    against the limits. It runs before the gateway watches for the client leaving, so it is
    not cancelled when the client disconnects; only with the request's task (by the server
    or host).
    """

    def __call__(
        self, body: bytes, context: RequestContext
    ) -> bytes | Awaitable[bytes | None] | None: ...


class RouteHook(Protocol):
    """Chooses the upstream targets of a ``POST /v1/messages`` request: given the chain the
    gateway worked out (the model, the body's ``fallbacks``, the configured chains), returns
    the targets to try, in order (sync, or an awaitable of them).

    Called once per request, after the compressor (step 6). Each target must name a
    configured provider (another fails the request with a 500). An empty result answers
    400 ``invalid_request_error``; under a spend budget that refuses unpriced models, a
    target without a price answers 403. Not called for ``count_tokens`` or ``/v1/models``.

    A :class:`~messages_mw.errors.GatewayError` it raises becomes that error's response; any
    other exception a 500 ``api_error``, logged; either way the request has already counted
    against the limits. It runs before the gateway watches for the client leaving, so it is
    not cancelled when the client disconnects; only with the request's task (by the server
    or host).
    """

    def __call__(
        self, context: RequestContext, chain: Sequence[Target]
    ) -> Sequence[Target] | Awaitable[Sequence[Target]]: ...


def check_hook(name: str, hook: object, arguments: str) -> None:
    """Reject a hook that cannot be called with ``arguments`` (their names, comma-separated:
    what the gateway passes, positionally), at construction time: one that takes too few or
    too many would fail every request. A callable whose signature Python cannot read (a
    builtin) is let through."""
    if hook is None:
        return
    if not callable(hook):
        raise TypeError(f"{name} must be callable (a function, sync or async), got {hook!r}")
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*arguments.split(", "))
    except TypeError:
        raise TypeError(
            f"{name} is called with ({arguments}), which its signature {signature} does not take"
        ) from None


async def call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async hook and return its result (awaited if it is awaitable)."""
    result = hook(*args)
    if inspect.isawaitable(result):
        return await result
    return result
