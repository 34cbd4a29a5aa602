"""The headers on the gateway's answers: the upstream's, the request id, and the policy's own
(rate limits, who served, the debug report), encoded safely whatever a hook or client put in."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from urllib.parse import quote

import msgspec

from .context import RequestContext
from .memo import Memo
from .providers.base import ProviderResponse
from .tags import ResolvedHeaderNames

__all__ = [
    "EXPOSED_HEADERS",
    "encode_headers",
    "latin1",
    "policy_headers",
    "response_headers",
    "tightest_limit_headers",
]

# What a browser page may read of an answer: what the SDKs read, and the limits' headers.
EXPOSED_HEADERS = (
    "request-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    *(
        f"anthropic-ratelimit-{kind}-{part}"
        for kind in ("requests", "tokens")
        for part in ("limit", "remaining", "reset")
    ),
)
_attempts_encoder = msgspec.json.Encoder()


def response_headers(
    response: ProviderResponse, context: RequestContext, names: ResolvedHeaderNames
) -> list[tuple[bytes, bytes]]:
    """The headers of a relayed answer: the upstream's, less those the gateway sets itself,
    then :func:`policy_headers`; the upstream's ``request-id`` is kept (and noted on
    ``context``), else the gateway's own is added."""
    ours = policy_headers(context, names)
    upstream = response.headers
    # Built in C, where a loop over the names costs every limited request thousands of
    # instructions.
    if context.response_headers and not _FAMILY_NAMES.isdisjoint(dict(upstream)):
        upstream, ours = tightest_limit_headers(upstream, ours)
    # The gateway's own headers replace the upstream's of the same name. (A dict of them:
    # built in C, where a set needs a loop.)
    replaced = dict(ours)
    upstream = [(k, v) for k, v in upstream if k not in replaced]
    headers = encode_headers(upstream)
    for name, value in upstream:
        if name == "request-id":
            context.upstream_request_id = value
            break
    else:
        headers.append((b"request-id", context.request_id.encode()))
    return headers + encode_headers(ours)


def policy_headers(context: RequestContext, names: ResolvedHeaderNames) -> list[tuple[str, str]]:
    """The headers the gateway adds to every answer, its own errors included: rate-limit
    headers, which provider and model served, and the debug report."""
    pairs = list(context.response_headers)
    if context.provider is not None:
        pairs.append((names.provider, _header_safe(context.provider)))
        if model := context.served_model or context.model:  # none for a model list
            pairs.append((names.model, _header_safe(model)))
        pairs.append((names.fallback_used, "1" if context.fallback_used else "0"))
    if context.debug:
        pairs.extend(_debug_headers(context, names.debug))
    return pairs


# Each family of limit headers the gateway's limiter sets, and the upstream's families it
# stands for: the gateway's tokens-* is its tightest token limit, as Anthropic's tokens-* is
# the tightest of its input- and output-tokens-*.
_LIMIT_FAMILIES = (
    ("anthropic-ratelimit-requests-", ("anthropic-ratelimit-requests-",)),
    (
        "anthropic-ratelimit-tokens-",
        (
            "anthropic-ratelimit-tokens-",
            "anthropic-ratelimit-input-tokens-",
            "anthropic-ratelimit-output-tokens-",
        ),
    ),
)

# Every header name of those families.
_FAMILY_NAMES = frozenset(
    f"anthropic-ratelimit-{kind}-{part}"
    for kind in ("requests", "tokens", "input-tokens", "output-tokens")
    for part in ("limit", "remaining", "reset")
)


def tightest_limit_headers(
    upstream: list[tuple[str, str]], ours: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``upstream`` and ``ours`` with one set of ``anthropic-ratelimit-*`` headers per family
    left between them: the set with less room remaining (the gateway's on a tie), so that a
    client never reads a limit's headers half from each, nor an upstream's exhausted limit
    (its 429) overwritten by the gateway's own with room to spare."""
    if _FAMILY_NAMES.isdisjoint(dict(upstream)):
        return upstream, ours  # nothing to choose between
    for own_prefix, upstream_prefixes in _LIMIT_FAMILIES:
        own_left = _remaining(ours, (own_prefix,))
        if own_left is None:  # the gateway has no such limit: the upstream's stand
            continue
        their_left = _remaining(upstream, upstream_prefixes)
        if their_left is not None and their_left < own_left:
            ours = [pair for pair in ours if not pair[0].startswith(own_prefix)]
        else:
            upstream = [pair for pair in upstream if not pair[0].startswith(upstream_prefixes)]
    return upstream, ours


def _remaining(headers: Sequence[tuple[str, str]], prefixes: tuple[str, ...]) -> int | None:
    """The least ``...-remaining`` count among ``headers`` of the families ``prefixes``."""
    counts = [
        int(value)
        for name, value in headers
        if name.endswith("-remaining") and name.startswith(prefixes) and value.isdigit()
    ]
    return min(counts, default=None)


def encode_headers(pairs: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """``pairs`` as ASGI header bytes; never raises (see :func:`latin1`)."""
    try:
        return [(_encoded_names[k], v.encode("latin-1")) for k, v in pairs]
    except UnicodeEncodeError:
        # A hook's header beyond latin-1 must not turn the response into a crash.
        return [(_encoded_names[k], latin1(v)) for k, v in pairs]


def latin1(text: str) -> bytes:
    """``text`` as latin-1 bytes, percent-encoded where it goes beyond latin-1."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return quote(text, safe="").encode()


# Answers repeat the same few names. Bounded: an upstream may invent names. The same bytes
# object each time also keeps its hash for the server's memo of checked names.
_encoded_names = Memo(latin1, 1024)


def _header_safe(value: str) -> str:
    # Model names come from clients; anything outside printable ASCII is percent-encoded so
    # it can neither break the header encoding nor inject a header line.
    return value if value.isascii() and value.isprintable() else quote(value, safe="")


def _debug_headers(context: RequestContext, debug_header: str) -> list[tuple[str, str]]:
    upstream = sum(attempt.duration for attempt in context.attempts)
    total = time.perf_counter() - context.started_at
    timing = (
        f"gateway;dur={max(total - upstream, 0) * 1000:.2f}, upstream;dur={upstream * 1000:.2f}"
    )
    if context.compression is not None:
        timing += f", compression;dur={context.compression.duration_ms:.2f}"
    attempts = _attempts_encoder.encode(context.attempts).decode()
    if not (attempts.isascii() and attempts.isprintable()):
        # A client's model name may be any text: escaped the JSON way, it stays one valid
        # header value (DEL included, which JSON itself allows raw).
        attempts = json.dumps(json.loads(attempts), separators=(",", ":"))
        attempts = attempts.replace("\x7f", "\\u007f")
    return [("server-timing", timing), (debug_header + "-attempts", attempts)]
