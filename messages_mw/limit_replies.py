"""What a client is told about its rate limits: the ``anthropic-ratelimit-*`` headers' values
and the 429's message and ``retry-after``, worked out from the window counts the store returns.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import RateLimitError
from .limit_stores import WindowCheck, WindowCount, WindowState, has_room

__all__ = [
    "HEADER_NAMES",
    "Kind",
    "Limit",
    "rejection",
    "replenished_at",
    "rfc3339_second",
]

Kind = Literal["requests", "tokens", "spend"]
# The longest a per-minute limit makes a request wait (two one-minute windows, as the previous
# one slides out); a spend budget asking longer is one no client should sleep through.
_LONGEST_RETRY_WAIT = 2 * 60.0


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit of a rule, on one counter; ``label`` names its key or tag in messages."""

    kind: Kind
    label: str
    check: WindowCheck


# Per kind of limit shown in headers: its limit, remaining and reset header names.
HEADER_NAMES = {
    kind: (
        f"anthropic-ratelimit-{kind}-limit",
        f"anthropic-ratelimit-{kind}-remaining",
        f"anthropic-ratelimit-{kind}-reset",
    )
    for kind in ("requests", "tokens")
}


def rejection(
    limits: Sequence[Limit],
    counts: Sequence[WindowCount],
    now: float,
    headers: list[tuple[str, str]],
) -> RateLimitError:
    """The 429 for a request refused by ``limits`` (with their ``counts``): its message names
    the limit that frees up last, ``retry-after`` says when, and ``headers`` (the
    ``anthropic-ratelimit-*`` ones) go with it."""
    waits = [
        (_seconds_until_room(limit.check, count, now), limit)
        for limit, count in zip(limits, counts, strict=True)
        if not has_room(limit.check, count, now)
    ]
    wait, limit = max(waits, key=lambda pair: pair[0], default=(0.0, limits[0]))
    # A whole second strictly after the moment there is room: retrying then always fits.
    retry_after = math.floor(wait) + 1
    response_headers = {"retry-after": str(retry_after), **dict(headers)}
    if limit.kind == "spend" and retry_after > _LONGEST_RETRY_WAIT:
        # Python SDK 2.x sleeps as long as retry-after says before retrying on its own: told
        # to wait for a spent budget's next period, it would hang for hours. Say not to retry.
        # (A per-minute limit may ask a little over two minutes, on a host whose clock lags:
        # that wait is worth sleeping through.)
        response_headers["x-should-retry"] = "false"
    return RateLimitError(_message(limit, retry_after), headers=response_headers)


def _message(limit: Limit, retry_after: int) -> str:
    check = limit.check
    if limit.kind == "spend":
        return (
            f"The spend budget of {check.limit:g} per {int(check.window)} s for {limit.label} "
            f"is used up; retry after {retry_after} s."
        )
    return (
        f"Number of {limit.kind} has exceeded the rate limit of {int(check.limit)} "
        f"{limit.kind} per minute for {limit.label}; retry after {retry_after} s."
    )


def replenished_at(check: WindowCheck, state: WindowState, now: float) -> float:
    """When the usage is back to zero if nothing more is counted."""
    start, previous, current = state
    if current > 0:
        return start + check.window * (2 if check.sliding else 1)
    if check.sliding and previous > 0:
        return start + check.window
    return now


def _seconds_until_room(check: WindowCheck, count: WindowCount, now: float) -> float:
    """How long until ``check`` passes if nothing more is counted: the usage falls while the
    previous window slides out, then while the current one does."""
    start, window, target = count.start, check.window, check.limit - check.cost
    # A request needs room for its cost; a budget only needs to be below its limit.
    current_fits = count.current <= target if check.cost > 0 else count.current < check.limit
    if not check.sliding:
        at = now if current_fits else start + window
    elif current_fits:
        share = (target - count.current) / count.previous if count.previous > 0 else 1.0
        at = start + window * (1 - share)
    else:
        at = start + window * (2 - target / count.current)
    # A window opened by a host whose clock runs ahead (or before this one's stepped back)
    # starts in the future; its Redis key expires two windows after its last count, so no
    # wait is longer than that, whatever the clocks say.
    return min(max(0.0, at - now), 2 * window)


@functools.lru_cache(maxsize=256)
def rfc3339_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
