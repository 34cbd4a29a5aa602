"""Tags and session ids: where they come from, and the bounds that keep them safe to log.

Tags come from a request header (comma-separated), the key's policy and ``metadata.tags``;
every tag is checked against a bounded charset and length, and the count is capped, so a tag
can never inject into a log line or a metrics backend. A bad tag is a 400, not a warning.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Literal

import msgspec

from .errors import InvalidRequestError

__all__ = [
    "HeaderNames",
    "TagPolicy",
    "check_configured_tags",
    "collect_tags",
    "parse_tag_header",
    "session_id",
]


class HeaderNames(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Names of the headers the gateway reads and adds (``preset = "edgee"`` gives Edgee's).

    Each field left ``None`` takes the preset's name (``messages_mw`` preset in brackets).
    Read from requests: ``tags``, comma-separated tags (``x-mw-tags``); ``session``, the
    session id (``x-claude-code-session-id``); ``debug``, which with ``1``, ``true``, ``yes``
    or ``on`` adds ``server-timing`` and ``<debug>-attempts`` to the response
    (``x-mw-debug``); ``compression``, the bundle the built-in compressor uses
    (``x-mw-compression``). Added to responses: ``provider``, ``model`` and
    ``fallback_used``, who served the request and whether a fallback did (``x-mw-provider``,
    ``x-mw-model``, ``x-mw-fallback-used``); ``compression_report``, what the built-in
    compressor did (``x-mw-compression-report``).
    """

    preset: Literal["messages_mw", "edgee"] = "messages_mw"
    tags: str | None = None
    session: str | None = None
    debug: str | None = None
    provider: str | None = None
    model: str | None = None
    fallback_used: str | None = None
    compression: str | None = None
    compression_report: str | None = None

    def __post_init__(self) -> None:
        for field in _NAME_FIELDS:
            name = getattr(self, field)
            if name is None:
                continue
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{field}: {name!r} is not a valid HTTP header name")
            lowered = name.lower()
            if lowered in _RESERVED_NAMES or lowered.startswith(_RESERVED_PREFIXES):
                # Read, such a header's value (a key) would reach usage events and error
                # messages; added, it would break the response's framing or its meaning.
                raise ValueError(
                    f"{field}: '{name}' is a header with a meaning of its own (credentials, "
                    "framing or the API's); name one of the gateway's own"
                )

    def resolved(self) -> ResolvedHeaderNames:
        """Every name, the preset's where none is given, lower-cased (the gateway resolves
        them at construction)."""
        base = _PRESETS[self.preset]
        return ResolvedHeaderNames(
            tags=(self.tags or base.tags).lower(),
            session=(self.session or base.session).lower(),
            debug=(self.debug or base.debug).lower(),
            provider=(self.provider or base.provider).lower(),
            model=(self.model or base.model).lower(),
            fallback_used=(self.fallback_used or base.fallback_used).lower(),
            compression=(self.compression or base.compression).lower(),
            compression_report=(self.compression_report or base.compression_report).lower(),
        )


_NAME_FIELDS = (
    "tags",
    "session",
    "debug",
    "provider",
    "model",
    "fallback_used",
    "compression",
    "compression_report",
)
# RFC 9110's token: what a field name may be.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_RESERVED_NAMES = frozenset(
    {
        "authorization",
        "x-api-key",
        "cookie",
        "set-cookie",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "date",
        "server",
        "request-id",
        "retry-after",
        "x-should-retry",
        "traceparent",
        "tracestate",
        "server-timing",
    }
)
_RESERVED_PREFIXES = ("anthropic-", "proxy-", "sec-", "x-stainless-")


class ResolvedHeaderNames(msgspec.Struct, frozen=True):
    tags: str
    session: str
    debug: str
    provider: str
    model: str
    fallback_used: str
    compression: str
    compression_report: str


