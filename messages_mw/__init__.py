"""messages_mw: an embeddable, drop-in Anthropic Messages API gateway for ASGI apps."""

from .app import Gateway
from .config import (
    ConfigError,
    GatewayConfig,
    MockConfig,
    ModelConfig,
    UpstreamConfig,
    load_config,
)
from .context import RequestContext
from .errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
)
from .middleware import MessagesMiddleware
from .providers.anthropic import AnthropicProvider
from .providers.base import Provider, ProviderRequest, ProviderResponse

__all__ = [
    "AnthropicProvider",
    "AuthenticationError",
    "ConfigError",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "InvalidRequestError",
    "MessagesMiddleware",
    "MockConfig",
    "ModelConfig",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "RateLimitError",
    "RequestContext",
    "RequestTooLargeError",
    "UpstreamConfig",
    "load_config",
]
