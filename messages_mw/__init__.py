"""messages_mw: an embeddable, drop-in Anthropic Messages API gateway for ASGI apps."""

from .app import Gateway
from .auth import ApiKeyConfig, AuthConfig, presented_key
from .config import (
    CompressionConfig,
    ConfigError,
    GatewayConfig,
    MockConfig,
    ModelConfig,
    OpenAIUpstreamConfig,
    TelemetryConfig,
    UpstreamConfig,
    load_config,
)
from .context import CompressionReport, Principal, RequestContext, UsageEvent
from .errors import (
    AuthenticationError,
    BillingError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnsupportedByProviderError,
)
from .fallback import BreakerPolicy, RetryPolicy, Target
from .hooks import IncomingRequest
from .limits import LimitRule, LimitsConfig, RateLimiter
from .middleware import MessagesMiddleware
from .pricing import ModelPrice, PricingTable
from .providers.anthropic import AnthropicProvider
from .providers.base import Provider, ProviderRequest, ProviderResponse
from .providers.openai import OpenAIProvider
from .routing import FallbackConfig
from .tags import HeaderNames, TagPolicy
from .translate import OpenAIQuirks
from .usage import JsonLinesSink, UsageSink

__all__ = [
    "AnthropicProvider",
    "ApiKeyConfig",
    "AuthConfig",
    "AuthenticationError",
    "BillingError",
    "BreakerPolicy",
    "CompressionConfig",
    "CompressionReport",
    "ConfigError",
    "FallbackConfig",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "HeaderNames",
    "IncomingRequest",
    "InvalidRequestError",
    "JsonLinesSink",
    "LimitRule",
    "LimitsConfig",
    "MessagesMiddleware",
    "MockConfig",
    "ModelConfig",
    "ModelPrice",
    "NotFoundError",
    "OpenAIProvider",
    "OpenAIQuirks",
    "OpenAIUpstreamConfig",
    "OverloadedError",
    "PermissionDeniedError",
    "PricingTable",
    "Principal",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "RateLimitError",
    "RateLimiter",
    "RequestContext",
    "RequestTooLargeError",
    "RetryPolicy",
    "TagPolicy",
    "Target",
    "TelemetryConfig",
    "UnsupportedByProviderError",
    "UpstreamConfig",
    "UsageEvent",
    "UsageSink",
    "load_config",
    "presented_key",
]
