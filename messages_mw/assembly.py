"""Build a gateway's providers and policy from its config and the hooks a host passed in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .auth import build_auth
from .config import GatewayConfig
from .hooks import AuthHook, CompressionHook, RouteHook, TagHook, check_hook
from .limits import RateLimiter
from .policy import Policy
from .pricing import DEFAULT_PRICES, PricingTable
from .providers.base import Provider
from .routing import TargetResolver
from .usage import JsonLinesSink, LogUsageSink, UsageDispatcher, UsageSink

__all__ = ["build_policy", "build_providers"]


def build_providers(
    config: GatewayConfig,
    provider: Provider | None,
    providers: Mapping[str, Provider] | None,
) -> dict[str, Provider]:
    """The named providers: the default one (``config.provider``), ``config.upstreams``, and
    any the host passed in (which win over configured ones of the same name)."""
    from .providers.anthropic import AnthropicProvider

    built: dict[str, Provider] = {}
    if provider is None and config.provider == "mock":
        from .providers.mock import MockProvider

        provider = MockProvider(config.mock, config.models)
    built[config.provider] = provider or AnthropicProvider(config.upstream)
    for name, upstream in config.upstreams.items():
        built[name] = AnthropicProvider(upstream)
    for name, given in (providers or {}).items():
        if not isinstance(given, Provider):
            raise TypeError(f"provider {name!r} must have async send() and aclose() methods")
        built[name] = given
    return built


def build_policy(
    config: GatewayConfig,
    provider_names: Sequence[str],
    *,
    auth: AuthHook | None,
    tagger: TagHook | None,
    compressor: CompressionHook | None,
    router: RouteHook | None,
    limiter: RateLimiter | None,
    usage_sinks: Sequence[UsageSink],
) -> Policy:
    """Validate the hooks (a bad one fails here, not at the first request) and assemble."""
    for name, hook in (
        ("auth", auth),
        ("tagger", tagger),
        ("compressor", compressor),
        ("router", router),
        *((f"usage_sinks[{i}]", s) for i, s in enumerate(usage_sinks)),
    ):
        check_hook(name, hook)
    sinks: list[UsageSink] = []
    if config.usage_log:
        sinks.append(LogUsageSink())
    if config.usage_file:
        sinks.append(JsonLinesSink(config.usage_file))
    sinks.extend(usage_sinks)
    if limiter is None and config.limits.rules:
        limiter = RateLimiter(config.limits)
    return Policy(
        resolver=TargetResolver(provider_names, config.provider, config.fallback),
        header_names=config.headers.resolved(),
        tag_policy=config.tags,
        extra_headers_allowed=frozenset(name.lower() for name in config.extra_headers_allowed),
        auth=auth or build_auth(config.auth),
        tagger=tagger,
        compressor=compressor,
        router=router,
        limiter=limiter,
        pricing=PricingTable({**DEFAULT_PRICES, **(config.pricing or {})}),
        dispatcher=UsageDispatcher(sinks) if sinks else None,
    )
