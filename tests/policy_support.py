"""Helpers for the policy-layer end-to-end tests (``test_e2e_policy.py``).

Two upstream servers (a primary and a backup) live for the whole module; each test gets fresh
:class:`ScriptedUpstream` objects behind them through :class:`SwappableApp`, which saves two
uvicorn start-ups and shutdowns per test. The gateway itself runs in a fresh FastAPI host per
test, since every test configures it differently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anthropic
import msgspec
from anthropic.types import MessageParam

from messages_mw import (
    Gateway,
    GatewayConfig,
    RequestContext,
    UpstreamConfig,
    UsageEvent,
    UsageSink,
)

from .conftest import build_host_app
from .servers import Receive, Scope, ScriptedUpstream, Send, serve

MODEL = "claude-sonnet-4-6"
BACKUP_MODEL = "claude-haiku-4-5"
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello"}]
UPSTREAM_KEY = "sk-up-default"

_event_encoder = msgspec.json.Encoder()


class SwappableApp:
    """An ASGI app that hands each request to whichever app it holds at that moment."""

    def __init__(self) -> None:
        self.app = ScriptedUpstream()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@dataclass
class Upstreams:
    """The primary and backup upstreams of one test, and where they listen."""

    primary: ScriptedUpstream
    primary_url: str
    backup: ScriptedUpstream
    backup_url: str

    def config(
        self,
        *,
        primary_url: str | None = None,
        read_timeout: float = 5.0,
        api_key: str | None = UPSTREAM_KEY,
        **options: Any,
    ) -> GatewayConfig:
        """A config with the primary as the default upstream and the backup named ``backup``."""
        primary = UpstreamConfig(
            base_url=primary_url or self.primary_url, read_timeout=read_timeout, api_key=api_key
        )
        backup = UpstreamConfig(base_url=self.backup_url, read_timeout=5.0, api_key=api_key)
        options.setdefault("usage_log", False)
        return GatewayConfig(upstream=primary, upstreams={"backup": backup}, **options)


@dataclass
class GatewayStack:
    """A FastAPI host mounting the gateway at /anthropic, and what the gateway reported."""

    base_url: str
    events: list[UsageEvent] = field(default_factory=list)
    finished: list[RequestContext] = field(default_factory=list)

    def wait_for_events(self, count: int, timeout: float = 3.0) -> list[UsageEvent]:
        """The first ``count`` usage events, once that many arrived (sinks run off-loop)."""
        wait_until(lambda: len(self.events) >= count, timeout)
        return self.events[:count]

    def last_event(self) -> UsageEvent:
        wait_until(lambda: bool(self.events))
        return self.events[-1]


@contextmanager
def gateway_stack(
    config: GatewayConfig, *, usage_sinks: Sequence[UsageSink] = (), **hooks: Any
) -> Iterator[GatewayStack]:
    """Serve a gateway built from ``config`` and ``hooks``; its last usage sink collects."""
    stack = GatewayStack("")
    gateway = Gateway(
        config,
        usage_sinks=[*usage_sinks, stack.events.append],
        on_request_end=stack.finished.append,
        **hooks,
    )
    with serve(build_host_app(gateway)) as host_url:
        stack.base_url = host_url + "/anthropic"
        yield stack


def sdk_client(
    base_url: str,
    *,
    bearer: str | None = None,
    x_api_key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> anthropic.Anthropic:
    """An SDK 2.x client sending ``bearer`` as ``Authorization: Bearer`` (the 2.x default)
    and/or ``x_api_key`` as ``x-api-key`` (the 0.x SDKs' and Claude Code's header); with
    neither it sends no key at all."""
    default_headers: dict[str, Any] = dict(headers or {})
    if x_api_key is not None:
        default_headers["x-api-key"] = x_api_key
    if bearer is None:
        default_headers["Authorization"] = anthropic.Omit()
    return anthropic.Anthropic(
        base_url=base_url,
        api_key=bearer or "never-sent",
        max_retries=0,
        default_headers=default_headers,
    )


def async_sdk_client(base_url: str, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base_url, api_key=key, max_retries=0)


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connecting to it is refused. Port 1, not a port
    found free and let go: the OS may hand that one to the next server a test starts (the
    gateway's own, which then answered itself)."""
    return "http://127.0.0.1:1"


def encoded(event: UsageEvent) -> str:
    """The event as a sink writing JSON would see it."""
    return _event_encoder.encode(event).decode()


def header_values(headers: Mapping[str, str]) -> str:
    """Every header name and value in one string, to search for a leaked secret."""
    return "\n".join(f"{name}: {value}" for name, value in headers.items())


class _ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def logged_errors(name: str) -> Iterator[list[logging.LogRecord]]:
    """Collect the error records of logger ``name`` with a handler on that logger itself, so
    that no propagation setting made elsewhere in the process (the CLI turns it off for
    ``messages_mw.usage``) can hide them."""
    logger = logging.getLogger(name)
    collector, level = _ErrorCollector(), logger.level
    if logger.getEffectiveLevel() > logging.ERROR:
        logger.setLevel(logging.ERROR)
    logger.addHandler(collector)
    try:
        yield collector.records
    finally:
        logger.removeHandler(collector)
        logger.setLevel(level)
