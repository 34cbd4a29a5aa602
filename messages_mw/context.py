"""The per-request record, and the usage event built from it when the request ends."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping

import msgspec

from .protocol import FORBIDDEN_IN_HEADER_VALUE
from .redaction import repr_without_secrets
from .streaming import TokenUsage

__all__ = [
    "Attempt",
    "CompressionReport",
    "Principal",
    "RequestContext",
    "RequestEndHook",
    "UsageEvent",
    "billed_beside_answer",
]


class Principal(msgspec.Struct, frozen=True):
    """Who is calling, as an auth hook established it.

    ``key_id`` is a stable, non-secret name for the credential (never the key itself);
    ``upstream_api_key`` replaces the client's key upstream (a "virtual key"); ``None`` keeps
    the provider's configured key. The client's own key goes upstream only with
    ``passthrough=True`` (and to a provider without a key of its own): a key the auth hook
    checked is the gateway's, not one to hand on.
    ``compression`` names the compression bundle for this key's requests (``"off"`` disables
    it; ``None`` leaves the choice to the request header, the user agent and the default).
    """

    key_id: str
    allowed_models: frozenset[str] | None = None
    tags: tuple[str, ...] = ()
    upstream_api_key: str | None = None
    passthrough: bool = False
    compression: str | None = None

    def __post_init__(self) -> None:
        # An auth hook builds these: a wrong field must fail in that hook (a 500 naming it),
        # not later as a 403 for the wrong reason or an upstream counted as unreachable.
        if type(self.key_id) is not str:
            raise TypeError(f"Principal.key_id must be a str, got {type(self.key_id).__name__}")
        allowed = self.allowed_models
        if allowed is not None and (
            not isinstance(allowed, frozenset | set) or not all(type(m) is str for m in allowed)
        ):
            # A str would be matched by substring: "claude-opus-4-1,x" would let "opus" in.
            raise TypeError("Principal.allowed_models must be a frozenset of model names, or None")
        if self.tags and not all(type(tag) is str for tag in self.tags):
            raise TypeError("Principal.tags must be a tuple of str")
        key = self.upstream_api_key
        if key is not None and (type(key) is not str or FORBIDDEN_IN_HEADER_VALUE.search(key)):
            # Not echoed: it is a key. (One read from a file with its newline, say.)
            raise ValueError(
                "Principal.upstream_api_key must be a str that an HTTP header may carry "
                "(no control character)"
            )

    def __repr__(self) -> str:
        # A hook that logs its context must not log the virtual key.
        return repr_without_secrets(self)


class CompressionReport(msgspec.Struct, frozen=True):
    """What the compressor did to one request: the bundle, the body's size before and after,
    the estimated input tokens saved, and the milliseconds it took."""

    bundle: str
    bytes_before: int
    bytes_after: int
    tokens_saved: int
    duration_ms: float

    @property
    def bytes_saved(self) -> int:
        """``bytes_before - bytes_after``: negative if the body grew."""
        return self.bytes_before - self.bytes_after


class Attempt(msgspec.Struct, omit_defaults=True):
    """One try at one target: what happened and how long it took (seconds).

    ``usage`` is what a stream that failed (or that the client left) reported before it
    ended: the upstream may bill it though another target served the answer. ``cost`` is
    that usage priced at the attempt's model, when it is not the answer's own (see
    :func:`billed_beside_answer`) and a pricing table is configured.
    """

    target: str
    status: int | None
    error_type: str | None
    duration: float
    usage: TokenUsage | None = None
    cost: float | None = None

    @property
    def model(self) -> str:
        """The model the attempt asked for (``target`` is ``provider/model``)."""
        return self.target.partition("/")[2]


class RequestContext(msgspec.Struct):
    """Filled in as a request moves through the gateway; handed to the usage sinks once.

    Times are ``time.perf_counter()`` readings; ``usage`` holds what the upstream reported,
    including for streams the client abandoned half-way. Hooks read and fill the policy
    fields (principal, tags, session, targets) in the documented hook order;
    ``request_headers`` (lower-case names) are the client's, set before the first hook runs.
    """

    # A struct, not a dataclass: one is built per request, and msgspec fills the defaults in
    # half the time.

    request_id: str
    method: str
    path: str
    started_at: float = msgspec.field(default_factory=time.perf_counter)
    model: str | None = None
    stream: bool = False
    status: int = 0
    response_started: bool = False
    # The last byte of the response has been handed to the server: a disconnect reported
    # after it (servers report one once a response is complete) is no client leaving early.
    response_sent: bool = False
    upstream_request_id: str | None = None
    usage: TokenUsage = msgspec.field(default_factory=TokenUsage)
    stop_reason: str | None = None
    # The message's id and model as the upstream's answer gave them (a dated snapshot, say).
    response_id: str | None = None
    response_model: str | None = None
    error_type: str | None = None
    client_disconnected: bool = False
    first_byte_at: float | None = None
    finished_at: float | None = None
    principal: Principal | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    session_id: str | None = None
    provider: str | None = None
    provider_type: str | None = None
    served_model: str | None = None
    fallback_used: bool = False
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    cost: float | None = None
    debug: bool = False
    response_headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    request_headers: Mapping[str, str] = msgspec.field(default_factory=dict)
    compression: CompressionReport | None = None

    def __repr__(self) -> str:
        # A hook that logs its context must not log the client's key from its headers.
        return repr_without_secrets(self)

    @property
    def latency(self) -> float | None:
        """Seconds from arrival to the last byte, once finished."""
        return None if self.finished_at is None else self.finished_at - self.started_at

    @property
    def time_to_first_byte(self) -> float | None:
        """Seconds from arrival to ``first_byte_at``: when a JSON answer or an error was about
        to be sent, or a stream's first upstream chunk arrived. ``None`` until then, and for
        a request that got no such answer (the client left first, ``/api/hello``)."""
        return None if self.first_byte_at is None else self.first_byte_at - self.started_at


def operation_of(path: str) -> str:
    """What a request to ``path`` did, for metrics and spans: ``chat`` (``/v1/messages``),
    ``count_tokens``, ``models``, or ``other`` (``/api/hello``, unknown routes)."""
    if path == "/v1/messages":
        return "chat"
    if path == "/v1/messages/count_tokens":
        return "count_tokens"
    return "models" if path.startswith("/v1/models") else "other"


class UsageEvent(msgspec.Struct, omit_defaults=True):
    """What one finished request cost and how it went: emitted exactly once per request.

    Never carries a credential: ``key_id`` is the key's configured name or hash prefix.
    ``provider`` is the serving upstream's configured name, ``provider_type`` its kind
    (``"anthropic"``, ``"openai"``, ``"messages_mw.mock"``, or a custom provider's own).
    ``response_id`` and ``response_model`` are the message's ``id`` and ``model`` as the
    upstream answered them (``served_model`` is the name the gateway asked for).
    ``traceparent`` is the W3C trace context the request ran in: the span active where the
    gateway ran it (a host app's server span) when a sink can read it (the OpenTelemetry
    sink), else the client's ``traceparent`` header, when well formed. Usage lines can be
    joined to those traces, and the OpenTelemetry sink's span becomes that span's child.
    ``tracestate`` is the vendor trace data that goes with it (the host span's, or the
    client's ``tracestate`` header), when well formed.
    ``output_tokens_estimated`` is true when the stream ended before the upstream reported
    its output (the client left, the upstream broke off) and ``output_tokens`` is the
    gateway's estimate from the content relayed.
    """

    request_id: str
    timestamp: float
    method: str
    path: str
    status: int
    key_id: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    session_id: str | None = None
    requested_model: str | None = None
    served_model: str | None = None
    provider: str | None = None
    provider_type: str | None = None
    fallback_used: bool = False
    stream: bool = False
    error_type: str | None = None
    client_disconnected: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    web_search_requests: int = 0
    cost: float | None = None
    latency_ms: float | None = None
    time_to_first_byte_ms: float | None = None
    upstream_request_id: str | None = None
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    compression: CompressionReport | None = None
    stop_reason: str | None = None
    response_id: str | None = None
    response_model: str | None = None
    traceparent: str | None = None
    output_tokens_estimated: bool = False
    tracestate: str | None = None

    @classmethod
    def from_context(cls, context: RequestContext) -> UsageEvent:
        """The event for a finished request, stamped with the current Unix time. The gateway
        builds it once per request, after pricing and before limit accounting, if a usage
        sink wants it. ``served_model`` falls back to the requested model; lists are copied.
        An attempt whose usage is the answer's own (an error answer's, a held stream's the
        client left) shows none, its tokens being the event's: the usage the attempts show
        is what was billed beside the answer, to add to it."""
        usage = context.usage
        started, finished, first_byte = (
            context.started_at,
            context.finished_at,
            context.first_byte_at,
        )
        principal = context.principal
        headers = context.request_headers
        traceparent = tracestate = None
        if (header := headers.get("traceparent")) is not None:  # rarely sent: no call then
            traceparent = valid_traceparent(header)
            if traceparent is not None:
                # Vendor data that goes with the traceparent only (W3C: dropped without it).
                tracestate = valid_tracestate(headers.get("tracestate"))
        # Positional, in field order: built once per request, and msgspec matches 28 keyword
        # arguments to fields one by one, which costs four times as much. test_usage pins
        # every field to its source.
        return cls(
            context.request_id,
            time.time(),
            context.method,
            context.path,
            context.status,
            principal.key_id if principal is not None else None,
            list(context.tags),
            context.session_id,
            _bounded(context.model),
            _bounded(context.served_model or context.model),
            context.provider,
            context.provider_type,
            context.fallback_used,
            context.stream,
            context.error_type,
            context.client_disconnected,
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_1h_input_tokens,
            usage.web_search_requests,
            context.cost,
            None if finished is None else (finished - started) * 1000,
            None if first_byte is None else (first_byte - started) * 1000,
            context.upstream_request_id,
            _attempts_beside(context.attempts, usage),
            context.compression,
            context.stop_reason,
            context.response_id,
            _bounded(context.response_model),
            traceparent,
            usage.output_tokens_estimated,
            tracestate,
        )


def _attempts_beside(attempts: list[Attempt], answer: TokenUsage) -> list[Attempt]:
    """A copy of ``attempts`` without the answer's own usage on its attempt, and with
    target names bounded as the event's model names are."""
    copied = list(attempts)
    for at, attempt in enumerate(attempts):
        if attempt.usage is answer:
            copied[at] = attempt = msgspec.structs.replace(attempt, usage=None)
        if len(attempt.target) > MAX_MODEL_IN_EVENT:
            copied[at] = msgspec.structs.replace(attempt, target=_bounded(attempt.target))
    return copied


# Model names come from clients (up to the body limit): the event keeps their first 256
# characters, more than any real model's, so that one event's JSON line stays under the
# 4 KiB a pipe writes whole. Past that, workers sharing the stdout pipe splice their lines.
MAX_MODEL_IN_EVENT = 256


def _bounded(name: str | None) -> str | None:
    return name if name is None or len(name) <= MAX_MODEL_IN_EVENT else name[:MAX_MODEL_IN_EVENT]


# W3C Trace Context: version, trace id, parent span id, flags. A later version may append
# fields after these; version ff and all-zero ids are invalid.
_TRACEPARENT = re.compile(
    r"(?!ff)([0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
)


def valid_traceparent(value: str | None) -> str | None:
    """A W3C ``traceparent`` (a client's header, a host's span) as its first four fields, or
    ``None`` if absent or malformed (it reaches logs and spans: nothing else gets through)."""
    if value is None:
        return None
    value = value.strip()
    found = _TRACEPARENT.match(value)
    if found is None:
        return None
    rest = value[found.end() :]
    # Version 00 has exactly these fields; a later one may have more, after a dash.
    if rest and (found.group(1) == "00" or not rest.startswith("-")):
        return None
    return found.group()


# W3C Trace Context: list-members key=value, at most 32; a key is lower-case, simple or
# tenant@system; a value is printable ASCII but "," and "=", not ending in a space.
_TRACESTATE_MEMBER = re.compile(
    r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_MAX_TRACESTATE_MEMBERS = 32
# Trace Context asks to pass on at least 512 characters, trimming members past that (the
# long ones first); OpenTelemetry's propagator reads up to 8,192.
_KEPT_TRACESTATE = 512
_LONG_TRACESTATE_MEMBER = 128
_MAX_TRACESTATE = 8192


def valid_tracestate(value: str | None) -> str | None:
    """A W3C ``tracestate`` (vendor trace data going with a ``traceparent``), its members
    joined by commas, or ``None`` if absent, empty or invalid (a malformed member, a key twice,
    over 32 members): it reaches logs and spans, and Trace Context says not to pass on one it
    cannot parse. Empty members are skipped, and past 512 characters members are dropped,
    those over 128 characters first, then from the end."""
    if not value or len(value) > _MAX_TRACESTATE:
        return None
    members: list[str] = []
    keys: set[str] = set()
    for part in value.split(","):
        member = part.strip(" \t")
        if not member:
            continue
        found = _TRACESTATE_MEMBER.fullmatch(member)
        if found is None or found.group(1) in keys:
            return None
        keys.add(found.group(1))
        members.append(member)
    if not members or len(members) > _MAX_TRACESTATE_MEMBERS:
        return None
    joined = ",".join(members)
    if len(joined) > _KEPT_TRACESTATE:
        members = [member for member in members if len(member) <= _LONG_TRACESTATE_MEMBER]
        while members and len(joined := ",".join(members)) > _KEPT_TRACESTATE:
            members.pop()
        if not members:
            return None
    return joined


RequestEndHook = Callable[[RequestContext], Awaitable[None] | None]


def billed_beside_answer(context: RequestContext) -> list[tuple[Attempt, TokenUsage]]:
    """The attempts whose upstream reported usage that is not the answer's (``context.usage``):
    streams that failed before their first content, or whole messages the gateway discarded,
    when another target answered or another attempt's failure did. Their upstreams bill them
    all the same, so limits and budgets count them (and the usage event shows each with its
    cost), while the event's own tokens and cost stay the answer's."""
    answer = context.usage
    return [
        (attempt, usage)
        for attempt in context.attempts
        if (usage := attempt.usage) is not None and usage is not answer
    ]
