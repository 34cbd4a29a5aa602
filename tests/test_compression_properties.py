"""Hypothesis: compression keeps every earlier turn's prefix byte-identical and the API valid.

Conversations are generated the way Claude Code builds them: each request is the previous one
plus new turns, with its one rolling ``cache_control`` moved onto the newest block. Tool output
comes bare or in the agents' frames (exit code, wall time), repeated with a new wall time; the
turns of a conversation share one memo, whose results must equal those without it.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messages_mw.compression import CompressionMemo, compress_request
from messages_mw.compression.alignment import MAX_BREAKPOINTS
from messages_mw.compression.bundles import BUNDLES, Bundle

CLAUDE = BUNDLES["claude-code"]
EPHEMERAL = {"type": "ephemeral"}
_bundles = st.sampled_from(list(BUNDLES.values()))


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


_words = st.sampled_from(
    [
        "error",
        "ok",
        "src/app.py",
        "def main():",
        "return 1",
        "FAILED",
        "passed",
        "import os",
        "warning: unused",
        "  ",
        "",
        "{",
        "}",
        "é",
        "🙂",
        "\t",
        "x" * 40,
    ]
)
_line = st.lists(_words, min_size=0, max_size=6).map(" ".join)


@st.composite
def _ansi_log(draw: st.DrawFn) -> str:
    lines = draw(st.lists(_line, min_size=1, max_size=40))
    colour = draw(st.sampled_from(["\x1b[31m", "\x1b[1;32m", "\x1b[0m", "\x1b[2K\r"]))
    return "\n".join(f"{colour}{line}\x1b[0m" if i % 2 else line for i, line in enumerate(lines))


@st.composite
def _repeats(draw: st.DrawFn) -> str:
    line, count = draw(_line), draw(st.integers(1, 200))
    progress = "".join(f"\r{p}%" for p in range(0, 101, draw(st.integers(5, 50))))
    return "start\n" + (line + "\n") * count + progress + "\ndone   \n\n\n\n"


@st.composite
def _pytest(draw: st.DrawFn) -> str:
    passed, failed = draw(st.integers(0, 30)), draw(st.integers(0, 3))
    dots = "." * passed + "F" * failed
    failures = "".join(
        f"____ test_{i} ____\nE   assert {i} == {i + 1}\ntests/test_x.py:{i + 10}: AssertionError\n"
        for i in range(failed)
    )
    return f"tests/test_x.py {dots}\n{failures}{failed} failed, {passed} passed in 0.12s\n"


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)
_json_text = _json_value.map(lambda value: json.dumps(value, indent=2))
_file_read = st.lists(_line, min_size=1, max_size=60).map(
    lambda lines: "".join(f"{n:>6}\t{line}  \n" for n, line in enumerate(lines, 1))
)
_reminder = _ansi_log().map(
    lambda text: f"{text}\n<system-reminder>\n  kept   \n\n\n</system-reminder>"
)
_tool_error = _ansi_log().map(lambda text: f"<tool_use_error>{text}</tool_use_error>")
_output = st.one_of(
    _ansi_log(),
    _repeats(),
    _pytest(),
    _json_text,
    _file_read,
    _reminder,
    _tool_error,
    st.text(max_size=50),
)
_tools = st.sampled_from(
    [
        ("shell", "command", ["bash", "-lc", "uv run pytest -q"]),
        ("shell", "command", ["bash", "-lc", "sed -n '1,80p' src/app.py"]),
        ("Bash", "command", "uv run pytest -q"),
        ("Bash", "command", "npm install"),
        ("Bash", "command", "git log -p"),
        ("Bash", "command", "cat src/app.py"),
        ("Read", "file_path", "/src/app.py"),
        ("Grep", "pattern", "TODO"),
        ("WebFetch", "url", "https://example.com"),
        ("Edit", "file_path", "/src/app.py"),
        ("mcp__db__query", "sql", "select 1"),
    ]
)


def _framed(draw: st.DrawFn, output: str) -> str:
    """``output`` as an agent frames it: bare, after Claude Code's exit code line, or in one of
    Codex's frames with a wall time that differs from run to run."""
    kind = draw(st.sampled_from(["bare", "bare", "claude", "codex", "codex-json"]))
    code, seconds = draw(st.integers(0, 2)), draw(st.integers(0, 99)) / 10
    if kind == "claude":
        return f"Exit code {code}\n{output}"
    if kind == "codex":
        return f"Exit code: {code}\nWall time: {seconds} seconds\nOutput:\n{output}"
    if kind == "codex-json":
        metadata = {"exit_code": code, "duration_seconds": seconds}
        return json.dumps({"output": output, "metadata": metadata})
    return output


