"""Prometheus and OpenTelemetry sinks, fed usage events directly and through a dispatcher."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount

from messages_mw import Gateway, GatewayConfig
from messages_mw.context import Attempt, UsageEvent
from messages_mw.metrics import PrometheusSink
from messages_mw.streaming import TokenUsage
from messages_mw.telemetry import OpenTelemetrySink
from messages_mw.types import Message
from messages_mw.usage import UsageDispatcher


def make_event(**fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "request_id": "req_1",
        "timestamp": 1_750_000_000.0,
        "method": "POST",
        "path": "/v1/messages",
        "status": 200,
        "key_id": "team-a",
        "tags": ["team:a", "feature:chat"],
        "session_id": "session-1",
        "requested_model": "claude-sonnet-4-5",
        "served_model": "claude-sonnet-4-5",
        "provider": "anthropic",
        "stream": True,
        "input_tokens": 100,
        "output_tokens": 50,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 300,
        "cost": 0.002,
        "latency_ms": 1500.0,
        "time_to_first_byte_ms": 400.0,
        "upstream_request_id": "req_upstream",
    }
    values.update(fields)
    return UsageEvent(**values)


# The request counter's labels, all but model, for a chat that succeeded directly.
OK_CHAT_LABELS = {
    "operation": "chat",
    "error_type": "",
    "status": "200",
    "provider": "anthropic",
    "fallback": "false",
}


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_prometheus_counts_requests_tokens_cost_and_latency() -> None:
    sink = PrometheusSink()
    sink(make_event())
    sink(make_event(request_id="req_2", status=429, cost=None, latency_ms=None, stream=False))
    sink(make_event(served_model="claude-haiku-4-5", fallback_used=True, provider="backup"))
    registry = sink.registry
    sonnet = "claude-sonnet-4-5"
    requests = "messages_mw_requests_total"
    labels = {
        "operation": "chat",
        "error_type": "",
        "provider": "anthropic",
        "model": sonnet,
        "fallback": "false",
    }
    assert _value(registry, requests, status="200", **labels) == 1
    assert _value(registry, requests, status="429", **labels) == 1
    assert (
        _value(
            registry,
            requests,
            operation="chat",
            error_type="",
            status="200",
            provider="backup",
            model="claude-haiku-4-5",
            fallback="true",
        )
        == 1
    )
    tokens = "messages_mw_tokens_total"
    assert _value(registry, tokens, direction="input", model=sonnet) == 200
    assert _value(registry, tokens, direction="output", model=sonnet) == 100
    assert _value(registry, tokens, direction="cache_read", model=sonnet) == 600
    assert _value(registry, tokens, direction="cache_write", model=sonnet) == 40
    assert _value(registry, "messages_mw_cost_usd_total", model=sonnet) == 0.002
    latency = "messages_mw_request_latency_seconds"
    chat = {"operation": "chat", "model": sonnet}
    assert _value(registry, f"{latency}_count", stream="true", **chat) == 1
    assert _value(registry, f"{latency}_sum", stream="true", **chat) == 1.5
    assert _value(registry, f"{latency}_count", stream="false", **chat) is None
    first_byte = "messages_mw_time_to_first_byte_seconds"
    assert _value(registry, f"{first_byte}_sum", stream="false", **chat) == 0.4


def _failed_over_event() -> UsageEvent:
    """A chat the backup answered after the primary's stream failed past its message_start."""
    failed = Attempt(
        "anthropic/claude-opus-4-1",
        200,
        "overloaded_error",
        0.1,
        TokenUsage(input_tokens=1000, output_tokens=1, cache_read_input_tokens=500),
        0.016,
    )
    served = Attempt("backup/claude-sonnet-4-5", 200, None, 0.5)
    return make_event(fallback_used=True, provider="backup", attempts=[failed, served])


