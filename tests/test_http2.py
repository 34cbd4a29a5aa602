"""``UpstreamConfig.http2``: the Anthropic provider speaks HTTP/2 to a real TLS upstream.

Hypercorn serves a scripted upstream over TLS on loopback, offering ``h2`` and ``http/1.1`` by
ALPN, and records the HTTP version of every request it answers. The certificate is self-signed
for the test and trusted through ``SSL_CERT_FILE``, which both of the provider's transports honour
(httpx reads it explicitly, and OpenSSL's default verify paths include it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from messages_mw import Gateway, GatewayConfig, UpstreamConfig

from .servers import (
    Receive,
    Reply,
    Scope,
    ScriptedUpstream,
    Send,
    message_json,
    serve,
    text_stream_events,
)

MESSAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hi"}],
}


class VersionRecorder:
    """Wraps an ASGI app, noting the ``http_version`` of each HTTP request it is handed."""

    def __init__(self, app: ScriptedUpstream) -> None:
        self.app = app
        self.versions: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.versions.append(scope["http_version"])
        await self.app(scope, receive, send)


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def serve_tls(app: VersionRecorder, cert_path: Path, key_path: Path) -> Iterator[str]:
    """Serve ``app`` with Hypercorn over TLS on a free loopback port; yield its https URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = HypercornConfig()
    # Hypercorn adopts the bound socket, so no other process can take the port in between.
    config.bind = [f"fd://{sock.detach()}"]
    config.certfile, config.keyfile = str(cert_path), str(key_path)
    config.graceful_timeout = 1.0
    config.loglevel = "WARNING"
    loop = asyncio.new_event_loop()
    stop = threading.Event()

    async def run() -> None:
        await hypercorn_serve(app, config, shutdown_trigger=lambda: asyncio.to_thread(stop.wait))

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        _wait_for_port(port)
        yield f"https://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(10)
        loop.close()


def _wait_for_port(port: int) -> None:
    for _ in range(500):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return
        threading.Event().wait(0.01)
    raise RuntimeError("hypercorn did not start")


@pytest.fixture
def tls_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ScriptedUpstream, VersionRecorder, str]]:
    cert_path, key_path = _self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    scripted = ScriptedUpstream()
    recorder = VersionRecorder(scripted)
    with serve_tls(recorder, cert_path, key_path) as url:
        yield scripted, recorder, url


async def _post_messages(gateway: Gateway, *, stream: bool) -> httpx.Response:
    transport = httpx.ASGITransport(gateway)
    async with gateway, httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
        response = await client.post(
            "/v1/messages",
            json={**MESSAGE, "stream": stream},
            headers={"anthropic-version": "2023-06-01", "x-api-key": "sk-client"},
        )
        await response.aread()
        return response


def _gateway(url: str, *, http2: bool) -> Gateway:
    upstream = UpstreamConfig(base_url=url, api_key="sk-upstream", http2=http2, read_timeout=10.0)
    return Gateway(GatewayConfig(upstream=upstream))


def test_http2_upstream_for_json_and_stream(
    tls_upstream: tuple[ScriptedUpstream, VersionRecorder, str],
) -> None:
    scripted, recorder, url = tls_upstream
    events = text_stream_events(["Hello", " over", " h2"])
    scripted.push(Reply(body=message_json("one answer")), Reply(chunks=events))
    gateway = _gateway(url, http2=True)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        return await _post_messages(gateway, stream=False), await _post_messages(
            gateway, stream=True
        )

    answer, streamed = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert answer.status_code == 200 and answer.json()["content"][0]["text"] == "one answer"
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.content == b"".join(events)
    assert recorder.versions == ["2", "2"]
    assert [request.headers["x-api-key"] for request in scripted.received] == ["sk-upstream"] * 2


def test_default_transport_stays_on_http_1_1_over_tls(
    tls_upstream: tuple[ScriptedUpstream, VersionRecorder, str],
) -> None:
    scripted, recorder, url = tls_upstream
    scripted.push(Reply(body=message_json()))
    answer = asyncio.run(
        asyncio.wait_for(_post_messages(_gateway(url, http2=False), stream=False), 20)
    )
    assert answer.status_code == 200
    # The server offers h2 by ALPN; FastHTTPTransport asks for http/1.1 only.
    assert recorder.versions == ["1.1"]


def test_an_http2_upstream_serves_a_second_event_loop_and_closes_from_a_third() -> None:
    # A host calling the gateway from a new loop (a pytest loop per test, a test client per
    # request): httpx's connections belong to the loop that opened them. Without TLS, httpx
    # set for HTTP/2 speaks HTTP/1.1 and keeps the connection idle for the next request.
    plain = ScriptedUpstream()
    plain.push(Reply(body=message_json("first")), Reply(body=message_json("second")))
    with serve(plain) as url:
        gateway = _gateway(url, http2=True)
        for text in ("first", "second"):
            answer = asyncio.run(asyncio.wait_for(_post_leaving_open(gateway), 20))
            assert answer.status_code == 200 and answer.json()["content"][0]["text"] == text
        asyncio.run(gateway.aclose())


async def _post_leaving_open(gateway: Gateway) -> httpx.Response:
    """A request whose loop ends with the gateway's upstream connections left open."""
    transport = httpx.ASGITransport(gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
        return await client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": "sk"})


def test_http2_without_h2_installed_is_refused_when_the_provider_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx imports h2 only once TLS has chosen HTTP/2: the gateway started, then every
    # request was a 500 with ModuleNotFoundError in the log.
    import importlib.util

    from messages_mw.providers.anthropic import AnthropicProvider

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "h2" else find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"messages-mw\[http2\]"):
        AnthropicProvider(UpstreamConfig(http2=True))
    AnthropicProvider(UpstreamConfig(http2=False))  # HTTP/1.1 needs no h2


@pytest.mark.parametrize("stream", [False, True])
def test_an_http2_protocol_error_in_the_body_is_a_broken_upstream(stream: bool) -> None:
    # httpx lets h2's own errors through unwrapped when they come while the body is read
    # (here an upstream's invalid SETTINGS frame): a 500 "internal gateway error", or for a
    # stream an api_error event with no fallback.
    import h2.exceptions

    from messages_mw.providers.anthropic import AnthropicProvider, _H2ErrorsAsHttpx

    class BreaksMidBody(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            # A stream is committed to the client once its first text arrives.
            yield b"".join(text_stream_events(["Hello", " there"])[:4]) if stream else b'{"a":'
            raise h2.exceptions.InvalidSettingsValueError("INITIAL_WINDOW_SIZE", 0)

    async def handler(request: httpx.Request) -> httpx.Response:
        kind = "text/event-stream" if stream else "application/json"
        return httpx.Response(200, headers={"content-type": kind}, stream=BreaksMidBody())

    transport = _H2ErrorsAsHttpx(httpx.MockTransport(handler))
    upstream = UpstreamConfig(base_url="https://upstream.test", api_key="sk-up")
    gateway = Gateway(
        GatewayConfig(upstream=upstream), provider=AnthropicProvider(upstream, transport=transport)
    )
    response = asyncio.run(asyncio.wait_for(_post_messages(gateway, stream=stream), 20))
    if stream:
        assert response.status_code == 200
        assert b"event: error" in response.content and b"broke mid-stream" in response.content
    else:
        assert response.status_code == 502
        assert "not valid HTTP" in response.json()["error"]["message"]