_PRESETS = {
    "messages_mw": ResolvedHeaderNames(
        tags="x-mw-tags",
        session="x-claude-code-session-id",
        debug="x-mw-debug",
        provider="x-mw-provider",
        model="x-mw-model",
        fallback_used="x-mw-fallback-used",
        compression="x-mw-compression",
        compression_report="x-mw-compression-report",
    ),
    "edgee": ResolvedHeaderNames(
        tags="x-edgee-tags",
        session="x-edgee-session-id",
        debug="x-edgee-debug",
        provider="x-edgee-provider",
        model="x-edgee-model",
        fallback_used="x-edgee-fallback-used",
        compression="x-edgee-compression-model",
        compression_report="x-edgee-compression-report",
    ),
}


class TagPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Bounds on tags: at most ``max_count`` tags of at most ``max_length`` characters from
    ``[A-Za-z0-9_.:/-]``; a request past them is answered 400 ``invalid_request_error``.

    ``from_metadata``: whether the body's ``metadata.tags`` add tags. When false they are
    ignored, though still removed from the body before it goes upstream.
    """

    max_count: Annotated[int, msgspec.Meta(ge=1)] = 16
    max_length: Annotated[int, msgspec.Meta(ge=1)] = 64
    from_metadata: bool = True


_TAG = re.compile(r"[A-Za-z0-9_.:/-]+")
_SESSION = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _check_tag(tag: str, source: str, policy: TagPolicy) -> str:
    if len(tag) > policy.max_length:
        raise InvalidRequestError(
            f"{source}: tag '{tag[:20]}...' is longer than {policy.max_length} characters."
        )
    if not _TAG.fullmatch(tag):
        raise InvalidRequestError(
            f"{source}: tag {tag[:40]!r} may only contain letters, digits and _ . : / -"
        )
    return tag


def parse_tag_header(value: str, source: str, policy: TagPolicy) -> list[str]:
    """Split a comma-separated tag header; empty items are ignored."""
    return [_check_tag(item.strip(), source, policy) for item in value.split(",") if item.strip()]


def collect_tags(groups: Iterable[tuple[str, Iterable[str]]], policy: TagPolicy) -> list[str]:
    """Validate and merge tags from several ``(source, tags)`` groups, first seen first, no
    duplicates; raises :class:`InvalidRequestError` naming the source of a bad tag."""
    merged: dict[str, None] = {}
    for source, tags in groups:
        if "." in source:  # a JSON path (metadata.tags): the message names the item
            for index, tag in enumerate(tags):
                merged[_check_tag(tag, f"{source}.{index}", policy)] = None
            continue
        for tag in tags:
            merged[_check_tag(tag, source, policy)] = None
    if len(merged) > policy.max_count:
        raise InvalidRequestError(f"tags: at most {policy.max_count} tags are allowed per request.")
    return list(merged)


def check_configured_tags(tags: Sequence[str], source: str, policy: TagPolicy) -> None:
    """Raise :class:`ValueError` for configured tags (a key's policy) that ``policy`` refuses:
    at start-up, rather than a 400 blaming every client that uses the key."""
    try:
        collect_tags([(source, tags)], policy)
    except InvalidRequestError as exc:
        raise ValueError(exc.message) from None


def session_id(headers: Mapping[str, str], header: str) -> str | None:
    """The session id from ``header`` (``None`` when absent or blank): as sent when it is a
    sane identifier (a UUID, typically), else a stable digest of it (``sha256:`` and 32 hex
    digits), so usage still groups the session while no unchecked client text reaches a log.

    Never refused: Anthropic ignores the header, and a drop-in must not be stricter.
    """
    value = headers.get(header)
    if value is None or not (value := value.strip()):
        return None
    if _SESSION.fullmatch(value):
        return value
    # Header values arrive decoded as latin-1: encoding back gives the bytes sent.
    return "sha256:" + hashlib.sha256(value.encode("latin-1", "replace")).hexdigest()[:32]
