"""The engine's fast paths against the general ones they stand for.

A history finds the messages a request resends with one byte comparison of them all, compactly
joined, instead of one per message; new messages in compact JSON get their bytes by encoding
them rather than by a second decoding; a walk that resumes after a history finds earlier
outputs through the history's index instead of rebuilding it. Each must give what the general
path gives, on any input: these tests compare them with the general path written out plainly,
and sessions whose tool outputs repeat with compress_request without a memo.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messages_mw.compression import CompressionMemo, bundle_named
from messages_mw.compression.engine import _decode_elements, compress_request
from messages_mw.compression.history import History

_CLAUDE = bundle_named("claude-code")
_CODEX = bundle_named("codex")
assert _CLAUDE is not None and _CODEX is not None
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_BETWEEN = re.compile(rb"[ \t\n\r]*(?:(,)[ \t\n\r]*)?")

_text = st.text(alphabet='ab{}[],: \n"\\é', max_size=6)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": _text}
).map(msgspec.json.encode)
_separator = st.sampled_from([b",", b",", b",", b", ", b" ,\n", b"", b" "])


def _plain_match(raws: list[bytes], array: bytes, start: int) -> tuple[int, int, bool]:
    """``History.match`` as one comparison per message, the general path."""
    position, count, comma = start, 0, False
    for raw in raws:
        if not array.startswith(raw, position):
            break
        position += len(raw)
        count += 1
        found = _BETWEEN.match(array, position)
        assert found is not None
        position, comma = found.end(), found.group(1) is not None
        if not comma:
            break
    return count, position, comma


def _history(raws: list[bytes], lead: bytes) -> History:
    """A history of ``raws`` alone, kept compactly joined after ``lead`` in its source."""
    bounds = [0]
    for raw in raws:
        bounds.append(bounds[-1] + len(raw) + 1)
    source = lead + b",".join(raws) + b"]"
    sizes = tuple(range(len(raws) + 1))
    ends = ((0, 0, 0, 0, 0),) * (len(raws) + 1)
    outs = tuple(raws)
    return History(source, len(lead), tuple(bounds), outs, (), (), ends, {}, sizes)


@st.composite
def _resent(draw: st.DrawFn) -> tuple[list[bytes], bytes, int]:
    """Remembered messages, and an array that resends some of them (some changed), with any
    separators, then maybe more."""
    raws = draw(st.lists(_message, max_size=12))
    kept = draw(st.integers(0, len(raws)))
    sent = list(raws[:kept])
    for index in draw(st.lists(st.integers(0, max(kept - 1, 0)), max_size=2)):
        if index < len(sent):
            sent[index] = draw(_message)
    sent += draw(st.lists(_message, max_size=3))
    lead = draw(st.sampled_from([b"[", b"[ ", b'{"messages":[\n']))
    array = bytearray(lead)
    for index, raw in enumerate(sent):
        array += raw
        if index < len(sent) - 1:
            array += draw(_separator)
    array += draw(st.sampled_from([b"]", b" ]", b",]", b""]))
    return raws, bytes(array), len(lead)


@_SETTINGS
@given(_resent(), st.sampled_from([b"", b"[", b'{"x":1,"messages":[']))
def test_matching_all_messages_at_once_finds_what_one_at_a_time_finds(
    resent: tuple[list[bytes], bytes, int], lead: bytes
) -> None:
    raws, array, start = resent
    assert _history(raws, lead).match(array, start) == _plain_match(raws, array, start)


def test_matching_finds_a_change_anywhere_among_many_messages() -> None:
    raws = [msgspec.json.encode({"role": "user", "content": f"m{i}"}) for i in range(40)]
    history = _history(raws, b"[")
    for changed in [0, 1, 17, 36, 37, 38, 39]:
        sent = [*raws[:changed], b'{"role":"user","content":"other"}', *raws[changed + 1 :]]
        array = b"[" + b",".join(sent) + b"]"
        assert history.match(array, 1) == _plain_match(raws, array, 1)
        assert history.match(array, 1)[0] == changed


def _plain_elements(data: bytes, position: int, end: int) -> list[tuple[bytes, Any]] | None:
    """The new messages' bytes and contents, decoding each element a second time."""
    decoder = msgspec.json.Decoder(dict[str, str | list[dict[str, msgspec.Raw]]])
    try:
        elements = msgspec.json.Decoder(list[msgspec.Raw]).decode(b"[" + data[position:end])
        copies = [bytes(element) for element in elements]
        return [(copy, decoder.decode(copy)) for copy in copies]
    except msgspec.DecodeError:
        return None


_block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_result"]), "text": _text}
).map(lambda block: {**block, "extra": 1} if len(block["text"]) % 2 else block)
_shaped = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": _text | st.lists(_block)}
)


