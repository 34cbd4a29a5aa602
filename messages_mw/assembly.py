"""Build a gateway's providers and policy from its config and the hooks a host passed in."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence

from .auth import AuthConfig, build_auth
from .config import ConfigError, GatewayConfig, TelemetryConfig
from .hooks import AuthHook, CompressionHook, RouteHook, TagHook, check_hook
from .limits import LimitsConfig, RateLimiter
from .policy import Policy
from .pricing import DEFAULT_PRICES, PricingTable
from .providers.base import Provider
from .redaction import is_secret_header
from .routing import TargetResolver
from .types import ASGIApp
from .usage import JsonLinesSink, LogUsageSink, UsageDispatcher, UsageSink

__all__ = ["build_model_directory", "build_policy", "build_providers", "build_telemetry"]


def build_providers(
    config: GatewayConfig,
    provider: Provider | None,
    providers: Mapping[str, Provider] | None,
) -> dict[str, Provider]:
    """The named providers: the default one (``config.provider``), ``config.upstreams``,
    ``config.openai_upstreams``, and any the host passed in (which win over configured ones of
    the same name). Raises :class:`ConfigError` when two configured providers share a name, or
    a name holds a "/"."""
    from .providers.anthropic import AnthropicProvider

    _check_provider_names(config)
    built: dict[str, Provider] = {}
    if provider is None and config.provider == "mock":
        from .providers.mock import MockProvider

        provider = MockProvider(config.mock, config.models)
    built[config.provider] = provider or AnthropicProvider(config.upstream)
    for name, upstream in config.upstreams.items():
        built[name] = AnthropicProvider(upstream, name=name)
    if config.openai_upstreams:
        from .providers.openai import OpenAIProvider

        for name, settings in config.openai_upstreams.items():
            built[name] = OpenAIProvider(settings, name=name)
    for name, given in (providers or {}).items():
        if not isinstance(given, Provider):
            raise TypeError(f"provider {name!r} must have async send() and aclose() methods")
        built[name] = given
    if slashed := sorted(name for name in built if "/" in name):
        # A target is "provider/model", split at the first "/": such a provider could never
        # be named, and its attempts would be priced at the wrong model.
        raise ConfigError(f"provider names cannot contain '/': {', '.join(slashed)}")
    return built


def _check_provider_names(config: GatewayConfig) -> None:
    names = [config.provider, *config.upstreams, *config.openai_upstreams]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"provider names must be unique across provider, upstreams and openai_upstreams: "
            f"{', '.join(repeated)}"
        )


def build_model_directory(providers: Mapping[str, Provider], default: str) -> Provider:
    """What answers ``GET /v1/models``: the default provider, merged with the models of the
    OpenAI-compatible providers when there are any."""
    from .providers.openai import ModelDirectory, OpenAIProvider

    listed = {
        name: provider
        for name, provider in providers.items()
        if name != default and isinstance(provider, OpenAIProvider)
    }
    return ModelDirectory(providers[default], listed) if listed else providers[default]


def keyed_elsewhere(
    config: GatewayConfig, built: Mapping[str, Provider], given: Mapping[str, Provider] | None
) -> frozenset[str]:
    """Providers a key's virtual key or a client's own key must not reach: every one but the
    default, except configured upstreams without a key of their own (which a host has not
    replaced with a provider of its own, whose credentials the config cannot know)."""
    keyless = {
        name
        for name, upstream in config.upstreams.items()
        if not upstream.api_key and name not in (given or {})
    }
    return frozenset(name for name in built if name != config.provider and name not in keyless)


def openai_without_credentials(config: GatewayConfig) -> frozenset[str]:
    """Configured OpenAI-compatible upstreams that send no credential of the operator's (a
    local model): they never get a client's or virtual key either, but no key of the gateway's
    is spent there, so passthrough callers may name them."""
    return frozenset(
        name
        for name, upstream in config.openai_upstreams.items()
        if upstream.api_key is None
        and not any(is_secret_header(header.lower()) for header in upstream.extra_headers)
    )


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
    keyed_providers: frozenset[str] = frozenset(),
) -> Policy:
    """Validate the hooks (a bad one fails here, not at the first request) and assemble.
    ``keyed_providers``: those sent the gateway's own key, never a client's or a virtual one."""
    for name, hook, arguments in (
        ("auth", auth, "request"),
        ("tagger", tagger, "request, context"),
        ("compressor", compressor, "body, context"),
        ("router", router, "context, chain"),
        *((f"usage_sinks[{i}]", s, "event") for i, s in enumerate(usage_sinks)),
    ):
        check_hook(name, hook, arguments)
    if limiter is not None:
        _check_limiter(limiter)
    if limiter is None and config.limits.rules:
        limiter = RateLimiter(config.limits)
    # A host's own limiter (RateLimiter's methods, its own store or rules) may have no
    # LimitsConfig to check.
    limits = getattr(limiter, "config", None)
    if auth is None and isinstance(limits, LimitsConfig):
        _check_tag_rules_can_apply(limits, config.auth)
        _check_key_rules_can_apply(limits, config.auth)
    pricing = PricingTable({**DEFAULT_PRICES, **(config.pricing or {})})
    # Built-in passthrough auth checks no key: a caller could spend the gateway's own keys by
    # naming their providers, so only the operator's chains and aliases lead there.
    passthrough = auth is None and config.auth.mode == "passthrough"
    resolver = TargetResolver(
        provider_names,
        config.provider,
        config.fallback,
        aliases=config.aliases,
        pricing=pricing,
        unnamable=keyed_providers if passthrough else frozenset(),
    )
    auth = auth or build_auth(config.auth)
    compressor = compressor or _builtin_compressor(config)
    # Last, as it opens usage_file: a mistake found above must not leave the file open.
    sinks: list[UsageSink] = []
    if config.usage_log:
        sinks.append(LogUsageSink())
    if config.usage_file:
        sinks.append(JsonLinesSink(config.usage_file))
    sinks.extend(usage_sinks)
    return Policy(
        resolver=resolver,
        header_names=config.headers.resolved(),
        tag_policy=config.tags,
        extra_headers_allowed=frozenset(name.lower() for name in config.extra_headers_allowed),
        auth=auth,
        tagger=tagger,
        compressor=compressor,
        router=router,
        limiter=limiter,
        pricing=pricing,
        dispatcher=UsageDispatcher(sinks) if sinks else None,
    )


# What the policy uses of a limiter: a host's own must have them all.
_LIMITER_ATTRIBUTES = ("admit", "record", "needs_price", "aclose", "checks_prices", "counts_usage")
_ASYNC_LIMITER_METHODS = ("admit", "record", "aclose")


def _check_limiter(limiter: object) -> None:
    """Raise :class:`TypeError` naming what a host's limiter lacks, at start-up rather than
    as an error at the first request. It must be complete when the gateway is built."""
    missing = [name for name in _LIMITER_ATTRIBUTES if not _has(limiter, name)]
    if missing:
        raise TypeError(f"limiter has no {', '.join(missing)} (as RateLimiter has)")
    plain = [
        name
        for name in _ASYNC_LIMITER_METHODS
        if not inspect.iscoroutinefunction(getattr(limiter, name, None))
    ]
    if plain:
        # Awaited on every request: a plain def would fail each one with a 500.
        raise TypeError(f"limiter.{', limiter.'.join(plain)} must be async def, as RateLimiter's")


def _has(thing: object, name: str) -> bool:
    # hasattr() lets any error but AttributeError escape: a property that fails now may
    # work at the first request, and is there either way.
    try:
        getattr(thing, name)
    except AttributeError:
        return False
    except Exception:
        return True
    return True


def _check_tag_rules_can_apply(limits: LimitsConfig, auth: AuthConfig) -> None:
    """With ``tags_from = "key"`` only the keys' tags count: under the built-in auth, tag
    rules with no key bringing a tag would never apply, without a word."""
    tag_rules = any(rule.scope == "tag" for rule in limits.rules)
    if limits.tags_from == "key" and tag_rules and not any(key.tags for key in auth.keys):
        raise ValueError(
            "limits.tags_from = 'key' counts only the tags of auth.keys, and no key has tags:"
            " the tag rules would never apply"
        )


def _check_key_rules_can_apply(limits: LimitsConfig, auth: AuthConfig) -> None:
    """A key rule whose ``match`` no key of the built-in auth can have would never apply: a
    mistyped key id would leave that key under the ``"*"`` limits without a word."""
    ids = {key.id for key in auth.keys}
    for index, rule in enumerate(limits.rules):
        if rule.scope != "key" or rule.match == "*":
            continue
        if auth.mode == "static" and rule.match in ids:
            continue
        if auth.mode == "passthrough" and rule.match.startswith("client:"):
            continue  # a client key's id: "client:" and a prefix of its hash
        known = {
            "static": f"the ids of auth.keys are {sorted(ids)}",
            "passthrough": "client keys have ids 'client:' + a hash prefix",
            "none": "auth.mode = 'none' identifies no key",
        }[auth.mode]
        raise ValueError(
            f"limits.rules[{index}].match: no key has the id {rule.match!r} ({known}),"
            " so the rule would never apply"
        )


def build_telemetry(
    config: TelemetryConfig, known_models: Iterable[str] = ()
) -> tuple[list[UsageSink], ASGIApp | None]:
    """The usage sinks ``config`` turns on, and the app serving the Prometheus metrics
    (``None`` when they are off); ``known_models`` get metric labels of their own from the
    start. Raises :class:`ImportError`, naming the extra to install, when one's package is
    missing."""
    sinks: list[UsageSink] = []
    metrics_app = None
    if config.prometheus:
        from .metrics import PrometheusSink

        prometheus = PrometheusSink(
            namespace=config.prometheus_namespace, known_models=known_models
        )
        sinks.append(prometheus)
        metrics_app = prometheus.metrics_app()
    if config.opentelemetry:
        from .telemetry import OpenTelemetrySink

        sinks.append(OpenTelemetrySink())
    return sinks, metrics_app


def configured_models(config: GatewayConfig) -> set[str]:
    """The model names ``config`` mentions: priced, listed (the mock's), alias and chain
    targets, router candidates, OpenAI-compatible upstreams' models."""
    names = set(DEFAULT_PRICES) | set(config.pricing or ())
    names.update(model.id for model in config.models)
    fallback = config.fallback
    targets = [*config.aliases.values(), *fallback.default_chain, *fallback.router_candidates]
    for chain in fallback.chains.values():
        targets += chain
    names.update(target.rpartition("/")[2] for target in targets)
    names.update(config.aliases)
    for upstream in config.openai_upstreams.values():
        names.update(upstream.models)
    return names


def _builtin_compressor(config: GatewayConfig) -> CompressionHook:
    from .compression.builtin import BundleCompressor

    names = config.headers.resolved()
    return BundleCompressor(
        config.compression,
        header=names.compression,
        report_header=names.compression_report,
        key_bundles=[key.compression for key in config.auth.keys],
    )
