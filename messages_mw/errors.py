"""The gateway's error hierarchy and Anthropic's error envelope.

Every error the gateway itself produces is one of these classes. Each carries the HTTP status and
the Anthropic ``error.type`` that the official SDKs map to their exception classes and retry
decisions, so raising the right class is all a module needs to do to answer a client correctly.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

import msgspec

if TYPE_CHECKING:
    from .streaming import TokenUsage

__all__ = [
    "ERROR_TYPES",
    "AuthenticationError",
    "BillingError",
    "GatewayError",
    "InternalGatewayError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NoFreeConnectionError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "UnsupportedByProviderError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "base62_id",
    "encode_error_body",
    "error_class",
    "error_type_for_status",
    "new_request_id",
    "random_id",
]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# Maps each random byte to a base62 character in one C-level pass (same distribution as
# indexing _BASE62 with byte % 62).
_BASE62_TABLE = bytes(ord(_BASE62[byte % 62]) for byte in range(256))


# Ids name requests and messages; they guard nothing. So they come from a Mersenne Twister,
# not from ``secrets``, which makes a system call for each: one per request, on every
# request's path. A generator of their own (seeded from os.urandom), not the random module's:
# a host or library that seeds that one (test and evaluation harnesses do) would make ids
# repeat across runs, and each id would shift the host's seeded sequence. The random module
# reseeds only its own generator in a forked child; this one is reseeded here.
_id_generator = random.Random()
os.register_at_fork(after_in_child=_id_generator.seed)


def base62_id(prefix: str, raw: bytes) -> str:
    """``prefix`` and one base62 character per byte of ``raw`` (its first 24)."""
    return prefix + raw[:24].translate(_BASE62_TABLE).decode("ascii")


def random_id(prefix: str) -> str:
    """``prefix`` and 24 random base62 characters: the shape of Anthropic's ids."""
    return base62_id(prefix, _id_generator.getrandbits(192).to_bytes(24, "little"))


def new_request_id() -> str:
    """Return a fresh id shaped like Anthropic's (``req_`` and 24 base62 characters)."""
    return random_id("req_")


class _Details(msgspec.Struct):
    error_code: str


class _ErrorDetail(msgspec.Struct, omit_defaults=True):
    type: str
    message: str
    # SDK 2.x picks a more specific exception class by (status, details.error_code).
    details: _Details | None = None


class _ErrorEnvelope(msgspec.Struct, tag="error", tag_field="type"):
    error: _ErrorDetail
    request_id: str | None


_envelope_encoder = msgspec.json.Encoder()


def encode_error_body(
    error_type: str, message: str, request_id: str | None, error_code: str | None = None
) -> bytes:
    """Encode ``{"type":"error","error":{...},"request_id":...}`` as Anthropic sends it, with
    ``error.details.error_code`` when ``error_code`` is given."""
    details = None if error_code is None else _Details(error_code)
    envelope = _ErrorEnvelope(_ErrorDetail(error_type, message, details), request_id)
    return _envelope_encoder.encode(envelope)


class GatewayError(Exception):
    """An error answered to the client in Anthropic's envelope.

    Subclasses fix ``status`` and ``error_type``; ``headers`` adds response headers such as
    ``retry-after``, and ``error_code`` Anthropic's ``error.details.error_code``. Raise one
    from anywhere on the request path (hooks included) and the app turns it into the
    response, or into an SSE ``error`` event once a stream has started. An upstream error read
    from a stream, or translated from an OpenAI-compatible answer, is raised as the class of
    its ``error.type`` (see :func:`error_class`).
    """

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    # Whether, raised for an upstream attempt, it says that target is unwell (so counts for
    # its circuit breaker) rather than the gateway itself being short of something.
    blames_target: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        error_code: str | None = None,
    ) -> None:
        """``message`` becomes ``error.message``; ``headers`` are added to the error response
        (names lower-case, e.g. ``retry-after``); ``error_code`` becomes
        ``error.details.error_code``."""
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = (
            {_header_name(name): _header_value(value) for name, value in headers.items()}
            if headers
            else {}
        )
        self.error_code = error_code
        # Set when the error is the upstream's own (read from its stream): the answer then
        # names the upstream's request id, as a relayed response does.
        self.upstream_request_id: str | None = None
        # Set by a fallback chain raising a target's failure: that target's provider/model.
        self.target_name: str | None = None
        # What the upstream reported it used before failing (an OpenAI answer cut short
        # with its usage): kept on the attempt's record, as a failed stream's is.
        self.usage: TokenUsage | None = None
        # The status an upstream answered with when the gateway refuses the answer itself (a
        # stream for a plain request, say): the attempt's record says the upstream answered.
        self.upstream_status: int | None = None
        # The upstream's own ``error`` object (read from an error event), answered as it came:
        # its details (an error_code the SDK picks an exception class by) and any field the
        # gateway does not know survive.
        self.upstream_error: bytes | None = None

    def body(self, request_id: str | None) -> bytes:
        """This error's JSON envelope, naming ``request_id`` (``null`` when ``None``)."""
        if self.upstream_error is not None:
            named = _envelope_encoder.encode(request_id)
            return b'{"type":"error","error":%b,"request_id":%b}' % (self.upstream_error, named)
        return encode_error_body(self.error_type, self.message, request_id, self.error_code)