def _thinking(draw: st.DrawFn) -> list[dict[str, Any]]:
    kind = draw(st.sampled_from(["none", "thinking", "redacted"]))
    if kind == "thinking":
        text = draw(_ansi_log())
        return [{"type": "thinking", "thinking": text, "signature": "Sig" + "A" * 40}]
    if kind == "redacted":
        return [{"type": "redacted_thinking", "data": "opaque" + "=" * 8}]
    return []


def _result_content(draw: st.DrawFn, text: str) -> Any:
    shape = draw(st.sampled_from(["string", "string", "one-block", "with-image"]))
    if shape == "string":
        return text
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text or "-"}]
    if shape == "with-image":
        blocks.append(
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
            }
        )
    return blocks


@st.composite
def _turn(draw: st.DrawFn, turn: int, earlier: list[str]) -> list[dict[str, Any]]:
    """An assistant turn with 1-3 tool calls and the user message answering them."""
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for index in range(draw(st.integers(1, 3))):
        name, key, value = draw(_tools)
        repeat = bool(earlier) and draw(st.booleans())
        output = draw(st.sampled_from(earlier)) if repeat else draw(_output)
        earlier.append(output)
        text = _framed(draw, output)
        tool_id = f"toolu_{turn:02d}_{index}"
        calls.append({"type": "tool_use", "id": tool_id, "name": name, "input": {key: value}})
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": tool_id,
            "content": _result_content(draw, text),
        }
        if draw(st.integers(0, 9)) == 0:
            result["is_error"] = True
        results.append(result)
    lead = _thinking(draw) + (
        [{"type": "text", "text": "Let me look."}] if draw(st.booleans()) else []
    )
    extra = draw(st.sampled_from(["none", "reminder", "unknown", "pasted"]))
    if extra == "reminder":
        results.append(
            {"type": "text", "text": "<system-reminder>todo list changed</system-reminder>"}
        )
    elif extra == "unknown":
        results.append({"type": "x_future_block", "payload": {"text": "  \n\n\n"}})
    elif extra == "pasted":
        results.append({"type": "text", "text": draw(_repeats()) * 8 + "x"})
    return [{"role": "assistant", "content": lead + calls}, {"role": "user", "content": results}]


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A Claude-Code-like session: the first prompt, the environment message, then tool turns."""
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>CLAUDE.md   \n\n\n</system-reminder>"},
                {"type": "text", "text": "fix the failing test"},
            ],
        },
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "# Environment\n\n\n\ncwd: /w", "cache_control": EPHEMERAL}
            ],
        },
    ]
    earlier: list[str] = []
    for turn in range(draw(st.integers(1, 6))):
        messages += draw(_turn(turn, earlier))
    return messages


def _request(messages: list[dict[str, Any]], upto: int, *, tools_marked: bool = True) -> bytes:
    """Request with ``messages[:upto]`` and the rolling breakpoint on its newest block."""
    history = copy.deepcopy(messages[:upto])
    history[-1]["content"][-1]["cache_control"] = EPHEMERAL
    tools = [{"name": "Bash", "description": "run" * 2000, "input_schema": {"type": "object"}}]
    if tools_marked:
        tools[-1]["cache_control"] = EPHEMERAL
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 32000,
        "x_future": [1, {"a": None}],
        "system": [{"type": "text", "text": "You are an agent."}],
        "tools": tools,
        "messages": history,
    }
    return msgspec.json.encode(body)


def _cuts(messages: list[dict[str, Any]]) -> list[int]:
    """Where Claude Code sends a request: after the first prompt and after each user message."""
    return [1] + [i + 1 for i, m in enumerate(messages) if i > 1 and m["role"] == "user"]


def _compressed(
    body: bytes, bundle: Bundle = CLAUDE, memo: CompressionMemo | None = None, **options: Any
) -> dict[str, Any]:
    result = compress_request(body, bundle, memo=memo, **options)
    decoded: dict[str, Any] = msgspec.json.decode(result.body if result.body is not None else body)
    if memo is not None:
        assert compress_request(body, bundle, **options).body == result.body
    return decoded


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def _prefix_bytes(body: dict[str, Any], count: int) -> bytes:
    return msgspec.json.encode(_without_cache_control(body["messages"][:count]))


@_settings(250)
@given(conversations(), _bundles)
def test_each_request_keeps_the_previous_compressed_prefix(
    messages: list[dict[str, Any]], bundle: Bundle
) -> None:
    cuts = _cuts(messages)
    memo = CompressionMemo(max_bytes=1 << 20)  # shared by the turns, as a gateway shares it
    previous = _compressed(_request(messages, cuts[0]), bundle, memo)
    for before, after in itertools.pairwise(cuts):
        current = _compressed(_request(messages, after), bundle, memo)
        assert _prefix_bytes(current, before) == _prefix_bytes(previous, before)
        previous = current


def _cache_paths(body: dict[str, Any]) -> list[tuple[int, ...]]:
    paths: list[tuple[int, ...]] = []
    for m, message in enumerate(body["messages"]):
        for b, block in enumerate(message["content"]):
            if "cache_control" in block:
                paths.append((m, b))
            for i, inner in enumerate(block.get("content") or ()):
                if isinstance(inner, dict) and "cache_control" in inner:
                    paths.append((m, b, i))
    return paths


def _check_api_invariants(original: dict[str, Any], out: dict[str, Any]) -> None:
    assert [m["role"] for m in out["messages"]] == [m["role"] for m in original["messages"]]
    for before, after in zip(original["messages"], out["messages"], strict=True):
        assert [b["type"] for b in after["content"]] == [b["type"] for b in before["content"]]
        for b, a in zip(before["content"], after["content"], strict=True):
            if b["type"] in ("thinking", "redacted_thinking", "tool_use", "x_future_block"):
                assert a == b
            if a["type"] == "text":
                assert a["text"].strip()
            if a["type"] == "tool_result":
                content = a["content"]
                texts = (
                    [content]
                    if isinstance(content, str)
                    else [c["text"] for c in content if c["type"] == "text"]
                )
                assert all(t.strip() for t, o in zip(texts, _texts(b), strict=True) if o.strip())
    messages = out["messages"]
    for index, message in enumerate(messages):
        ids = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
        if message["role"] != "assistant" or not ids:
            continue
        answer = messages[index + 1]["content"]
        results = [b["tool_use_id"] for b in answer if b["type"] == "tool_result"]
        assert results == ids
        assert all(b["type"] == "tool_result" for b in answer[: len(results)])
    assert _cache_paths(out) == _cache_paths(original)


def _texts(block: dict[str, Any]) -> list[str]:
    content = block["content"]
    return (
        [content]
        if isinstance(content, str)
        else [c["text"] for c in content if c["type"] == "text"]
    )


@_settings(120)
@given(conversations(), st.booleans(), _bundles)
def test_api_invariants_hold_after_compression(
    messages: list[dict[str, Any]], tools_marked: bool, bundle: Bundle
) -> None:
    body = _request(messages, len(messages), tools_marked=tools_marked)
    original = msgspec.json.decode(body)
    out = _compressed(body, bundle)
    _check_api_invariants(original, out)
    assert {k: v for k, v in out.items() if k != "messages"} == {
        k: v for k, v in original.items() if k != "messages"
    }
    # The client set breakpoints, so alignment adds none.
    assert _compressed(body, bundle, align_cache=True) == out


@_settings(80)
@given(conversations())
def test_alignment_stays_within_the_breakpoint_limit(messages: list[dict[str, Any]]) -> None:
    plain = _without_cache_control(msgspec.json.decode(_request(messages, len(messages))))
    body = msgspec.json.encode(plain)
    out = _compressed(body, align_cache=True)
    assert 1 <= json.dumps(out).count('"cache_control"') <= MAX_BREAKPOINTS
    assert _without_cache_control(out) == _without_cache_control(_compressed(body))


@_settings(100)
@given(conversations(), st.data())
def test_compression_is_deterministic_and_blind_to_cache_control(
    messages: list[dict[str, Any]], data: st.DataObject
) -> None:
    body = _request(messages, len(messages))
    first = compress_request(body, CLAUDE)
    assert compress_request(bytes(body), CLAUDE).body == first.body
    marked = copy.deepcopy(messages)
    for message in marked:
        for block in message["content"]:
            if data.draw(st.integers(0, 3)) == 0:
                block["cache_control"] = EPHEMERAL
    remarked = _compressed(_request(marked, len(marked)))
    assert _without_cache_control(remarked) == _without_cache_control(_compressed(body))
