"""The decode benchmark's pieces work and compare like with like; no load test here."""

from __future__ import annotations

import json

import pytest

from benchmarks.decode import (
    DECODERS,
    DEFAULT_SAMPLES,
    accepts,
    decode_with_msgspec,
    decode_with_stdlib_pydantic,
    run_decode_benchmarks,
)

SMALL_SAMPLE = DEFAULT_SAMPLES / "small_chat.json"
VALID = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
TEXT_BLOCK = {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}


def _body(**changes: object) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


def _without(field: str) -> bytes:
    return json.dumps({key: value for key, value in VALID.items() if key != field}).encode()


VALID_BODIES = {
    "minimal": _body(),
    "blocks and extras": _body(
        messages=[{"role": "user", "content": [TEXT_BLOCK]}],
        system=[{"type": "text", "text": "be brief"}],
        stream=True,
        temperature=1,
        top_k=5,
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "u-1"},
        future_field={"anything": True},
    ),
    "unknown role and block type": _body(
        messages=[{"role": "narrator", "content": [{"type": "hologram", "data": 1}]}]
    ),
}
INVALID_BODIES = {
    "not JSON": b'{"model": ',
    "not an object": b"[1, 2]",
    "missing model": _without("model"),
    "missing messages": _without("messages"),
    "empty messages": _body(messages=[]),
    "negative max_tokens": _body(max_tokens=-1),
    "max_tokens as string": _body(max_tokens="16"),
    "content as number": _body(messages=[{"role": "user", "content": 5}]),
    "block without type": _body(messages=[{"role": "user", "content": [{"text": "hi"}]}]),
    "stream as string": _body(stream="yes"),
    "temperature as string": _body(temperature="hot"),
    "model as number": _body(model=4),
}


@pytest.mark.parametrize("body", VALID_BODIES.values(), ids=VALID_BODIES.keys())
def test_both_decoders_accept_valid_bodies(body: bytes) -> None:
    assert accepts(decode_with_msgspec, body)
    assert accepts(decode_with_stdlib_pydantic, body)


@pytest.mark.parametrize("body", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_both_decoders_reject_invalid_bodies(body: bytes) -> None:
    assert not accepts(decode_with_msgspec, body)
    assert not accepts(decode_with_stdlib_pydantic, body)


@pytest.mark.skipif(not SMALL_SAMPLE.exists(), reason=f"{SMALL_SAMPLE} not present")
def test_decode_benchmark_returns_positive_timings() -> None:
    results = run_decode_benchmarks(
        DEFAULT_SAMPLES, rounds=2, number=20, sample_files=(SMALL_SAMPLE.name,)
    )

    assert [r.decoder for r in results] == list(DECODERS)
    assert all(r.seconds_per_call > 0 and r.baseline_seconds_per_call > 0 for r in results)
    assert all(accepts(decode, SMALL_SAMPLE.read_bytes()) for decode in DECODERS.values())
