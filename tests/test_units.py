"""Small units: public names, config loading, body reading, errors, header handling."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import messages_mw
from messages_mw import (
    AuthConfig,
    FallbackConfig,
    Gateway,
    LimitRule,
    LimitsConfig,
    RateLimiter,
    UpstreamConfig,
)
from messages_mw.config import ConfigError, GatewayConfig, load_config
from messages_mw.errors import (
    InvalidRequestError,
    RequestTooLargeError,
    encode_error_body,
    new_request_id,
)
from messages_mw.request_body import (
    ClientDisconnectedError,
    decode_content_encoding,
    read_body,
)


def test_public_names_are_exactly_what_we_export() -> None:
    assert sorted(messages_mw.__all__) == [
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
    for name in messages_mw.__all__:
        assert getattr(messages_mw, name) is not None


def test_request_ids_look_like_anthropics() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("req_") and len(i) == 28 and i[4:].isalnum() for i in ids)


def test_error_envelope_shape() -> None:
    body = encode_error_body("not_found_error", "nope", "req_1")
    assert body == (
        b'{"type":"error","error":{"type":"not_found_error","message":"nope"},"request_id":"req_1"}'
    )


def test_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('provider = "mock"\n[upstream]\nbase_url = "http://x"\nread_timeout = 5\n')
    config = load_config(path)
    assert config.provider == "mock"
    assert config.upstream.base_url == "http://x" and config.upstream.read_timeout == 5.0
    assert config.max_body_bytes == GatewayConfig().max_body_bytes


def test_a_retry_section_keeps_the_default_attempts_per_target(tmp_path: Path) -> None:
    # Writing one retry option must not bring back a second try per target that the
    # defaults leave out (the SDKs and Claude Code retry by themselves).
    path = tmp_path / "gw.toml"
    path.write_text("[fallback.retry]\nstream_hold = 3.0\n")
    retry = load_config(path).fallback.retry
    assert retry.stream_hold == 3.0
    assert retry.attempts_per_target == GatewayConfig().fallback.retry.attempts_per_target == 1


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[upstream]\nbase_ur = 'x'\n", "base_ur"),
        ("provider = 'openai'\n", "provider"),
        ("[upstream]\nread_timeout = -1\n", "read_timeout"),
        ("max_body_bytes = 'big'\n", "max_body_bytes"),
        ("not toml at all [", "line 1"),
        # Keys under the default mode "none" would be ignored, with their per-key policies.
        ("[[auth.keys]]\nid = 'ci'\nkey = 'k'\ncompression = 'codex'\n", "mode = 'static'"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and named in str(caught.value)


@pytest.mark.parametrize(
    ("build", "named"),
    [
        # A typo in the auth mode once built a gateway with no auth at all.
        (lambda: GatewayConfig(auth=AuthConfig(mode="statik")), "`$.auth.mode`"),  # type: ignore[arg-type]
        (
            lambda: GatewayConfig(
                limits=LimitsConfig(rules=(LimitRule(scope="global", requests_per_minute=1),))  # type: ignore[arg-type]
            ),
            "`$.limits.rules[0].scope`",
        ),
        (lambda: GatewayConfig(upstream=UpstreamConfig(base_url="api.anthropic.com")), "base_url"),
        (lambda: GatewayConfig(upstream=UpstreamConfig(read_timeout=-1)), "read_timeout"),
        (lambda: GatewayConfig(max_body_bytes="10"), "`$.max_body_bytes`"),  # type: ignore[arg-type]
        # A value msgspec cannot represent at all.
        (lambda: GatewayConfig(aliases={"fast": object()}), "is unsupported"),  # type: ignore[dict-item]
    ],
)
def test_a_config_built_in_code_is_checked_as_a_file_would_be(
    build: Callable[[], GatewayConfig], named: str
) -> None:
    config = build()  # constructors check no types, choices or bounds
    with pytest.raises(ConfigError) as caught:
        Gateway(config)
    assert named in str(caught.value) and str(caught.value).startswith("config: ")


def test_a_path_is_a_file_name_to_the_config_check(tmp_path: Path) -> None:
    # open() takes one, so a config that names usage_file by a Path must keep building.
    config = GatewayConfig(usage_file=tmp_path / "usage.jsonl")  # type: ignore[arg-type]
    asyncio.run(Gateway(config).aclose())
    assert (tmp_path / "usage.jsonl").exists()


def test_a_rate_limiter_built_in_code_checks_its_config() -> None:
    with pytest.raises(ConfigError, match=r"^limits: .*`\$\.store`"):
        RateLimiter(LimitsConfig(store="redsi"))  # type: ignore[arg-type]


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def _receiver(  # type: ignore[no-untyped-def]
    *chunks: bytes, disconnect: bool = False, log: list[dict[str, object]] | None = None
):
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1 or disconnect}
        for i, chunk in enumerate(chunks)
    ]
    if disconnect:
        messages.append({"type": "http.disconnect"})
    queue = iter(messages)

    async def receive() -> dict[str, object]:
        message = next(queue)
        if log is not None:
            log.append(message)
        return message

    return receive


def test_read_body_joins_chunks_and_enforces_the_limit_while_reading() -> None:
    assert asyncio.run(read_body(_receiver(b"ab", b"cd", b"e"), 10, None)) == b"abcde"
    # The limit holds while reading: the message after the one that crossed it is never
    # asked for, so nothing past the limit is ever buffered.
    received: list[dict[str, object]] = []
    with pytest.raises(RequestTooLargeError):
        asyncio.run(read_body(_receiver(b"a" * 6, b"b" * 6, b"never read", log=received), 10, None))
    assert [message["body"] for message in received] == [b"a" * 6, b"b" * 6]
    with pytest.raises(RequestTooLargeError):
        asyncio.run(read_body(_receiver(b""), 10, 11))
    with pytest.raises(RequestTooLargeError):
        asyncio.run(read_body(_receiver(b"x" * 11), 10, None))
    with pytest.raises(ClientDisconnectedError):
        asyncio.run(read_body(_receiver(b"ab", disconnect=True), 10, None))
    # A client gone before any body arrived: the server's first message says so.
    with pytest.raises(ClientDisconnectedError):
        asyncio.run(read_body(_receiver(disconnect=True), 10, 8))


def test_decode_content_encoding() -> None:
    data = b'{"model":"m"}' * 10
    assert decode_content_encoding(gzip.compress(data), "gzip", 1000) == data
    assert decode_content_encoding(zlib.compress(data), "deflate", 1000) == data
    assert decode_content_encoding(data, "identity", 1000) == data
    with pytest.raises(RequestTooLargeError):
        decode_content_encoding(gzip.compress(b"0" * 10_000_000), "gzip", 1000)
    with pytest.raises(InvalidRequestError, match="truncated"):
        decode_content_encoding(gzip.compress(data)[:-12], "gzip", 1000)
    with pytest.raises(InvalidRequestError, match="zstd"):
        decode_content_encoding(data, "zstd", 1000)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_is_refused_without_inflating_it(encoding: str) -> None:
    # 50 MB of zeros in 50 KB: decoding must stop just past the 1,000-byte limit, so memory
    # never holds more than a sliver of the bomb (inflating it whole would take 50 MB).
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS if encoding == "gzip" else 15)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(50)) + compressor.flush()
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(RequestTooLargeError):
            decode_content_encoding(bomb, encoding, 1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=4))
def test_gzip_members_decode_to_their_contents_joined(data: bytes, cuts: list[int]) -> None:
    # As gzip.decompress reads them, member after member, within the limit or not at all.
    bounds = [0, *sorted(cut % (len(data) + 1) for cut in cuts), len(data)]
    members = b"".join(gzip.compress(data[a:b]) for a, b in itertools.pairwise(bounds))
    assert decode_content_encoding(members, "gzip", 3000) == data == gzip.decompress(members)
    if data:
        with pytest.raises(RequestTooLargeError):
            decode_content_encoding(members, "gzip", len(data) - 1)


def test_gzip_members_are_bounded_in_number() -> None:
    # Each member hands the rest of the body back as a copy: 1.6 million empty members fit in
    # 32 MB and would take minutes of the event loop. Clients send one.
    sixteen = gzip.compress(b"a") * 16
    assert decode_content_encoding(sixteen, "gzip", 1000) == b"a" * 16
    flood = gzip.compress(b"") * 100_000
    with pytest.raises(InvalidRequestError, match="more than 16 gzip members") as caught:
        decode_content_encoding(flood, "gzip", 32 << 20)
    assert caught.value.error_code == "request_body_encoding_invalid"


def test_readme_toml_examples_are_valid_configs() -> None:
    import re

    import msgspec

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        config = msgspec.toml.decode(block.encode(), type=GatewayConfig)
        assert isinstance(config, GatewayConfig)


def test_a_config_mistake_found_at_construction_leaves_no_usage_file_open(tmp_path: Path) -> None:
    # The usage file is opened last, so a mistake found before it leaks no file handle (the
    # file is not even created).
    usage = tmp_path / "usage.jsonl"
    config = GatewayConfig(
        usage_file=str(usage), fallback=FallbackConfig(default_chain=("nowhere/claude-x",))
    )
    with pytest.raises(ValueError, match="nowhere"):
        Gateway(config)
    assert not usage.exists()