def test_prometheus_counts_usage_billed_beside_the_answer_under_its_model() -> None:
    sink = PrometheusSink()
    sink(make_event())  # claude-opus-4-1 earns a label through a request it answered
    sink(make_event(request_id="req_2", served_model="claude-opus-4-1", cost=None))
    sink(_failed_over_event())
    registry = sink.registry
    tokens = "messages_mw_tokens_total"
    opus, sonnet = "claude-opus-4-1", "claude-sonnet-4-5"
    assert _value(registry, tokens, direction="input", model=opus) == 100 + 1000
    assert _value(registry, tokens, direction="cache_read", model=opus) == 300 + 500
    assert _value(registry, tokens, direction="input", model=sonnet) == 200
    assert _value(registry, "messages_mw_cost_usd_total", model=opus) == 0.016
    assert _value(registry, "messages_mw_cost_usd_total", model=sonnet) == 0.004


def test_prometheus_tells_operations_and_failures_apart() -> None:
    # count_tokens and preconnects are not chats, and a stream that failed after its 200, or
    # that its client left, is not a success.
    sink = PrometheusSink()
    sink(make_event(path="/v1/messages/count_tokens"))
    sink(make_event(path="/api/hello", served_model=None, requested_model=None))
    sink(make_event(error_type="overloaded_error"))
    sink(make_event(client_disconnected=True))
    sink(make_event(error_type="made_up_by_an_upstream"))
    registry = sink.registry
    requests = "messages_mw_requests_total"
    sonnet = {"status": "200", "provider": "anthropic", "fallback": "false"}
    counted = _value(
        registry,
        requests,
        operation="count_tokens",
        error_type="",
        model="claude-sonnet-4-5",
        **sonnet,
    )
    assert counted == 1
    for error in ("overloaded_error", "client_disconnected", "other"):
        chat = _value(
            registry,
            requests,
            operation="chat",
            error_type=error,
            model="claude-sonnet-4-5",
            **sonnet,
        )
        assert chat == 1
    latency = "messages_mw_request_latency_seconds_count"
    assert _value(registry, latency, operation="other", model="unknown", stream="true") == 1


def test_prometheus_labels_never_carry_tags_keys_or_sessions() -> None:
    sink = PrometheusSink()
    sink(make_event())
    label_values = {
        value
        for metric in sink.registry.collect()
        for sample in metric.samples
        for value in sample.labels.values()
    }
    assert not label_values & {"team:a", "feature:chat", "team-a", "session-1", "req_1"}


def test_prometheus_caps_the_number_of_model_labels() -> None:
    sink = PrometheusSink(max_models=2, namespace="gw")
    for model in ("a", "b", "c", "d", "a"):
        sink(make_event(served_model=model, requested_model=model))
    registry = sink.registry
    labels = OK_CHAT_LABELS
    assert _value(registry, "gw_requests_total", model="a", **labels) == 2
    assert _value(registry, "gw_requests_total", model="b", **labels) == 1
    assert _value(registry, "gw_requests_total", model="other", **labels) == 2


def test_prometheus_gives_a_label_only_to_models_a_request_succeeded_with() -> None:
    # Refused requests (401s, 400s, upstream 404s) may name anything: junk must neither take
    # the label slots nor, being megabytes long, swell every scrape.
    sink = PrometheusSink(max_models=2, namespace="gw")
    for status in (401, 400, 404):
        sink(make_event(status=status, served_model=None, requested_model=f"junk-{status}"))
    # Status 0: the client left before any answer came (a slow 404 for a made-up model).
    sink(make_event(status=0, served_model=None, requested_model="junk-left", cost=None))
    sink(make_event(served_model="x" * 101, requested_model="x" * 101))
    sink(make_event(served_model="claude-sonnet-4-6", requested_model="claude-sonnet-4-6"))
    sink(make_event(status=529, served_model="claude-sonnet-4-6"))
    models = {
        sample.labels["model"]
        for metric in sink.registry.collect()
        for sample in metric.samples
        if "model" in sample.labels
    }
    assert models == {"other", "claude-sonnet-4-6"}
    labels = {"operation": "chat", "error_type": "", "provider": "anthropic", "fallback": "false"}
    registry = sink.registry
    assert _value(registry, "gw_requests_total", model="claude-sonnet-4-6", status="529", **labels)