def _header_name(name: object) -> str:
    return str(name).lower()


def _header_value(value: object) -> str:
    """A hook's header value as text (``retry-after: 5`` given as a number); a control
    character in it, which would split the answer's head, percent-encoded instead."""
    text = str(value)
    return text if text.isprintable() else quote(text, safe="")


class InvalidRequestError(GatewayError):
    """400 ``invalid_request_error``: the request is malformed or asks for something the
    gateway refuses (a body that fails validation, a bad tag or session id, a bad gateway
    field, an unknown compression bundle, no route for the model). Hooks may raise it."""

    status = 400
    error_type = "invalid_request_error"


class UnsupportedByProviderError(InvalidRequestError):
    """400 ``invalid_request_error`` raised by a provider, before sending anything, for a
    request it cannot express (an image or a server tool for an OpenAI-compatible upstream).
    It is about the target, not the request: a fallback chain moves on to its next target,
    and the client gets this error only when no target answered otherwise."""


class AuthenticationError(GatewayError):
    """401 ``authentication_error``: no API key, or one the built-in auth does not know.
    Auth hooks raise it to refuse a caller."""

    status = 401
    error_type = "authentication_error"


class BillingError(GatewayError):
    """Payment required: a quota or credit is exhausted, so retrying cannot help (402)."""

    status = 402
    error_type = "billing_error"


class PermissionDeniedError(GatewayError):
    """403 ``permission_error``: the key may not use the model (or one the body names: in
    ``fallbacks``, ``router_candidates`` or a tool's ``model``), or a spend budget applies to
    a model without a price. Hooks may raise it."""

    status = 403
    error_type = "permission_error"


class NotFoundError(GatewayError):
    """404 ``not_found_error``: a path the gateway does not serve, or a model the built-in
    mock or OpenAI-compatible providers do not list. Hooks may raise it."""

    status = 404
    error_type = "not_found_error"


class MethodNotAllowedError(GatewayError):
    status = 405
    error_type = "invalid_request_error"


class RequestTooLargeError(GatewayError):
    """413 ``request_too_large``: the request body, as sent or once decompressed, exceeds
    ``max_body_bytes``. Hooks may raise it."""

    status = 413
    error_type = "request_too_large"


class RateLimitError(GatewayError):
    """429 ``rate_limit_error``: a rate limit or spend budget is reached (with
    ``retry-after``), or the limit store is down under ``on_store_error = "closed"``. Hooks
    may raise it."""

    status = 429
    error_type = "rate_limit_error"


class InternalGatewayError(GatewayError):
    """An unexpected failure inside the gateway; the SDKs retry 500."""

    status = 500
    error_type = "api_error"


class UpstreamUnavailableError(GatewayError):
    """The upstream could not be reached or broke the connection (502, retried by the SDKs)."""

    status = 502
    error_type = "api_error"


class UpstreamTimeoutError(GatewayError):
    """The upstream did not answer in time (504 ``timeout_error``, retried by the SDKs)."""

    status = 504
    error_type = "timeout_error"


class OverloadedError(GatewayError):
    """No upstream capacity right now, e.g. the connection pool is exhausted (529)."""

    status = 529
    error_type = "overloaded_error"


class NoFreeConnectionError(OverloadedError):
    """529 ``overloaded_error``: every pooled connection to the upstream stayed busy for its
    ``pool_timeout``. The gateway's own crowding, so it falls back like any 529 but never
    counts against the target's circuit breaker."""

    blames_target = False


# The error for each ``error.type`` Anthropic documents; ``api_error`` has two statuses (500,
# and the 502 the gateway answers for an upstream at fault), so callers choose it themselves.
_ERRORS_BY_TYPE: dict[str, type[GatewayError]] = {
    error.error_type: error
    for error in (
        InvalidRequestError,
        AuthenticationError,
        BillingError,
        PermissionDeniedError,
        NotFoundError,
        RequestTooLargeError,
        RateLimitError,
        UpstreamTimeoutError,
        OverloadedError,
    )
}


# Every error.type the gateway or Anthropic answers with (api_error included).
ERROR_TYPES = frozenset({*_ERRORS_BY_TYPE, "api_error"})
# The error types a usage event may carry besides Anthropic's: what telemetry labels by name
# (an upstream may make up any other, which would be one more series or span-metric each).
REPORTED_ERROR_TYPES = ERROR_TYPES | {"client_disconnected", "cancelled"}


# Anthropic's error.type for each status it documents one for (protocol.md 6.2).
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int) -> str:
    """The ``error.type`` Anthropic gives an error ``status`` (400 or more): its documented
    one, else ``api_error`` for a 5xx and ``invalid_request_error`` for a 4xx."""
    error_type = _TYPE_BY_STATUS.get(status)
    if error_type is None:
        return "api_error" if status >= 500 else "invalid_request_error"
    return error_type


def error_class(error_type: str, default: type[GatewayError]) -> type[GatewayError]:
    """The :class:`GatewayError` subclass for an Anthropic ``error.type``, else ``default``."""
    return _ERRORS_BY_TYPE.get(error_type, default)
