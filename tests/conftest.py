"""Shared fixtures: a scripted upstream and a gateway in front of it, both real servers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI

from messages_mw import Gateway, GatewayConfig, RequestContext, UpstreamConfig

from .servers import SAMPLES, ScriptedUpstream, serve

if TYPE_CHECKING:
    from .policy_support import SwappableApp, Upstreams


@dataclass
class Stack:
    """A host app mounting the gateway at /anthropic, in front of a scripted upstream."""

    upstream: ScriptedUpstream
    upstream_url: str
    host_url: str
    finished: list[RequestContext] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.host_url + "/anthropic"


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    app = ScriptedUpstream()
    with serve(app) as url:
        yield app, url


def build_host_app(gateway: Gateway) -> FastAPI:
    host = FastAPI(lifespan=gateway.lifespan)

    @host.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    host.mount("/anthropic", gateway)
    return host


@pytest.fixture
def stack(upstream: tuple[ScriptedUpstream, str]) -> Iterator[Stack]:
    scripted, upstream_url = upstream
    finished: list[RequestContext] = []
    config = GatewayConfig(upstream=UpstreamConfig(base_url=upstream_url, read_timeout=5.0))
    gateway = Gateway(config, on_request_end=finished.append)
    with serve(build_host_app(gateway)) as host_url:
        yield Stack(scripted, upstream_url, host_url, finished)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SwappableApp, str, SwappableApp, str]]:
    """A primary and a backup upstream for a whole test module (see ``ups``)."""
    # Imported here: policy_support imports this module for build_host_app.
    from .policy_support import SwappableApp

    primary, backup = SwappableApp(), SwappableApp()
    with serve(primary) as primary_url, serve(backup) as backup_url:
        yield primary, primary_url, backup, backup_url


@pytest.fixture
def ups(servers: tuple[SwappableApp, str, SwappableApp, str]) -> Upstreams:
    """Fresh scripted upstreams behind the module's two servers, for one test."""
    from .policy_support import Upstreams

    primary, primary_url, backup, backup_url = servers
    primary.app, backup.app = ScriptedUpstream(), ScriptedUpstream()
    return Upstreams(primary.app, primary_url, backup.app, backup_url)