def test_prometheus_metrics_app_serves_the_registry() -> None:
    sink = PrometheusSink()
    sink(make_event())

    async def scrape() -> tuple[httpx.Response, httpx.Response]:
        host = Starlette(routes=[Mount("/metrics", app=sink.metrics_app())])
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            text = await client.get("/metrics/")
            open_metrics = await client.get(
                "/metrics/", headers={"accept": "application/openmetrics-text"}
            )
        return text, open_metrics

    text, open_metrics = asyncio.run(scrape())
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert (
        'messages_mw_requests_total{error_type="",fallback="false",model="claude-sonnet-4-5",'
        'operation="chat",provider="anthropic",status="200"} 1.0'
    ) in text.text
    assert "messages_mw_cost_usd_total" in text.text
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")


def test_prometheus_metrics_app_answers_lifespan_and_refuses_websockets() -> None:
    app = PrometheusSink().metrics_app()
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    async def main() -> None:
        await app({"type": "lifespan"}, receive, send)
        await app({"type": "websocket"}, receive, send)

    asyncio.run(main())
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]


def test_prometheus_sink_behind_a_dispatcher() -> None:
    sink = PrometheusSink()
    dispatcher = UsageDispatcher([sink])

    async def main() -> None:
        for number in range(5):
            dispatcher.emit(make_event(request_id=f"req_{number}"))
        await dispatcher.aclose()

    asyncio.run(main())
    labels = OK_CHAT_LABELS
    model = "claude-sonnet-4-5"
    assert _value(sink.registry, "messages_mw_requests_total", model=model, **labels) == 5


def _tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_opentelemetry_span_carries_genai_attributes_and_event_times() -> None:
    provider, exporter = _tracing()
    OpenTelemetrySink(provider)(make_event(fallback_used=True))
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat claude-sonnet-4-5"
    assert span.kind is SpanKind.CLIENT
    assert span.end_time == 1_750_000_000 * 10**9
    assert span.start_time == span.end_time - 1_500 * 10**6
    assert span.status.status_code is StatusCode.UNSET
    assert span.parent is None
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-5",
        "gen_ai.response.model": "claude-sonnet-4-5",
        "gen_ai.usage.input_tokens": 420,
        "gen_ai.usage.output_tokens": 50,
        "gen_ai.usage.cache_read.input_tokens": 300,
        "gen_ai.usage.cache_creation.input_tokens": 20,
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "messages_mw.request_id": "req_1",
        "messages_mw.upstream_request_id": "req_upstream",
        "messages_mw.key_id": "team-a",
        "messages_mw.tags": ("team:a", "feature:chat"),
        "messages_mw.session_id": "session-1",
        "gen_ai.conversation.id": "session-1",
        "messages_mw.provider": "anthropic",
        "messages_mw.fallback_used": True,
        "messages_mw.stream": True,
        "messages_mw.client_disconnected": False,
        "messages_mw.cost_usd": 0.002,
        "messages_mw.time_to_first_byte_ms": 400.0,
    }


def test_opentelemetry_span_carries_what_was_billed_beside_the_answer() -> None:
    provider, exporter = _tracing()
    OpenTelemetrySink(provider)(_failed_over_event())
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == 420  # the answer's alone
    assert attributes["messages_mw.attempts.input_tokens"] == 1500
    assert attributes["messages_mw.attempts.output_tokens"] == 1
    assert attributes["messages_mw.attempts.cost_usd"] == 0.016


def test_opentelemetry_span_names_the_answer_as_the_upstream_gave_it() -> None:
    provider, exporter = _tracing()
    sink = OpenTelemetrySink(provider)
    sink(make_event(response_id="msg_1", response_model="claude-sonnet-4-5-20250929"))
    sink(make_event(stop_reason="tool_use"))
    named, stopped = exporter.get_finished_spans()
    assert named.attributes is not None and stopped.attributes is not None
    assert named.attributes["gen_ai.response.id"] == "msg_1"
    assert named.attributes["gen_ai.response.model"] == "claude-sonnet-4-5-20250929"
    assert stopped.attributes["gen_ai.response.finish_reasons"] == ("tool_use",)
    assert stopped.attributes["gen_ai.response.model"] == "claude-sonnet-4-5"  # as asked


