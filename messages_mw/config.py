"""Immutable gateway configuration, decoded and validated with msgspec.

A config is built in code (``GatewayConfig(upstream=UpstreamConfig(base_url=...))``) or loaded
from TOML with :func:`load_config`. Unknown keys are errors here (unlike on the wire): a typo in
a config file should fail loudly at start-up, naming the key and the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import httpx
import msgspec

from .auth import AuthConfig
from .config_check import ConfigError
from .limits import LimitsConfig
from .pricing import ModelPrice
from .protocol import FORBIDDEN_IN_HEADER_VALUE
from .redaction import is_secret_header, repr_without_secrets, url_without_password
from .routing import FallbackConfig
from .tags import HeaderNames, TagPolicy, check_configured_tags
from .translate import OpenAIQuirks

__all__ = [
    "DEFAULT_MODELS",
    "CompressionConfig",
    "ConfigError",
    "GatewayConfig",
    "MockConfig",
    "ModelConfig",
    "OpenAIUpstreamConfig",
    "TelemetryConfig",
    "UpstreamConfig",
    "load_config",
]

# Checked when a file is read: a base URL without a scheme would start and then answer 502s.
_HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^/\s]+")]
_PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
_NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


def _check_base_url(url: str) -> None:
    """Raise :class:`ValueError` for a base URL whose host, port or IPv6 literal is malformed.

    The pattern above lets ``http://host:99999``, ``http://host:abc``, ``http://:80`` and
    ``http://[::1]]`` through; they would fail later, as a traceback at start-up or a 502 on
    every request.
    """
    shown = url_without_password(url)  # a proxy's password must not reach logs or errors
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (reading it is the check: it raises for a bad port)
        httpx.URL(url)  # what the providers will parse it with
    except (ValueError, httpx.InvalidURL) as exc:
        raise ValueError(f"base_url '{shown}': {_without(url, str(exc))}") from exc
    if parts.scheme and not parts.hostname:  # no scheme: the pattern's to refuse, on build
        raise ValueError(f"base_url '{shown}': no host")
    if any(char.isspace() for char in url):
        raise ValueError(f"base_url '{shown}': contains a blank")
    if parts.fragment or url.endswith("#"):
        # Never sent, and the request path appended after it would be lost with it.
        raise ValueError(f"base_url '{shown}': a base URL takes no fragment")


def _without(url: str, message: str) -> str:
    """``message`` with ``url`` in it shown without its password."""
    return message.replace(url, url_without_password(url))


def _check_header_values(field: str, values: dict[str, str]) -> None:
    """Refuse a header value no request may carry (a control character: a key read from a
    file with its newline), which would fail every request as an unreachable upstream."""
    for name, value in values.items():
        if FORBIDDEN_IN_HEADER_VALUE.search(value):
            shown = "" if is_secret_header(name.lower()) else f" {value!r}"
            raise ValueError(
                f"{field}.{name}: the value{shown} has a control character or a character "
                "beyond latin-1, which no HTTP header may carry"
            )


def _check_api_key(key: str | None) -> None:
    if key is not None and FORBIDDEN_IN_HEADER_VALUE.search(key):
        # Not echoed: it is a key.
        raise ValueError(
            "api_key has a control character or a character beyond latin-1 (a key read from "
            "a file with its newline?), which no HTTP header may carry"
        )


class UpstreamConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An Anthropic-compatible upstream.

    ``api_key`` None means pass-through: the client's own key is forwarded in the header it
    came in. ``read_timeout`` is also the longest silence tolerated between two stream chunks.

    Raises :class:`ValueError` (a ``msgspec.ValidationError`` when decoding config) for a
    ``base_url`` with no host, or whose port is not a number from 0 to 65535.
    """

    base_url: _HttpUrl = "https://api.anthropic.com"
    api_key: str | None = None
    connect_timeout: _PositiveFloat = 10.0
    read_timeout: _PositiveFloat = 600.0
    write_timeout: _PositiveFloat = 60.0
    pool_timeout: _PositiveFloat = 10.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 256
    http2: bool = False

    def __post_init__(self) -> None:
        _check_base_url(self.base_url)
        _check_api_key(self.api_key)

    def __repr__(self) -> str:
        # Logged configuration must not show the upstream key, or a password in the URL.
        return repr_without_secrets(self)


class OpenAIUpstreamConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An OpenAI-compatible upstream (``POST {base_url}/chat/completions``), reached through
    format translation.

    ``base_url`` includes the API version path (``https://api.openai.com/v1``). ``api_key`` is
    sent as ``Authorization: Bearer``; the client's own credentials never are, so ``None`` sends
    none (a local server). ``extra_headers`` are added to every upstream request. ``quirks``
    describes what the upstream accepts; ``models`` (bare ids) is what ``GET /v1/models`` lists
    for it, as ``<name>/<id>``. ``ping_interval`` is the longest the client hears nothing in a
    stream before the gateway sends a ``ping`` event, however busy the upstream is with chunks
    that translate to nothing; ``read_timeout`` is the longest it waits between two chunks.
    A ``base_url`` with no host or a bad port is refused as in :class:`UpstreamConfig`.
    """

    base_url: _HttpUrl
    api_key: str | None = None
    extra_headers: dict[str, str] = msgspec.field(default_factory=dict)
    connect_timeout: _PositiveFloat = 10.0
    read_timeout: _PositiveFloat = 600.0
    write_timeout: _PositiveFloat = 60.0
    pool_timeout: _PositiveFloat = 10.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 256
    quirks: OpenAIQuirks = msgspec.field(default_factory=OpenAIQuirks)
    models: tuple[str, ...] = ()
    ping_interval: _PositiveFloat = 10.0

    def __post_init__(self) -> None:
        _check_base_url(self.base_url)
        _check_api_key(self.api_key)
        _check_header_values("extra_headers", self.extra_headers)

    def __repr__(self) -> str:
        # Logged configuration must not show the upstream key, or one in extra_headers.
        return repr_without_secrets(self)


class MockConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The built-in mock provider: ``latency_ms`` before the first byte, then
    ``tokens_per_second`` output pacing (0 streams as fast as possible)."""

    latency_ms: _NonNegativeFloat = 0.0
    tokens_per_second: _NonNegativeFloat = 0.0


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A model the built-in mock provider lists on ``GET /v1/models`` (an Anthropic upstream
    answers that endpoint itself)."""

    id: str
    display_name: str | None = None
    created_at: str = "2025-01-01T00:00:00Z"

    def __post_init__(self) -> None:
        # SDKs parse it as a datetime: "yesterday" would break their model listing.
        if not _RFC3339.fullmatch(self.created_at):
            raise ValueError(f"created_at must be an RFC 3339 time, got {self.created_at!r}")


DEFAULT_MODELS: tuple[ModelConfig, ...] = (
    ModelConfig(id="claude-opus-5-5", display_name="Claude Opus 5.5"),
    ModelConfig(id="claude-sonnet-4-6", display_name="Claude Sonnet 4.6"),
    ModelConfig(id="claude-haiku-4-5", display_name="Claude Haiku 4.5"),
)


class CompressionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The built-in compression of tool output (``messages_mw.compression``).

    Nothing is compressed until something picks a bundle for a request, in this order: the
    request's compression header (when ``from_header``), the API key's ``compression`` policy,
    the client's user agent (when ``detect_user_agent``), then ``default_bundle``. A bundle is
    one of ``claude-code``, ``opencode``, ``cursor``, ``codex``, ``generic`` (Edgee's
    ``claude`` too); ``off`` disables compression for that request. ``align_cache`` adds
    prompt-cache breakpoints on large tools and system prompts of requests that set none.
    Bodies over ``inline_max_bytes`` are compressed in a worker thread, off the event loop.
    ``memo_bytes`` bounds the memory that remembers compressed tool output between requests, so
    that the history an agent resends is not compressed again (0 disables it).
    """

    from_header: bool = True
    detect_user_agent: bool = False
    default_bundle: str | None = None
    align_cache: bool = False
    inline_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1024 * 1024
    memo_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * 1024 * 1024


# What Prometheus accepts as a metric name prefix.
_PrometheusName = Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")]


class TelemetryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Telemetry the gateway sets up itself, for a config file (in code, a host can also
    pass :class:`~messages_mw.metrics.PrometheusSink` or
    :class:`~messages_mw.telemetry.OpenTelemetrySink` as usage sinks).

    ``prometheus`` counts requests, tokens and cost and times requests (the ``prometheus``
    extra), served without auth at ``metrics_path``, relative to where the gateway is
    mounted; metric names start with ``prometheus_namespace``. With ``PROMETHEUS_MULTIPROC_DIR``
    set (``messages-mw serve --workers N`` sets it), the endpoint adds up every process's
    counts. ``opentelemetry`` records one span per request through the global tracer provider
    (the ``otel`` extra; run under ``opentelemetry-instrument`` to export them).

    Raises :class:`ValueError` (a ``msgspec.ValidationError`` when decoding config) for a
    ``metrics_path`` that does not start with ``/`` or lies on the gateway's own routes
    (``/v1/...``, ``/api/hello``).
    """

    prometheus: bool = False
    metrics_path: str = "/metrics"
    prometheus_namespace: _PrometheusName = "messages_mw"
    opentelemetry: bool = False

    def __post_init__(self) -> None:
        path = self.metrics_path
        if not path.startswith("/"):
            raise ValueError(f"metrics_path must start with '/', got {path!r}")
        # As served: with or without a trailing slash.
        served = path.rstrip("/")
        if served.startswith("/v1/") or served in ("/v1", "/api/hello"):
            raise ValueError(f"metrics_path {path!r} is one of the gateway's own routes")


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the gateway needs, fixed at construction.

    ``provider`` picks the default upstream: ``anthropic`` forwards to ``upstream``; ``mock``
    answers locally (demo, tests, benchmarks); either is addressed as ``<provider>/<model>``.
    ``upstreams`` names further Anthropic-compatible upstreams for fallback chains, and
    ``openai_upstreams`` OpenAI-compatible ones; the names of all providers must differ.
    ``aliases`` maps a requested model name to a target name (``"fast"`` to
    ``"openai/gpt-4o-mini"``, or a Claude Code model name to a local model) before routing.
    ``max_body_bytes`` caps request bodies, after gzip decoding too (Anthropic's own limit is
    32 MB). ``pricing`` (USD per million tokens per model, merged over the built-in table: an
    entry replaces the built-in one of its id) prices usage events, and ``cost_in_response``
    adds ``usage.cost`` to JSON responses.
    ``usage_log`` writes each usage event as a JSON line to the ``messages_mw.usage`` logger;
    ``usage_file`` appends them to a file. ``extra_headers_allowed`` lists the headers a
    request body's ``extra_headers`` may set. ``cors_origins`` lets pages from those origins
    (``"*"``: any) call the gateway from a browser, as the SDKs' browser mode does with
    Anthropic; off by default, since a gateway holding its own upstream key would lend it to
    any page a user on its network opens. ``client_write_timeout``: a stream whose client
    reads nothing for that long is dropped, freeing its upstream connection (``0``: never).
    ``compression`` configures the built-in
    compression of tool output (off unless a header, key or default picks a bundle).
    ``telemetry`` turns on Prometheus metrics and OpenTelemetry spans.
    """

    provider: Literal["anthropic", "mock"] = "anthropic"
    upstream: UpstreamConfig = msgspec.field(default_factory=UpstreamConfig)
    upstreams: dict[str, UpstreamConfig] = msgspec.field(default_factory=dict)
    openai_upstreams: dict[str, OpenAIUpstreamConfig] = msgspec.field(default_factory=dict)
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    mock: MockConfig = msgspec.field(default_factory=MockConfig)
    models: tuple[ModelConfig, ...] = DEFAULT_MODELS
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 32 * 1024 * 1024
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    headers: HeaderNames = msgspec.field(default_factory=HeaderNames)
    tags: TagPolicy = msgspec.field(default_factory=TagPolicy)
    fallback: FallbackConfig = msgspec.field(default_factory=FallbackConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    pricing: dict[str, ModelPrice] | None = None
    cost_in_response: bool = False
    usage_log: bool = True
    usage_file: str | None = None
    extra_headers_allowed: tuple[str, ...] = ("anthropic-beta",)
    cors_origins: tuple[str, ...] = ()
    client_write_timeout: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    compression: CompressionConfig = msgspec.field(default_factory=CompressionConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)

    def __post_init__(self) -> None:
        for index, key in enumerate(self.auth.keys):
            check_configured_tags(key.tags, f"auth.keys.{index}.tags", self.tags)
        key_header = self.auth.header
        if key_header is not None:
            names = msgspec.structs.asdict(self.headers.resolved())
            for field, name in names.items():
                if name == key_header.lower():
                    # Read for tags or a session id, the gateway key would reach usage events.
                    raise ValueError(f"headers.{field}: '{name}' is auth.header, which holds keys")


# The tables whose entries the operator names; msgspec locates an error in one as [...].
_NAMED_ENTRIES: dict[str, type] = {
    "upstreams": UpstreamConfig,
    "openai_upstreams": OpenAIUpstreamConfig,
    "pricing": ModelPrice,
}
_UNNAMED_ENTRY = re.compile(r"`\$\.(upstreams|openai_upstreams|pricing)\[\.\.\.\]")


def _with_entry_named(message: str, raw: bytes) -> str:
    """``message`` with the ``[...]`` msgspec puts for an entry of a named table (which of
    several upstreams has the bad port?) replaced by the entry's name, found by checking
    each entry of that table on its own."""
    found = _UNNAMED_ENTRY.search(message)
    if found is None:
        return message
    table = found.group(1)
    try:
        entries = msgspec.toml.decode(raw).get(table)
    except (msgspec.DecodeError, AttributeError):
        return message
    for name, entry in entries.items() if isinstance(entries, dict) else ():
        try:
            msgspec.convert(entry, _NAMED_ENTRIES[table])
        except (msgspec.ValidationError, ValueError):
            located = f"$.{table}[{msgspec.json.encode(name).decode()}]"
            return message.replace(f"$.{table}[...]", located, 1)
    return message


def load_config(path: str | Path) -> GatewayConfig:
    """Read a TOML file into a :class:`GatewayConfig`.

    Raises :class:`ConfigError` naming the file and the offending key, or the file alone when
    it cannot be read or is not UTF-8.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    # TOML must be UTF-8: a file saved as Latin-1 raises UnicodeDecodeError, no DecodeError.
    try:
        return msgspec.toml.decode(raw, type=GatewayConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_with_entry_named(str(exc), raw)}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except RecursionError:
        # The TOML parser recurses per level of nesting; no gateway setting nests deeply.
        raise ConfigError(f"{path}: tables or arrays are nested too deeply") from None
