"""A memo's histories and frames: whatever a session sends, the bytes are those of no memo.

The memo reuses whole messages and the fields around them by comparing bytes with earlier
requests (see ``messages_mw.compression.history``); these tests send what such comparisons could
get wrong (whitespace, edits in the middle, duplicate keys, invalid JSON that a frame fits, odd
message shapes, branches, interleaved sessions) and compare every result with the cold path's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.agent_corpus import build_session
from messages_mw.compression import CompressionMemo, CompressionResult, bundle_named
from messages_mw.compression.bundles import Bundle
from messages_mw.compression.engine import compress_request

from .test_compression_properties import conversations

_CLAUDE = bundle_named("claude-code")
_CODEX = bundle_named("codex")
assert _CLAUDE is not None and _CODEX is not None
_LOG = "".join(f"\x1b[32mok\x1b[0m step {i}   \n" for i in range(60))


def _same_as_cold(
    bodies: list[bytes],
    bundle: Bundle = _CLAUDE,
    memo: CompressionMemo | None = None,
    **options: Any,
) -> CompressionMemo:
    """Compress ``bodies`` in order through one memo; each result must equal the cold one."""
    memo = CompressionMemo() if memo is None else memo
    for body in bodies:
        assert _outcome(body, bundle, memo, **options) == _outcome(body, bundle, None, **options)
    return memo


def _outcome(
    body: bytes, bundle: Bundle, memo: CompressionMemo | None, **options: Any
) -> CompressionResult | str:
    """The result without its time, or the error raised (today, for invalid UTF-8 in a
    message's role or content: the same with or without a memo)."""
    try:
        result = compress_request(body, bundle, memo=memo, **options)
    except UnicodeDecodeError as error:
        return repr(error)
    return dataclasses.replace(result, seconds=0)


def _messages(turns: int, *, tool_id: str = "t") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    for turn in range(turns):
        call = f"{tool_id}{turn}"
        messages += [
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": call, "name": "Bash", "input": {"command": "make"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call, "content": _LOG}],
            },
        ]
    return messages


def _body(messages: list[dict[str, Any]], **fields: Any) -> bytes:
    return msgspec.json.encode({"model": "m", "max_tokens": 1, **fields, "messages": messages})


def _session(
    turns: int, encode: Callable[[list[dict[str, Any]]], bytes] = _body, **ids: str
) -> list[bytes]:
    messages = _messages(turns, **ids)
    return [encode(messages[: 1 + 2 * turn]) for turn in range(turns + 1)]


def test_a_session_reuses_its_history_and_changes_no_byte() -> None:
    memo = _same_as_cold(_session(6))
    hits = memo.hits
    _same_as_cold(_session(6)[-1:], memo=memo)
    assert memo.hits >= hits + 13  # every message of the final request, found again


@pytest.mark.parametrize("indent", [None, 0, 2])
def test_whitespace_anywhere_changes_nothing(indent: int | None) -> None:
    def pretty(messages: list[dict[str, Any]]) -> bytes:
        body = {"model": "m", "messages": messages, "max_tokens": 1}
        return json.dumps(body, indent=indent, separators=(" , ", " : ")).encode() + b"\n "

    _same_as_cold(_session(5, pretty))


def test_an_edited_or_dropped_message_in_the_middle_is_walked_again() -> None:
    messages = _messages(5)
    edited = json.loads(json.dumps(messages))
    edited[3]["content"][0]["content"] = _LOG + "changed\n"
    bodies = [_body(messages), _body(edited), _body(messages[:3] + messages[5:]), _body(messages)]
    _same_as_cold(bodies)


def test_fields_around_the_messages_that_change_or_repeat() -> None:
    messages = _messages(4)
    raw, longer = msgspec.json.encode(messages), msgspec.json.encode(_messages(6))
    bodies = [
        _body(messages),
        _body(messages, system="be brief"),
        msgspec.json.encode({"messages": messages, "model": "m", "max_tokens": 1}),
        # A later duplicate key wins, in the decoder as in the memo.
        b'{"model":"m","messages":' + raw + b',"messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"m","messages":' + raw + b',"max_tokens":2,"messages":' + raw + b"}",
        b'{"model":"m","messages":' + longer + b',"max_tokens":2,"messages":' + raw + b"}",
        _body(messages),
        b'{"model":"m","max_tokens":1,"messages":[]}',
        _body(messages),
    ]
    _same_as_cold(bodies)
    _same_as_cold(bodies, align_cache=True)
    _same_as_cold([bytes(bytearray(body)) for body in bodies], _CODEX)