def test_opentelemetry_marks_failures_as_errors() -> None:
    provider, exporter = _tracing()
    sink = OpenTelemetrySink(provider)
    sink(make_event(status=529, error_type="overloaded_error", cost=None))
    sink(make_event(status=502, tags=[], session_id=None))
    sink(make_event(status=200, error_type="client_disconnected", client_disconnected=True))
    overloaded, bad_gateway, disconnected = exporter.get_finished_spans()
    assert overloaded.status.status_code is StatusCode.ERROR
    assert overloaded.status.description == "overloaded_error"
    assert overloaded.attributes is not None
    assert overloaded.attributes["error.type"] == "overloaded_error"
    assert "messages_mw.cost_usd" not in overloaded.attributes
    assert bad_gateway.status.status_code is StatusCode.ERROR
    assert bad_gateway.attributes is not None
    assert bad_gateway.attributes["error.type"] == "502"
    assert "messages_mw.tags" not in bad_gateway.attributes
    assert "messages_mw.session_id" not in bad_gateway.attributes
    assert disconnected.status.status_code is StatusCode.ERROR


def test_opentelemetry_names_the_kind_of_upstream_that_served() -> None:
    provider, exporter = _tracing()
    OpenTelemetrySink(provider)(make_event(provider="backup", provider_type="openai"))
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["gen_ai.provider.name"] == "openai"
    assert span.attributes["gen_ai.system"] == "openai"
    assert span.attributes["messages_mw.provider"] == "backup"


def test_opentelemetry_counts_a_client_that_left_before_its_answer_as_an_error() -> None:
    provider, exporter = _tracing()
    OpenTelemetrySink(provider)(make_event(status=0, client_disconnected=True, cost=None))
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "client_disconnected"
    # No response was sent, so there is no status code to report (0 is not one).
    assert "http.response.status_code" not in span.attributes


def test_an_error_type_an_upstream_made_up_is_other_on_the_span() -> None:
    # error.type took the upstream's raw string, unbounded for span-metrics pipelines,
    # where Prometheus already counted it as "other".
    provider, exporter = _tracing()
    sink = OpenTelemetrySink(provider)
    sink(make_event(status=500, error_type="my_custom_error_weird1"))
    sink(make_event(status=529, error_type="overloaded_error"))
    spans = exporter.get_finished_spans()
    assert [span.attributes["error.type"] for span in spans if span.attributes] == [
        "_OTHER",
        "overloaded_error",
    ]
    assert spans[0].status.description == "_OTHER"


def test_opentelemetry_marks_an_estimated_output_count() -> None:
    provider, exporter = _tracing()
    sink = OpenTelemetrySink(provider)
    sink(make_event(client_disconnected=True, output_tokens=480, output_tokens_estimated=True))
    sink(make_event())
    estimated, reported = exporter.get_finished_spans()
    assert estimated.attributes is not None and reported.attributes is not None
    assert estimated.attributes["gen_ai.usage.output_tokens"] == 480
    assert estimated.attributes["messages_mw.output_tokens_estimated"] is True
    assert "messages_mw.output_tokens_estimated" not in reported.attributes


def test_opentelemetry_span_without_model_or_latency() -> None:
    provider, exporter = _tracing()
    OpenTelemetrySink(provider)(
        make_event(requested_model=None, served_model=None, latency_ms=None)
    )
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat"
    assert span.start_time == span.end_time
    assert span.attributes is not None
    assert "gen_ai.request.model" not in span.attributes


def test_opentelemetry_names_the_operation_by_route_with_a_bounded_model() -> None:
    provider, exporter = _tracing()
    sink = OpenTelemetrySink(provider)
    sink(make_event(path="/v1/messages/count_tokens", requested_model="claude-haiku-4-5"))
    sink(make_event(path="/v1/models", requested_model=None, served_model=None))
    sink(make_event(requested_model="m" * 5000))
    # A preconnect or an unknown route called no model: no GenAI span.
    sink(make_event(path="/api/hello", method="HEAD", requested_model=None, served_model=None))
    counted, listed, long_named = exporter.get_finished_spans()
    assert counted.name == "count_tokens claude-haiku-4-5"
    assert counted.attributes is not None
    assert counted.attributes["gen_ai.operation.name"] == "count_tokens"
    assert listed.name == "models"
    assert long_named.name == "chat " + "m" * 100


