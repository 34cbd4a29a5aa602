"""Inputs a client (or an upstream) controls that once made compression or stream reading
super-linear, stalling the event loop that every request shares.

Each case was found by an audit and took seconds to minutes at the sizes below (cubic,
quadratic, or re-parsing a command per block); fixed, each takes milliseconds. The time limit
is a hang guard, not a speed target: it sits far above the fixed cost and far below the old
one, so machine noise cannot flip it. Speed targets live in ``benchmarks/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from messages_mw.compression.bundles import bundle_named
from messages_mw.compression.commands.files import filter_lint
from messages_mw.compression.commands.parse import main_programs
from messages_mw.compression.engine import compress_request
from messages_mw.compression.memo import CompressionMemo
from messages_mw.stream_peek import _PeekScanner
from messages_mw.streaming import StreamObserver

# Each case below took at least 15 s before its fix.
HANG_GUARD_SECONDS = 5.0


def _within_guard(work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - started
    assert elapsed < HANG_GUARD_SECONDS, f"took {elapsed:.1f} s"
    return result


def _body(content: object, command: str = "echo hi") -> bytes:
    use = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": command}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": content}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    return json.dumps({"model": "claude-x", "max_tokens": 8, "messages": messages}).encode()


def test_an_eslint_row_with_long_runs_of_blanks_is_linear() -> None:
    # Was cubic in the row's length: a 2.3 KB row took 8 s, a 100 KB one minutes.
    row = "  1:1  error" + " " * 100_000 + "x" + " " * 100_000 + "y  rule-id"
    _within_guard(lambda: filter_lint(row + "\n"))
    # Rows as eslint prints them still lose only their column padding.
    text = "  3:7   error  'x' is defined but never used    no-unused-vars\n"
    assert filter_lint(text) == "  3:7 error 'x' is defined but never used  no-unused-vars\n"


def test_an_unclosed_heredoc_with_a_long_marker_is_linear() -> None:
    # The marker used to back off one character at a time, each try scanning to the end.
    command = "cat <<" + "A" * 4000 + "\n" + "x\n" * 2100
    programs = _within_guard(lambda: [main_programs(command) for _ in range(50)])
    assert programs[0][0][0] == "cat"


def test_a_long_command_is_parsed_once_per_call_not_per_output_block() -> None:
    # 30,000 one-character blocks of one call with an 8.8 KB command: 40 s before.
    command = 'pytest "a" ' * 800
    body = _body([{"type": "text", "text": "x"}] * 30_000, command=command)
    for memo in (None, CompressionMemo()):
        _within_guard(lambda m=memo: compress_request(body, bundle_named("claude-code"), memo=m))


def test_many_outputs_of_one_length_are_deduplicated_without_comparing_each_pair() -> None:
    # Each result compared with every earlier one of its length: 15 s at 18 MB before.
    content = [{"type": "text", "text": "x" * 512 + f"{i:08d}"} for i in range(32_000)]
    results = [{"type": "tool_result", "tool_use_id": "t", "content": [item]} for item in content]
    body = json.dumps(
        {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": results}]}
    ).encode()
    _within_guard(lambda: compress_request(body, bundle_named("generic")))


def test_many_equal_length_outputs_still_find_their_duplicates() -> None:
    # Past a few outputs of one length the lookup goes by hash: duplicates must still be found,
    # each pointing at the first of its kind.
    texts = [f"{i % 12:04d}" + "y" * 600 for i in range(36)]
    uses, results = [], []
    for number, text in enumerate(texts):
        tool_id = f"toolu_{number}"
        uses.append({"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": "x"}})
        results.append({"type": "tool_result", "tool_use_id": tool_id, "content": text})
    messages: list[dict[str, Any]] = []
    for use, result in zip(uses, results, strict=True):
        messages += [{"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]
    body = json.dumps({"model": "m", "max_tokens": 8, "messages": messages}).encode()
    compressed = compress_request(body, bundle_named("claude-code")).body
    assert compressed is not None
    out = [m["content"][0]["content"] for m in json.loads(compressed)["messages"][1::2]]
    assert out[:12] == texts[:12]
    for number in range(12, 36):
        assert f"toolu_{number % 12} above" in out[number]


def test_sse_with_carriage_returns_is_observed_in_linear_time() -> None:
    # Upstream bytes: after one CR, each event searched the rest of the chunk for every form of
    # separator, one of them never present. A 256 KB chunk took 22 s.
    observer = StreamObserver()
    observer.feed(b": hi\r\n\n")
    _within_guard(lambda: observer.feed(b"x\n\n" * 300_000))
    observer.feed(b'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n')
    assert observer.saw_message_stop


def test_a_held_stream_framed_with_crlf_is_judged_in_linear_time() -> None:
    # Upstream bytes, read before the client sees any: the peek looked for a blank line to the
    # end of the chunk before each event, and CRLF framing has none. 1 MiB of pings took 15 s.
    pings = b"event: ping\r\ndata: {}\r\n\r\n" * 40_000
    scanner = _PeekScanner()
    assert _within_guard(lambda: scanner.feed(pings)) is None
    assert scanner.feed(b"event: content_block_start\r\ndata: {}\r\n\r\n") == "content"


def test_an_event_arriving_in_small_pieces_is_judged_in_linear_time() -> None:
    # The peek searched everything it held from the start again with each piece: 1 MiB in
    # 1 KiB pieces took 1.3 s, and 4 MiB sixteen times that.
    scanner = _PeekScanner()
    piece = b"x" * 1024

    def feed_pieces() -> object:
        scanner.feed(b"event: message_start\ndata: ")
        for _ in range(4 * 1024):
            scanner.feed(piece)
        return scanner.feed(b"\n\nevent: content_block_start\ndata: {}\n\n")

    assert _within_guard(feed_pieces) == "content"
