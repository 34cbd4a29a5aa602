"""The compression memo: it remembers rewrites between requests and never changes an output."""

from __future__ import annotations

import dataclasses
import gc
import json
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from msgspec import Raw

from benchmarks.agent_corpus import PROFILES, build_session
from messages_mw.compression import (
    BUNDLE_NAMES,
    CompressionMemo,
    CompressionResult,
    bundle_named,
    compress_request,
)
from messages_mw.compression.builtin import BundleCompressor
from messages_mw.compression.memo import DEFAULT_MEMO_BYTES
from messages_mw.compression.rewrite import Rule
from messages_mw.config import CompressionConfig
from messages_mw.context import RequestContext

TURNS = 8


def _session(bundle: str, profile: str = "tool-heavy") -> list[bytes]:
    return list(build_session(bundle, profile, seed=3, turns=TURNS).requests)


def _same(a: CompressionResult, b: CompressionResult) -> None:
    assert dataclasses.replace(a, seconds=0) == dataclasses.replace(b, seconds=0)


def _compress_all(
    requests: Sequence[bytes], bundle: str, memo: CompressionMemo | None
) -> list[CompressionResult]:
    chosen = bundle_named(bundle)
    assert chosen is not None
    return [compress_request(body, chosen, memo=memo) for body in requests]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_a_memo_shared_across_a_session_changes_no_byte(bundle: str, profile: str) -> None:
    requests = _session(bundle, profile)
    memo = CompressionMemo()
    with_memo = _compress_all(requests, bundle, memo)
    for plain, remembered in zip(_compress_all(requests, bundle, None), with_memo, strict=True):
        _same(plain, remembered)
    assert memo.hits > memo.misses > 0
    # Every text of the final request was seen by an earlier one or just now.
    hits, misses = memo.hits, memo.misses
    _same(_compress_all(requests[-1:], bundle, memo)[0], with_memo[-1])
    assert memo.misses == misses and memo.hits > hits


def test_a_small_memo_stays_within_its_bound_and_changes_nothing() -> None:
    requests = _session("codex")
    memo = CompressionMemo(max_bytes=20_000)
    for plain, remembered in zip(
        _compress_all(requests, "codex", None), _compress_all(requests, "codex", memo), strict=True
    ):
        _same(plain, remembered)
    assert 0 < memo.bytes_held <= 20_000 and len(memo) > 0


def test_a_text_larger_than_the_memo_is_not_remembered() -> None:
    memo = CompressionMemo(max_bytes=100)
    _compress_all(_session("claude-code"), "claude-code", memo)
    assert len(memo) == 0 and memo.bytes_held == 0 and memo.misses > 0
    assert CompressionMemo().max_bytes == DEFAULT_MEMO_BYTES


def test_threads_sharing_a_memo_get_the_same_bytes() -> None:
    work = [(body, name) for name in ("claude-code", "codex") for body in _session(name)]

    def compress(index: int, memo: CompressionMemo | None = None) -> bytes | None:
        body, name = work[index]
        bundle = bundle_named(name)
        assert bundle is not None
        return compress_request(body, bundle, memo=memo).body

    expected = [compress(index) for index in range(len(work))]
    memo = CompressionMemo(max_bytes=200_000)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            indices = range(len(work))
            assert list(pool.map(compress, indices, [memo] * len(work))) == expected


@pytest.mark.parametrize("memo_bytes", [0, DEFAULT_MEMO_BYTES])
def test_the_builtin_compressor_gives_the_same_bytes_with_or_without_its_memo(
    memo_bytes: int,
) -> None:
    config = CompressionConfig(default_bundle="claude-code", memo_bytes=memo_bytes)
    compressor = BundleCompressor(config, header="x-mw-compression", report_header="x-mw-report")
    requests = _session("claude-code")
    expected = [result.body for result in _compress_all(requests, "claude-code", None)]
    for _ in range(2):
        for body, want in zip(requests, expected, strict=True):
            context = RequestContext("r", "POST", "/v1/messages")
            assert compressor(body, context) == want
            assert context.compression is not None


class _Buffer(bytearray):
    """A request body that can be watched with a weak reference."""


def test_the_memo_keeps_no_request_buffer_alive() -> None:
    memo = CompressionMemo()
    body = _Buffer(_session("codex")[-1])
    watched = weakref.ref(body)
    codex = bundle_named("codex")
    assert codex is not None
    assert compress_request(cast(bytes, body), codex, memo=memo).body is not None
    del body
    gc.collect()
    assert watched() is None and len(memo) > 0


def _call(tool_id: str, command: str, output: str) -> bytes:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": command}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": output}],
        },
    ]
    return json.dumps({"model": "m", "max_tokens": 1, "messages": messages}).encode()


def test_an_id_seen_again_with_another_call_or_output_is_compressed_afresh() -> None:
    log = "".join(f"\x1b[32mok\x1b[0m step {i}   \n" for i in range(50))
    bodies = [
        _call("t1", "make", log),
        _call("t1", "make", log + "done\n"),
        _call("t1", "cat build.log", log),
        _call("t1", "make", log),
    ]
    claude = bundle_named("claude-code")
    assert claude is not None
    memo = CompressionMemo()
    for body in bodies:
        _same(compress_request(body, claude, memo=memo), compress_request(body, claude))
    assert memo.misses == 4 and len(memo) == 1


def test_a_full_memo_drops_the_oldest_unused_entry_first() -> None:
    rule = Rule(None)
    texts = {name: Raw(json.dumps(name * 1000).encode()) for name in "abcd"}
    one = CompressionMemo()
    one.call_rewrite("a", (), texts["a"], lambda: rule)
    memo = CompressionMemo(max_bytes=3 * one.bytes_held)
    for name in "abc":
        memo.call_rewrite(name, (), texts[name], lambda: rule)
    memo.call_rewrite("a", (), texts["a"], lambda: rule)
    assert (memo.hits, memo.misses, len(memo)) == (1, 3, 3)
    memo.call_rewrite("d", (), texts["d"], lambda: rule)  # full: "b" goes, "a" was used
    for name in "acd":
        memo.call_rewrite(name, (), texts[name], lambda: rule)
    assert (memo.hits, memo.misses) == (4, 4)
    memo.call_rewrite("b", (), texts["b"], lambda: rule)  # all used: "c", the oldest, goes
    assert memo.misses == 5 and memo.bytes_held <= memo.max_bytes
    for name in "adb":
        memo.call_rewrite(name, (), texts[name], lambda: rule)
    assert (memo.hits, memo.misses) == (7, 5)
    memo.call_rewrite("c", (), texts["c"], lambda: rule)
    assert memo.misses == 6


def test_a_failing_engine_leaves_the_body_to_go_upstream_as_it_came(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object, **options: object) -> None:
        raise RuntimeError("a bug in a filter")

    config = CompressionConfig(default_bundle="claude-code")
    compressor = BundleCompressor(
        config, header="x-mw-compression", report_header="x-mw-report", engine=broken
    )
    context = RequestContext("r", "POST", "/v1/messages")
    assert compressor(_session("claude-code")[-1], context) is None
    assert context.compression is None
    assert "compression failed" in caplog.text