def test_opentelemetry_sink_behind_a_dispatcher_starts_root_spans() -> None:
    provider, exporter = _tracing()
    tracer = provider.get_tracer("host")
    dispatcher = UsageDispatcher([OpenTelemetrySink(provider)])

    async def main() -> None:
        with tracer.start_as_current_span("host request"):
            dispatcher.emit(make_event())
        await dispatcher.aclose()

    asyncio.run(main())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["chat claude-sonnet-4-5"].parent is None


def test_opentelemetry_sink_never_runs_span_processors_on_the_event_loop() -> None:
    # A SimpleSpanProcessor exports as the span ends, as slowly as its collector answers:
    # on the event loop that would stall every request in flight.
    exporter = InMemorySpanExporter()
    exported_on: list[int] = []

    class RecordingProcessor(SimpleSpanProcessor):
        def on_end(self, span: Any) -> None:
            exported_on.append(threading.get_ident())
            super().on_end(span)

    provider = TracerProvider()
    provider.add_span_processor(RecordingProcessor(exporter))
    dispatcher = UsageDispatcher([OpenTelemetrySink(provider)])

    async def main() -> None:
        dispatcher.emit(make_event())
        await dispatcher.aclose()

    asyncio.run(main())
    assert len(exporter.get_finished_spans()) == 1
    assert exported_on and threading.get_ident() not in exported_on


def test_opentelemetry_span_joins_the_callers_trace_from_its_traceparent() -> None:
    provider, exporter = _tracing()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    sink = OpenTelemetrySink(provider)
    sink(make_event(traceparent=f"00-{trace_id}-{parent_id}-01"))
    sink(make_event())
    joined, alone = exporter.get_finished_spans()
    assert joined.context is not None and joined.parent is not None
    assert joined.context.trace_id == int(trace_id, 16)
    assert joined.parent.span_id == int(parent_id, 16) and joined.parent.is_remote
    assert alone.parent is None


