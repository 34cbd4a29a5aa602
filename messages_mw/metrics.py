"""Prometheus metrics from usage events (the ``prometheus`` extra).

Use :class:`PrometheusSink` as a usage sink and mount its :meth:`~PrometheusSink.metrics_app`::

    sink = PrometheusSink()
    gateway = Gateway(config, usage_sinks=[sink])
    app.mount("/metrics", sink.metrics_app())
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .context import UsageEvent, operation_of
from .errors import REPORTED_ERROR_TYPES
from .streaming import TokenUsage
from .types import ASGIApp, Receive, Scope, Send

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app, multiprocess
except ImportError as exc:  # pragma: no cover - the extra is installed in the test env
    raise ImportError(
        "messages_mw.metrics needs prometheus-client: pip install 'messages-mw[prometheus]'"
    ) from exc

__all__ = ["PrometheusSink"]

# LLM requests run from sub-second to many minutes; first bytes arrive within seconds.
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# A non-streaming answer's first byte is its last: up to the latency's longest.
_FIRST_BYTE_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    4.0,
    8.0,
    16.0,
    32.0,
    64.0,
    120.0,
    300.0,
    600.0,
)
_MAX_MODEL_LABEL = 100
_OTHER_MODELS = "other"


class PrometheusSink:
    """A usage sink that counts requests, tokens and cost, and times requests.

    Metrics (each prefixed ``{namespace}_``):
    ``requests_total{operation,status,error_type,provider,model,fallback}``,
    ``tokens_total{direction,model}`` (direction: input, output, cache_read, cache_write),
    ``cost_usd_total{model}``, and the histograms
    ``request_latency_seconds{operation,model,stream}`` and
    ``time_to_first_byte_seconds{operation,model,stream}``. ``operation`` is ``chat``,
    ``count_tokens``, ``models`` or ``other`` (``/api/hello``, unknown routes); ``error_type``
    an Anthropic error type, ``client_disconnected``, ``cancelled``, ``other`` or ``""``, so
    that a stream that failed after its 200 is not counted a success. ``model`` is the model
    that served the request. Tags, keys and sessions are never labels: their values are
    unbounded. ``known_models`` (the gateway passes the models its configuration names:
    prices, listed models, aliases, chains, router candidates) always get their own label
    value. Other names come from clients, so only the first ``max_models`` distinct ones of up
    to 100 characters that a request succeeded with get theirs; the rest count as ``other``.

    ``registry`` defaults to a new private :class:`CollectorRegistry`, served by
    :meth:`metrics_app`; pass ``prometheus_client.REGISTRY`` to join the process-wide one.
    Raises ``ValueError`` if these metric names are already registered there.
    """

    nonblocking = True  # memory work or one buffered line: safe on the event loop

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "messages_mw",
        max_models: int = 100,
        known_models: Iterable[str] = (),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._max_models = max_models
        # Labelled from the start, outside the max_models earned by clients' names.
        self._known_models = frozenset(m for m in known_models if len(m) <= _MAX_MODEL_LABEL)
        self._models: set[str] = set()
        registry = self.registry
        self._requests = Counter(
            "requests",
            "Finished requests.",
            ["operation", "status", "error_type", "provider", "model", "fallback"],
            namespace=namespace,
            registry=registry,
        )
        self._tokens = Counter(
            "tokens",
            "Tokens used.",
            ["direction", "model"],
            namespace=namespace,
            registry=registry,
        )
        self._cost = Counter(
            "cost_usd",
            "Estimated cost in USD at list prices.",
            ["model"],
            namespace=namespace,
            registry=registry,
        )
        self._latency = Histogram(
            "request_latency_seconds",
            "Time from request arrival to the last response byte.",
            ["operation", "model", "stream"],
            namespace=namespace,
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        )
        self._first_byte = Histogram(
            "time_to_first_byte_seconds",
            "Time from request arrival to the first response byte.",
            ["operation", "model", "stream"],
            namespace=namespace,
            registry=registry,
            buckets=_FIRST_BYTE_BUCKETS,
        )

    def __call__(self, event: UsageEvent) -> None:
        # Status 0: the client left before any answer, which proves nothing about the name.
        model = self._model_label(
            event.served_model or event.requested_model or "unknown", 200 <= event.status < 400
        )
        operation = operation_of(event.path)
        self._requests.labels(
            operation,
            str(event.status),
            _error_label(event),
            event.provider or "unknown",
            model,
            _flag(event.fallback_used),
        ).inc()
        self._count(model, event, event.cost)
        for attempt in event.attempts:
            # Billed beside the answer (a stream that failed over after its message_start):
            # the upstream counts it all the same, under the model that attempt asked for,
            # a real one (its upstream reported usage for it), so it may earn a label.
            if attempt.usage is not None:
                self._count(self._model_label(attempt.model, True), attempt.usage, attempt.cost)
        stream = _flag(event.stream)
        if event.latency_ms is not None:
            self._latency.labels(operation, model, stream).observe(event.latency_ms / 1000)
        if event.time_to_first_byte_ms is not None:
            ttfb = event.time_to_first_byte_ms / 1000
            self._first_byte.labels(operation, model, stream).observe(ttfb)

    def _count(self, model: str, usage: UsageEvent | TokenUsage, cost: float | None) -> None:
        for direction, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_write", usage.cache_creation_input_tokens),
        ):
            if count:
                self._tokens.labels(direction, model).inc(count)
        if cost:
            self._cost.labels(model).inc(cost)

    def _model_label(self, model: str, answered: bool) -> str:
        if model in self._models or model in self._known_models:
            return model
        # Any caller may name any model, even one refused before it went upstream: a name
        # earns its own label once a request for it succeeds, so junk can neither take the
        # slots nor (being huge) swell every scrape.
        if not answered or len(model) > _MAX_MODEL_LABEL or len(self._models) >= self._max_models:
            return _OTHER_MODELS
        self._models.add(model)
        return model

    def metrics_app(self) -> ASGIApp:
        """An ASGI app serving this sink's registry in the Prometheus text format (or
        OpenMetrics, when the scraper asks for it) on any path; mount it where you like.

        In prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before it
        was imported), every process's counts are kept in that directory, and the app serves
        their sum instead: with several workers, a scrape reaches only one of them."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        serve_registry = make_asgi_app(registry=registry)

        async def metrics_app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                await serve_registry(scope, receive, send)
            elif scope["type"] == "lifespan":
                await _answer_lifespan(receive, send)
            elif scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})

        return metrics_app


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _error_label(event: UsageEvent) -> str:
    """What went wrong, as a bounded label: an Anthropic error type, ``client_disconnected``,
    ``other`` for a type an upstream made up, ``""`` for none. A stream that failed after its
    200, or that its client left, is told from a success this way."""
    error = event.error_type
    if error is None:
        return "client_disconnected" if event.client_disconnected else ""
    return error if error in REPORTED_ERROR_TYPES else "other"


async def _answer_lifespan(receive: Receive, send: Send) -> None:
    """Served alone, the app has nothing to start or stop; mounted, it never sees lifespan."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
