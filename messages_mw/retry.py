"""Retry timing for :func:`~messages_mw.fallback.run_chain`: the policy, the SDKs' backoff, and
the waits an upstream asks for in ``retry-after`` headers. Pure functions of their inputs."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Iterable, Mapping
from datetime import UTC

import msgspec

__all__ = ["RetryPolicy", "backoff_delay", "retry_after_seconds", "waits_too_long"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_delay(value: float) -> bool:
    return 0 <= value < math.inf


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How :func:`run_chain` retries; times are seconds. Invalid values raise ``ValueError``.

    ``attempts_per_target`` counts the first try; one by default, since the SDKs and Claude
    Code retry by themselves and same-target retries in the gateway would multiply their
    attempts. Exponential delays are shortened by up to
    ``jitter`` of themselves. An upstream ``retry-after`` replaces the delay when honoured; one
    above ``max_retry_after`` moves on to the next target instead. ``deadline`` bounds the
    whole chain, from its start until an answer is chosen (for a stream: its first content).
    A stream's opening events (``message_start``, pings) are held back while its first content
    event is awaited, since that decides whether it failed (and falls back, or becomes a typed
    error response); after ``stream_hold`` without content the stream is relayed as it is, so
    that a long-silent model still sends the client bytes before its watchdogs fire (Claude
    Code's first-byte timeout is 10 s at the least). A stream with not one byte by then (an
    upstream that sent its head and hung) is relayed all the same, unless
    ``first_byte_timeout`` is set: it is then held, still able to fall back, until that many
    seconds after its head, and fails as a timeout (504) if still silent.
    """

    attempts_per_target: int = 1
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    # Every 5xx, as the SDKs retry: a CDN in front of an upstream answers 520-524 for it.
    retry_statuses: tuple[int, ...] = (408, 409, 429, *range(500, 600))
    honour_retry_after: bool = True
    max_retry_after: float = 30.0
    deadline: float = 600.0
    stream_hold: float = 5.0
    first_byte_timeout: float | None = None

    def __post_init__(self) -> None:
        _require(self.attempts_per_target >= 1, "attempts_per_target must be at least 1")
        for name, value in (
            ("base_delay", self.base_delay),
            ("max_delay", self.max_delay),
            ("max_retry_after", self.max_retry_after),
            ("stream_hold", self.stream_hold),
        ):
            _require(_is_delay(value), f"{name} must be a finite number >= 0")
        _require(0 <= self.jitter <= 1, "jitter must be between 0 and 1")
        _require(0 < self.deadline < math.inf, "deadline must be a finite number > 0")
        first_byte = self.first_byte_timeout
        _require(
            first_byte is None or 0 < first_byte < math.inf,
            "first_byte_timeout must be a finite number > 0",
        )
        bad = [status for status in self.retry_statuses if not 400 <= status <= 599]
        _require(not bad, f"retry_statuses must be 4xx or 5xx statuses, not {bad}")


def _honours(policy: RetryPolicy, retry_after: float) -> bool:
    return policy.honour_retry_after and 0 <= retry_after <= policy.max_retry_after


def waits_too_long(policy: RetryPolicy, retry_after: float | None) -> bool:
    return (
        policy.honour_retry_after
        and retry_after is not None
        and retry_after > policy.max_retry_after
    )


def backoff_delay(
    retry_index: int, policy: RetryPolicy, retry_after: float | None, random_value: float
) -> float:
    """Seconds to wait before retry ``retry_index`` (0 for the first retry) of one target.

    An upstream ``retry_after`` is used as it is when the policy honours it and it is at most
    ``max_retry_after``. Otherwise this is the SDKs' backoff, ``min(base_delay * 2**n,
    max_delay)`` shortened by ``jitter * random_value`` (``random_value`` in [0, 1]). Pure.
    """
    if retry_after is not None and _honours(policy, retry_after):
        return retry_after
    # Past 2**1023 a float overflows; the cap has long been reached by then anyway.
    growth = 2.0 ** min(max(retry_index, 0), 1023)
    exponential = min(policy.base_delay * growth, policy.max_delay)
    return exponential * (1.0 - policy.jitter * min(max(random_value, 0.0), 1.0))


def retry_after_seconds(
    headers: Mapping[str, str] | Iterable[tuple[str, str]], now: float | None = None
) -> float | None:
    """The wait an upstream asked for in its response headers, in seconds, or ``None``.

    Reads ``retry-after-ms`` (milliseconds), then ``retry-after`` as seconds or as an HTTP date
    (counted from ``now``, a ``time.time()`` reading, by default the current one), in the SDKs'
    order. Only positive, finite waits count; anything else is ``None``.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    values = {name.lower(): value for name, value in pairs}
    millis = _positive_float(values.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = values.get("retry-after")
    if value is None:
        return None
    seconds = _positive_float(value)
    if seconds is not None:
        return seconds
    return _seconds_until(value, time.time() if now is None else now)


def _positive_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0 < number < math.inf else None


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    wait = moment.timestamp() - now
    return wait if wait > 0 else None