CLIENT_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CHAT = json.dumps(
    {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
).encode()


def _host_with_span(gateway: Gateway, provider: TracerProvider) -> Any:
    """A host app whose OpenTelemetry middleware runs every request in a server span."""
    tracer = provider.get_tracer("host")

    async def host(scope: dict[str, Any], receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("host request", kind=SpanKind.SERVER):
            await gateway(scope, receive, send)

    return host


def _post_through(app: Any, headers: dict[str, str], *, times: int = 1) -> None:
    _post_each(app, [headers] * times)


def _post_each(app: Any, headers: list[dict[str, str]]) -> None:
    """One request per headers, in order, in one event loop (the dispatcher's)."""

    async def main() -> None:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            for each in headers:
                response = await client.post("/v1/messages", content=CHAT, headers=each)
                assert response.status_code == 200

    asyncio.run(main())


def test_the_hosts_tracestate_goes_with_its_span() -> None:
    # Vendor data and OpenTelemetry's sampling threshold ride in tracestate: the gateway's
    # span keeps the host span's, and the usage line carries it.
    provider, exporter = _tracing()
    tracer = provider.get_tracer("host")
    events: list[UsageEvent] = []
    config = GatewayConfig(provider="mock", usage_log=False)
    gateway = Gateway(config, usage_sinks=[OpenTelemetrySink(provider), events.append])
    state = TraceState([("ot", "th:8"), ("vendor", "abc")])

    async def host(scope: dict[str, Any], receive: Any, send: Any) -> None:
        remote = SpanContext(0xAB, 0xCD, True, TraceFlags(1), state)
        with (
            trace.use_span(NonRecordingSpan(remote)),
            tracer.start_as_current_span("host request", kind=SpanKind.SERVER),
        ):
            await gateway(scope, receive, send)

    _post_through(host, {})
    asyncio.run(gateway.aclose())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    chat = spans["chat claude-sonnet-4-6"]
    assert chat.context is not None and dict(chat.context.trace_state) == dict(state)
    assert [event.tracestate for event in events] == ["ot=th:8,vendor=abc"]


def test_the_clients_tracestate_is_kept_when_well_formed() -> None:
    provider, exporter = _tracing()
    events: list[UsageEvent] = []
    config = GatewayConfig(provider="mock", usage_log=False)
    gateway = Gateway(config, usage_sinks=[OpenTelemetrySink(provider), events.append])
    states = ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "Bad Key=1", "x=1\r\ny: 2")
    headers = [{"traceparent": CLIENT_TRACEPARENT, "tracestate": state} for state in states]
    # Last, a tracestate without a traceparent: nothing for it to go with.
    _post_each(gateway, [*headers, {"tracestate": "alone=1"}])
    asyncio.run(gateway.aclose())
    assert [event.tracestate for event in events] == [
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        None,
        None,
        None,
    ]
    first = exporter.get_finished_spans()[0]
    assert first.context is not None and first.context.trace_state.get("congo") == "t61rcWkgMzE"


def test_a_request_span_is_a_child_of_the_hosts_active_span() -> None:
    # Mounted in a host app with OpenTelemetry on, the gateway's span sits under the host's
    # server span, in its trace, rather than starting a trace of its own; the usage line
    # names that span too. It wins over the client's header, which the host's span follows.
    provider, exporter = _tracing()
    events: list[UsageEvent] = []
    config = GatewayConfig(provider="mock", usage_log=False)
    gateway = Gateway(config, usage_sinks=[OpenTelemetrySink(provider), events.append])
    _post_through(_host_with_span(gateway, provider), {"traceparent": CLIENT_TRACEPARENT})
    asyncio.run(gateway.aclose())

    spans = {span.name: span for span in exporter.get_finished_spans()}
    host, chat = spans["host request"], spans["chat claude-sonnet-4-6"]
    assert host.context is not None and chat.context is not None and chat.parent is not None
    assert chat.context.trace_id == host.context.trace_id
    assert chat.parent.span_id == host.context.span_id
    [event] = events
    ids = f"{host.context.trace_id:032x}-{host.context.span_id:016x}"
    assert event.traceparent == f"00-{ids}-{host.context.trace_flags:02x}"


def test_without_a_host_span_the_clients_traceparent_is_the_parent() -> None:
    provider, exporter = _tracing()
    events: list[UsageEvent] = []
    config = GatewayConfig(provider="mock", usage_log=False)
    gateway = Gateway(config, usage_sinks=[OpenTelemetrySink(provider), events.append])
    _post_through(gateway, {"traceparent": CLIENT_TRACEPARENT})
    asyncio.run(gateway.aclose())

    [chat] = exporter.get_finished_spans()
    assert chat.parent is not None and chat.parent.span_id == 0x00F067AA0BA902B7
    assert [event.traceparent for event in events] == [CLIENT_TRACEPARENT]


def test_a_failing_trace_reader_breaks_no_request(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def __call__(self, event: UsageEvent) -> None:
            events.append(event)

        def current_trace(self) -> tuple[str, str | None] | None:
            raise RuntimeError("boom")

    events: list[UsageEvent] = []
    gateway = Gateway(GatewayConfig(provider="mock", usage_log=False), usage_sinks=[Broken()])
    with caplog.at_level(logging.ERROR, logger="messages_mw.usage"):
        _post_through(gateway, {"traceparent": CLIENT_TRACEPARENT}, times=3)
    asyncio.run(gateway.aclose())
    assert [event.traceparent for event in events] == [CLIENT_TRACEPARENT] * 3
    # Once, not once per request: it is asked on every request, on the event loop.
    [logged] = [r for r in caplog.records if "reading the trace context" in r.getMessage()]
    assert "1 failures so far" in logged.getMessage()


def test_every_route_carries_the_clients_traceparent() -> None:
    # count_tokens, models and a refused body named no trace: their events read the client's
    # headers only on the messages path, past validation.
    events: list[UsageEvent] = []
    gateway = Gateway(GatewayConfig(provider="mock", usage_log=False), usage_sinks=[events.append])
    headers = {"traceparent": CLIENT_TRACEPARENT, "content-type": "application/json"}

    async def main() -> None:
        transport = httpx.ASGITransport(gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (
                await client.post("/v1/messages/count_tokens", content=CHAT, headers=headers)
            ).status_code == 200
            assert (await client.get("/v1/models", headers=headers)).status_code == 200
            assert (
                await client.post("/v1/messages", content=b"{", headers=headers)
            ).status_code == 400
        await gateway.aclose()

    asyncio.run(main())
    assert [event.traceparent for event in events] == [CLIENT_TRACEPARENT] * 3


class _SlyStr(str):
    def strip(self, *chars: Any) -> str:
        raise RuntimeError("strip")


class _SlyTuple(tuple):  # type: ignore[type-arg]
    def __len__(self) -> int:
        raise RuntimeError("len")


@pytest.mark.parametrize(
    "answer",
    [
        None,
        "00-x",
        (CLIENT_TRACEPARENT,),
        (1, 2),
        ("00-not-a-trace\r\nx-injected: 1", "a=b"),
        _SlyTuple(("a", "b")),
        (_SlyStr("x"), None),
    ],
    ids=["none", "a str", "one item", "not strs", "malformed", "sly tuple", "sly str"],
)
def test_a_sink_answering_oddly_about_the_trace_breaks_nothing(answer: object) -> None:
    class Odd:
        def __call__(self, event: UsageEvent) -> None:
            events.append(event)

        def current_trace(self) -> object:
            return answer

    events: list[UsageEvent] = []
    gateway = Gateway(GatewayConfig(provider="mock", usage_log=False), usage_sinks=[Odd()])
    _post_through(gateway, {"traceparent": CLIENT_TRACEPARENT})
    asyncio.run(gateway.aclose())
    assert [event.traceparent for event in events] == [CLIENT_TRACEPARENT]


def test_configured_models_keep_their_label_whatever_clients_sent_first() -> None:
    # The first 100 names to succeed held the labels for good: after 10,000 random names
    # (a mock or a server answering any name), the real model counted as "other".
    sink = PrometheusSink(max_models=3, known_models=["claude-sonnet-4-6", "x" * 500])
    for number in range(10):
        sink(make_event(served_model=f"junk-{number}"))
    sink(make_event(served_model="claude-sonnet-4-6"))
    requests = "messages_mw_requests_total"
    assert _value(sink.registry, requests, model="claude-sonnet-4-6", **OK_CHAT_LABELS) == 1
    assert _value(sink.registry, requests, model="other", **OK_CHAT_LABELS) == 7


def test_a_gateway_labels_the_models_its_configuration_names() -> None:
    from messages_mw.assembly import configured_models
    from messages_mw.config import ModelConfig, OpenAIUpstreamConfig
    from messages_mw.routing import FallbackConfig

    config = GatewayConfig(
        aliases={"fast": "openai/gpt-4o-mini"},
        models=(ModelConfig(id="house-model"),),
        openai_upstreams={
            "openai": OpenAIUpstreamConfig(base_url="http://o.test", models=("gpt-4.1",))
        },
        fallback=FallbackConfig(
            default_chain=("backup/claude-haiku-4-5",), chains={"a": ("openai/o3",)}
        ),
    )
    names = configured_models(config)
    for name in ("gpt-4o-mini", "fast", "house-model", "gpt-4.1", "claude-haiku-4-5", "o3"):
        assert name in names
    assert "claude-sonnet-4-5" in names  # priced by default


def test_time_to_first_byte_buckets_reach_the_longest_answers() -> None:
    # A non-streaming answer's first byte is its last: every one past 64 s fell into +Inf.
    sink = PrometheusSink()
    sink(make_event(time_to_first_byte_ms=200_000, stream=False))
    bucket = "messages_mw_time_to_first_byte_seconds_bucket"
    labels = {"operation": "chat", "model": "claude-sonnet-4-5", "stream": "false"}
    assert _value(sink.registry, bucket, le="300.0", **labels) == 1
    assert _value(sink.registry, bucket, le="120.0", **labels) == 0