def test_cache_alignment_is_the_same_with_a_memo() -> None:
    tools = [{"name": "Bash", "description": "run " * 1500, "input_schema": {"type": "object"}}]
    marked = [{**tools[0], "cache_control": {"type": "ephemeral"}}]
    messages = _messages(4)
    mention = {"role": "user", "content": [{"type": "text", "text": "see cache_control docs"}]}
    bodies = [_body(messages[: 1 + 2 * turn], tools=tools, system="s") for turn in range(5)]
    bodies += [
        _body([*messages, mention], tools=tools, system="s"),
        _body(messages, tools=marked, system="s"),
        _body(messages, tools=tools, system="s"),
    ]
    _same_as_cold(bodies, align_cache=True)


def test_a_body_that_a_frame_fits_but_is_not_json_is_left_alone() -> None:
    messages = _messages(3)
    good = _body(messages)
    head = good[: good.index(b'"messages":[') + len(b'"messages":[')]
    array = msgspec.json.encode(messages)[1:-1]
    elements = [msgspec.json.encode(message) for message in messages]
    bad = [
        head + b"".join(elements) + b"]}",
        head + b" ".join(elements[:3]) + b"]}",
        head + b",".join(elements[:2]) + b"\n" + b",".join(elements[2:]) + b"]}",
        head + array + b",]}",
        head + array + b", ]}",
        head + array + b",{]}",
        head + array[:-1] + b"]}",
        head + b"}",
        head + array + b',{"role":"user","content":"\xff"}]}',
        head + array + b',{"role":"user","content":[{"type":"x","v":"\xff"}]}]}',
        head + array + b',{"role":"user","content":"x",}]}',
    ]
    for body in bad:
        _same_as_cold([good, body, good])


def test_messages_of_unusual_shapes_take_the_general_path() -> None:
    messages = _messages(3)
    odd: list[dict[str, Any]] = [
        {"role": "user", "content": "x", "n": 1},
        {"role": "user", "content": None},
        {"role": "user", "content": [1]},
    ]
    bodies = [_body(messages)]
    for message in odd:
        bodies += [_body([*messages, message]), _body([*messages, message, *messages[1:3]])]
    bodies += [_body(messages), msgspec.json.encode({"model": "m", "messages": {"a": 1}})]
    _same_as_cold(bodies)


def test_branches_and_interleaved_sessions_share_a_memo() -> None:
    first, second = _session(5, tool_id="a"), _session(5, tool_id="b")
    interleaved = [body for pair in zip(first, second, strict=True) for body in pair]
    # A retried turn, then the session goes on from an earlier request.
    _same_as_cold([*interleaved, first[2], first[5], first[3], second[1], second[5]])


def test_a_small_memo_drops_histories_first_and_stays_within_its_bound() -> None:
    requests = list(build_session("codex", "tool-heavy", seed=5, turns=8).requests)
    for max_bytes in (30_000, 300_000):
        memo = _same_as_cold(requests, _CODEX, CompressionMemo(max_bytes=max_bytes))
        assert 0 < memo.bytes_held <= max_bytes and len(memo) > 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(conversations(), st.data())
def test_any_order_of_a_conversations_requests_changes_no_byte(
    messages: list[dict[str, Any]], data: st.DataObject
) -> None:
    memo = CompressionMemo()
    cuts = data.draw(st.lists(st.integers(1, len(messages)), min_size=1, max_size=8))
    for upto in cuts:
        body = _body(messages[:upto], stream=True)
        if data.draw(st.booleans()):
            body = json.dumps(json.loads(body), indent=1).encode()
        assert _outcome(body, _CLAUDE, memo) == _outcome(body, _CLAUDE, None)