@_SETTINGS
@given(
    st.lists(_shaped | st.just({"role": 1}), max_size=4),
    st.sampled_from([None, 0, 1]),
    st.sampled_from([b"]", b" ]", b"", b",]"]),
)
def test_new_messages_decode_to_what_a_second_decoding_gives(
    messages: list[dict[str, Any]], indent: int | None, closing: bytes
) -> None:
    separators = (",", ":") if indent is None else (", ", ": ")
    elements = json.dumps(messages, indent=indent, separators=separators, ensure_ascii=False)
    data = b'{"messages":' + elements.encode()[1:-1].strip() + closing
    decoded = _decode_elements(data, len(b'{"messages":'), len(data))
    expected = _plain_elements(data, len(b'{"messages":'), len(data))
    if expected is None:
        assert decoded is None
        return
    assert decoded is not None
    canonical, found = decoded
    assert [(raw, message) for raw, message in found] == expected
    if canonical:
        assert all(msgspec.json.encode(message) == raw for raw, message in found)


def _log(seed: str) -> str:
    """Forty distinct lines (no filter shortens them), of one length whatever the ``seed``."""
    return "".join(f"{seed} {chr(97 + k % 26)}{chr(97 + k // 26)} done\n" for k in range(40))


# A long task: a history is looked up by the first kilobyte of the messages.
_OPENING = {"role": "user", "content": "go " * 400}
_LOGS = [_log("alpha"), _log("gamma"), _log("delta"), _log("omega"), _log("eps")]


def _turn(call: str, output: str) -> list[dict[str, Any]]:
    use = {"type": "tool_use", "id": call, "name": "Bash", "input": {"command": "ls -l"}}
    result = {"type": "tool_result", "tool_use_id": call, "content": output}
    return [{"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(0, len(_LOGS) - 1), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 7), st.integers(0, len(_LOGS) - 1)), max_size=3),
    st.sampled_from([_CLAUDE, _CODEX]),
)
def test_repeated_outputs_are_found_after_a_resumed_walk_as_without_a_memo(
    picks: list[int], edits: list[tuple[int, int]], bundle: Any
) -> None:
    """Sessions whose outputs repeat (many of one length), resent whole and with a turn
    edited, so that walks resume before outputs their history recorded."""
    messages: list[dict[str, Any]] = [_OPENING]
    for turn, pick in enumerate(picks):
        messages += _turn(f"t{turn}", _LOGS[pick])
    bodies = [_body(messages[: 1 + 2 * turn]) for turn in range(len(picks) + 1)]
    for turn, pick in edits:
        edited = [*messages]
        if 2 + 2 * turn < len(edited):
            edited[1 + 2 * turn : 3 + 2 * turn] = _turn(f"t{turn}", _LOGS[pick] + "x\n")
        bodies += [_body(edited), _body(messages)]
    memo = CompressionMemo()
    for body in bodies:
        warm = compress_request(body, bundle, memo=memo)
        cold = compress_request(body, bundle)
        assert dataclasses.replace(warm, seconds=0) == dataclasses.replace(cold, seconds=0)


def test_a_repeated_output_becomes_a_reference_after_a_resumed_walk() -> None:
    messages: list[dict[str, Any]] = [_OPENING]
    for turn, log in enumerate([_LOGS[0], _LOGS[1], _LOGS[0], _LOGS[1]]):
        messages += _turn(f"t{turn}", log)
    memo = CompressionMemo()
    for upto in (3, 5, 7, 9):
        result = compress_request(_body(messages[:upto]), _CODEX, memo=memo)
        assert result == dataclasses.replace(
            compress_request(_body(messages[:upto]), _CODEX), seconds=result.seconds
        )
    assert result.body is not None
    assert result.body.count(b"identical to the tool result of t0") == 1
    assert result.body.count(b"identical to the tool result of t1") == 1


def _body(messages: list[dict[str, Any]]) -> bytes:
    return msgspec.json.encode({"model": "m", "max_tokens": 1, "messages": messages})


def test_outputs_a_resumed_walk_did_not_keep_are_dropped_from_the_index() -> None:
    """The second request resumes before the history's last output and records one of the same
    length at an earlier place; the third resumes between the two and must still find it."""
    other = _LOGS[1] + "longer\n"
    requests = [[_LOGS[0], other, _LOGS[2]], [_LOGS[0], _LOGS[3], _LOGS[2]]]
    requests.append([_LOGS[0], _LOGS[3], _LOGS[3]])
    memo = CompressionMemo()
    for outputs in requests:
        messages: list[dict[str, Any]] = [_OPENING]
        for turn, output in enumerate(outputs):
            messages += _turn(f"t{turn}", output)
        result = compress_request(_body(messages), _CODEX, memo=memo)
        cold = compress_request(_body(messages), _CODEX)
        assert dataclasses.replace(result, seconds=0) == dataclasses.replace(cold, seconds=0)
    assert result.body is not None and b"identical to the tool result of t1" in result.body
