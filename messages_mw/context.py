"""The per-request record: what the gateway learned about one request, start to finish."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .streaming import TokenUsage

__all__ = ["RequestContext", "RequestEndHook"]


@dataclass(slots=True)
class RequestContext:
    """Filled in as a request moves through the gateway; handed to ``on_request_end`` once.

    Times are ``time.perf_counter()`` readings; ``usage`` holds what the upstream reported,
    including for streams the client abandoned half-way.
    """

    request_id: str
    method: str
    path: str
    started_at: float = field(default_factory=time.perf_counter)
    model: str | None = None
    stream: bool = False
    status: int = 0
    response_started: bool = False
    upstream_request_id: str | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    stop_reason: str | None = None
    error_type: str | None = None
    client_disconnected: bool = False
    first_byte_at: float | None = None
    finished_at: float | None = None

    @property
    def latency(self) -> float | None:
        """Seconds from arrival to the last byte, once finished."""
        return None if self.finished_at is None else self.finished_at - self.started_at


RequestEndHook = Callable[[RequestContext], Awaitable[None] | None]
