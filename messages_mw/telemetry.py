"""OpenTelemetry spans from usage events (the ``otel`` extra).

One CLIENT span per finished request, named ``{operation} {model}`` (``chat`` for messages)
and timed from the event, with the OpenTelemetry GenAI semantic-convention attributes plus
``messages_mw.*`` ones.
"""

from __future__ import annotations

from .context import UsageEvent, operation_of
from .errors import REPORTED_ERROR_TYPES

try:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from opentelemetry.util.types import AttributeValue
except ImportError as exc:  # pragma: no cover - the extra is installed in the test env
    raise ImportError(
        "messages_mw.telemetry needs opentelemetry-api: pip install 'messages-mw[otel]'"
    ) from exc

__all__ = ["OpenTelemetrySink"]


_MAX_MODEL_IN_NAME = 100
_PROPAGATOR = TraceContextTextMapPropagator()


class OpenTelemetrySink:
    """A usage sink that records each finished request as a span.

    The span ends at the event's timestamp and starts ``latency`` earlier. Attributes follow
    the GenAI conventions: ``gen_ai.operation.name`` ("chat", or "count_tokens" and "models" for
    those routes), ``gen_ai.provider.name`` and the
    older ``gen_ai.system`` (the serving upstream's kind, such as "anthropic" or "openai";
    "anthropic" when none served), ``gen_ai.request.model``, ``gen_ai.response.model``,
    and ``gen_ai.usage.*``, where ``input_tokens`` includes the cache reads and writes, as the
    conventions ask (Anthropic's own ``input_tokens`` excludes them). The span status is ERROR
    when the HTTP status is 400 or more, the event has an ``error_type`` or the client left
    before its answer.

    ``tracer_provider`` defaults to the global one (set by ``trace.set_tracer_provider``, even
    after this sink is built). The span's parent is the event's ``traceparent``: the span that
    was active where the gateway ran the request (a host app's server span, from its
    OpenTelemetry middleware; see :meth:`current_trace`), or else the caller's, from a
    W3C ``traceparent`` header; with its ``tracestate``, when there is one. With neither,
    the span starts a trace of its own: the dispatcher runs sinks outside the request's
    context.
    """

    # Not ``nonblocking``: ending a span runs whatever span processors the host installed,
    # and a SimpleSpanProcessor exports right there, as slowly as its collector answers. So
    # spans are made on the dispatcher's worker thread, never on the event loop.

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("messages_mw", tracer_provider=tracer_provider)

    def current_trace(self) -> tuple[str, str | None] | None:
        """The W3C ``traceparent`` and ``tracestate`` (``None`` when empty) of the span active
        in the calling context, or ``None`` when no span is.

        The gateway asks in the request's own task as it builds the request's usage event, so
        that the span made later, off the request path, becomes a child of the host's.
        """
        span = trace.get_current_span().get_span_context()
        if not span.is_valid:
            return None
        traceparent = f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"
        return traceparent, span.trace_state.to_header() or None

    def __call__(self, event: UsageEvent) -> None:
        end = int(event.timestamp * 1e9)
        latency_ns = 0 if event.latency_ms is None else int(event.latency_ms * 1e6)
        # Clients choose the model name: a bounded one keeps span names groupable.
        model = (event.requested_model or event.served_model or "")[:_MAX_MODEL_IN_NAME]
        operation = operation_of(event.path)
        if operation == "other":
            # A preconnect or an unknown route: no model was called, so no GenAI span.
            return
        # The host's span or the caller's (see the class docstring): the request's span then
        # sits in that trace.
        parent = None
        if event.traceparent:
            carrier = {"traceparent": event.traceparent}
            if event.tracestate:
                carrier["tracestate"] = event.tracestate
            parent = _PROPAGATOR.extract(carrier)
        span = self._tracer.start_span(
            f"{operation} {model}" if model else operation,
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=_attributes(event),
            start_time=end - latency_ns,
        )
        error = _error_type(event)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)


def _error_type(event: UsageEvent) -> str | None:
    """Why the request failed, or ``None``: a client that left before its answer counts as a
    failure too, though no status was ever sent."""
    if event.error_type is not None:
        # Bounded, as semantic conventions ask of error.type: an upstream may make up any.
        return event.error_type if event.error_type in REPORTED_ERROR_TYPES else "_OTHER"
    if event.status >= 400:
        return str(event.status)
    return "client_disconnected" if event.client_disconnected else None


def _billed_beside(event: UsageEvent) -> dict[str, AttributeValue | None]:
    """What attempts other than the answer reported (streams that failed over after their
    message_start), which their upstreams bill too: the gen_ai.usage attributes are the
    answer's alone."""
    beside = [(attempt.usage, attempt.cost) for attempt in event.attempts if attempt.usage]
    if not beside:
        return {}
    costs = [cost for _, cost in beside if cost is not None]
    return {
        "messages_mw.attempts.input_tokens": sum(
            usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
            for usage, _ in beside
        ),
        "messages_mw.attempts.output_tokens": sum(usage.output_tokens for usage, _ in beside),
        "messages_mw.attempts.cost_usd": sum(costs) if costs else None,
    }


def _attributes(event: UsageEvent) -> dict[str, AttributeValue]:
    values: dict[str, AttributeValue | None] = {
        "gen_ai.operation.name": operation_of(event.path),
        "gen_ai.provider.name": event.provider_type or "anthropic",
        "gen_ai.system": event.provider_type or "anthropic",
        "gen_ai.request.model": event.requested_model,
        # The model that answered, as it named itself; else the one the gateway asked.
        "gen_ai.response.model": event.response_model or event.served_model,
        "gen_ai.response.id": event.response_id,
        "gen_ai.response.finish_reasons": (event.stop_reason,) if event.stop_reason else None,
        "gen_ai.usage.input_tokens": (
            event.input_tokens + event.cache_read_input_tokens + event.cache_creation_input_tokens
        ),
        "gen_ai.usage.output_tokens": event.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": event.cache_read_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": event.cache_creation_input_tokens,
        "http.request.method": event.method,
        # 0 means no response was sent (the client left first): there is no status code.
        "http.response.status_code": event.status or None,
        "error.type": _error_type(event),
        "messages_mw.request_id": event.request_id,
        "messages_mw.upstream_request_id": event.upstream_request_id,
        "messages_mw.key_id": event.key_id,
        "messages_mw.tags": tuple(event.tags) if event.tags else None,
        "messages_mw.session_id": event.session_id,
        "gen_ai.conversation.id": event.session_id,
        "messages_mw.provider": event.provider,
        "messages_mw.fallback_used": event.fallback_used,
        "messages_mw.stream": event.stream,
        "messages_mw.client_disconnected": event.client_disconnected,
        # gen_ai.usage.output_tokens is the gateway's estimate (a stream cut short).
        "messages_mw.output_tokens_estimated": event.output_tokens_estimated or None,
        "messages_mw.cost_usd": event.cost,
        **_billed_beside(event),
        "messages_mw.time_to_first_byte_ms": event.time_to_first_byte_ms,
    }
    return {name: value for name, value in values.items() if value is not None}
