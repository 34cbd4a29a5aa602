"""Prometheus and OpenTelemetry turned on from the config (``[telemetry]``), as the CLI's TOML
file does: the gateway builds the sinks itself and serves the metrics on its own route."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from messages_mw import ConfigError, Gateway, GatewayConfig, TelemetryConfig, UsageEvent
from messages_mw.config import load_config

from .inprocess import run

_REPO = Path(__file__).resolve().parents[1]
_BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


def _gateway(events: list[UsageEvent] | None = None, **telemetry: object) -> Gateway:
    config = GatewayConfig(
        provider="mock", usage_log=False, telemetry=TelemetryConfig(prometheus=True, **telemetry)
    )
    return Gateway(config, usage_sinks=[events.append] if events is not None else [])


async def scrape_once_counted(
    client: httpx.AsyncClient, path: str, expected: float, namespace: str = "messages_mw"
) -> httpx.Response:
    """A scrape of ``path`` once it shows ``expected`` chat requests (usage events reach the
    sinks in the next pass of the loop, a few ms after the answer), or after 2 s."""
    for _ in range(200):
        scrape = await client.get(path)
        if chat_requests_counted(scrape.text, namespace) >= expected:
            break
        await asyncio.sleep(0.01)
    return scrape


def chat_requests_counted(metrics_text: str, namespace: str = "messages_mw") -> float:
    """The sum of the request counter's chat samples in a scrape."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if (
                sample.name == f"{namespace}_requests_total"
                and sample.labels["operation"] == "chat"
            ):
                total += sample.value
    return total


def test_prometheus_from_config_counts_requests_and_serves_them_at_metrics() -> None:
    events: list[UsageEvent] = []
    gateway = _gateway(events)

    async def exchange() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for _ in range(3):
                assert (await client.post("/v1/messages", json=_BODY)).status_code == 200
            scrape = await scrape_once_counted(client, "/metrics", 3)
            # A mounted metrics app redirects one spelling to the other; this route needs none.
            with_slash = await client.get("/metrics/")
        await gateway.aclose()
        return scrape, with_slash

    scrape, with_slash = run(exchange())
    assert scrape.status_code == 200 and with_slash.status_code == 200
    assert chat_requests_counted(scrape.text) == 3
    assert chat_requests_counted(with_slash.text) == 3
    # A scrape is not a request to the gateway: three usage events, for the three messages.
    assert [event.path for event in events] == ["/v1/messages"] * 3


def test_metrics_are_served_relative_to_the_mount_point_and_path() -> None:
    gateway = _gateway(metrics_path="/internal/prom", prometheus_namespace="gw")
    host = Starlette(routes=[Mount("/anthropic", app=gateway)])

    async def exchange() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            assert (await client.post("/anthropic/v1/messages", json=_BODY)).status_code == 200
            scrape = await scrape_once_counted(client, "/anthropic/internal/prom", 1, "gw")
            elsewhere = await client.get("/anthropic/metrics")
        await gateway.aclose()
        return scrape, elsewhere

    scrape, elsewhere = run(exchange())
    assert scrape.status_code == 200
    assert chat_requests_counted(scrape.text, namespace="gw") == 1
    # Not configured there: the gateway's own 404, in Anthropic's envelope.
    assert elsewhere.status_code == 404
    assert elsewhere.json()["error"]["type"] == "not_found_error"


def test_without_telemetry_there_is_no_metrics_route() -> None:
    gateway = Gateway(GatewayConfig(provider="mock", usage_log=False))

    async def scrape() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.get("/metrics")

    assert run(scrape()).status_code == 404


def test_telemetry_in_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        "[telemetry]\nprometheus = true\nmetrics_path = '/prom'\nopentelemetry = true\n"
    )
    telemetry = load_config(path).telemetry
    assert telemetry == TelemetryConfig(prometheus=True, metrics_path="/prom", opentelemetry=True)


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("metrics_path = 'metrics'", "metrics_path must start with '/'"),
        ("metrics_path = '/v1/messages'", "is one of the gateway's own routes"),
        ("metrics_path = '/api/hello'", "is one of the gateway's own routes"),
        # Served with or without its trailing slash, so this one would answer /api/hello.
        ("metrics_path = '/api/hello/'", "is one of the gateway's own routes"),
        ("metrics_path = '/v1/'", "is one of the gateway's own routes"),
        ("prometheus_namespace = 'messages-mw'", "$.telemetry.prometheus_namespace"),
        ("prometheus = 'yes'", "$.telemetry.prometheus"),
        ("exporter = 'otlp'", "unknown field `exporter`"),
    ],
)
def test_a_bad_telemetry_setting_names_its_key(tmp_path: Path, line: str, complaint: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f"[telemetry]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "telemetry" in str(caught.value)
    assert complaint in str(caught.value)


def test_a_telemetry_config_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match="metrics_path must start with '/'"):
        TelemetryConfig(metrics_path="metrics")
    # msgspec checks a field's pattern when decoding, not in the constructor: Gateway does.
    bad_namespace = TelemetryConfig(prometheus=True, prometheus_namespace="no spaces allowed")
    with pytest.raises(ConfigError, match="prometheus_namespace"):
        Gateway(GatewayConfig(provider="mock", telemetry=bad_namespace))


def test_opentelemetry_from_config_records_a_span_per_request() -> None:
    # The sink uses the global tracer provider, which a process sets once: in a child.
    code = textwrap.dedent(
        """
        import asyncio, httpx
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from messages_mw import Gateway, GatewayConfig, TelemetryConfig

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        telemetry = TelemetryConfig(opentelemetry=True)
        gateway = Gateway(GatewayConfig(provider="mock", usage_log=False, telemetry=telemetry))
        body = {"model": "claude-haiku-4-5", "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]}

        async def main():
            transport = httpx.ASGITransport(app=gateway)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                assert (await client.post("/v1/messages", json=body)).status_code == 200
                traced = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
                answer = await client.post("/v1/messages", json=body, headers=traced)
                assert answer.status_code == 200
            await gateway.aclose()  # flushes the usage sinks

        asyncio.run(main())
        for span in exporter.get_finished_spans():
            parent = span.parent and format(span.parent.span_id, "016x")
            print(span.name, span.attributes["gen_ai.usage.output_tokens"] > 0, parent)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # The second request's span is a child of the caller's span its traceparent named.
    assert done.stdout.splitlines() == [
        "chat claude-haiku-4-5 True None",
        "chat claude-haiku-4-5 True " + "cd" * 8,
    ]
