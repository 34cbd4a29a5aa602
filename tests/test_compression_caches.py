"""The compression caches against the uncached paths they stand for.

A command line's parse (:func:`inspect_command`) is cached for lines of a usual length, a shell
call's rule is remembered by the memo, and a framed output's JSON is spliced from its frame's and
its output's. Each must give what the plain path gives, on any input, and stay bounded.
"""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import Raw

from messages_mw.compression import CompressionMemo, bundle_named
from messages_mw.compression.commands import (
    _CACHED_COMMAND_CHARS,
    _CACHED_COMMANDS,
    _inspect,
    _inspect_cached,
    inspect_command,
)
from messages_mw.compression.history import only_place
from messages_mw.compression.memo import _MAX_SHELL_RULES
from messages_mw.compression.rewrite import Frame, _framed_json, split_frame
from messages_mw.compression.walk import _CACHED_INPUT_BYTES, Walk

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_CODEX = bundle_named("codex")
_CLAUDE = bundle_named("claude-code")
assert _CODEX is not None and _CLAUDE is not None

_WORDS = ["pytest", "-q", "cd", "app", "&&", "|", "tail", "-5", "git", "diff", "status", "find",
          ".", "node_modules", "npm", "test", "uv", "run", "cat", "x.py", "bash", "-lc", "'",
          '"', ";", "2>&1", "rg", "--files", "ls", "-la", "cargo", "go", "mypy", "\n"]  # fmt: skip
_command = st.lists(st.sampled_from(_WORDS), max_size=10).map(" ".join) | st.text(max_size=40)
_OUTPUTS = [
    "",
    "a.py::test_one PASSED [ 50%]\na.py::test_two FAILED [100%]\n1 failed, 1 passed",
    "M a.py\n?? b.py\n",
    "./node_modules/x/index.js\n./src/app.py\n./node_modules/y/z.js\n",
    "src/a.py:1: error: bad\nFound 1 error in 1 file\n",
    "test foo ... ok\ntest bar ... ok\nok  pkg 0.1s\n--- PASS: TestX\n",
]


def _same_output(cached: object, plain: object) -> None:
    from messages_mw.compression.commands import CommandOutput

    assert isinstance(cached, CommandOutput) and isinstance(plain, CommandOutput)
    assert cached.exact_lines == plain.exact_lines
    assert (cached.filter is None) == (plain.filter is None)
    if cached.filter is not None and plain.filter is not None:
        for text in _OUTPUTS:
            assert cached.filter(text) == plain.filter(text)


@_SETTINGS
@given(_command)
def test_a_cached_command_parse_equals_a_fresh_one(command: str) -> None:
    _same_output(inspect_command(command), _inspect(command))
    _same_output(inspect_command(command), _inspect(command))  # the second call: a cache hit


def test_a_long_command_line_is_not_cached() -> None:
    command = "pytest -q " + "x" * _CACHED_COMMAND_CHARS
    before = _inspect_cached.cache_info()
    _same_output(inspect_command(command), _inspect(command))
    assert _inspect_cached.cache_info() == before


def test_the_command_cache_is_bounded() -> None:
    for number in range(_CACHED_COMMANDS + 10):
        inspect_command(f"pytest -k case{number}")
    assert _inspect_cached.cache_info().currsize <= _CACHED_COMMANDS


_shell_input = st.fixed_dictionaries(
    {"command": _command | st.lists(st.sampled_from(["bash", "-lc", "pytest -q", "cat", "a"]))}
).map(msgspec.json.encode)
_tool_name = st.sampled_from(["shell", "exec_command", "Bash", "unknown", "local_shell"])


@_SETTINGS
@given(_tool_name, _shell_input)
def test_a_remembered_shell_rule_equals_a_fresh_one(name: str, tool_input: bytes) -> None:
    memo = CompressionMemo()
    for bundle in (_CODEX, _CLAUDE):
        use = {"name": Raw(msgspec.json.encode(name)), "input": Raw(tool_input)}
        plain = Walk(bundle, None).shell_rule(use)
        remembered = Walk(bundle, memo)
        first, again = remembered.shell_rule(use), remembered.shell_rule(use)
        assert again is first
        # Without a memo, other tools' output gets the walk's own text rule: compare fields.
        assert first.fields == plain.fields


def test_remembered_shell_rules_are_bounded_and_large_inputs_not_kept() -> None:
    memo = CompressionMemo()
    walk = Walk(_CODEX, memo)
    name = Raw(b'"shell"')
    for number in range(_MAX_SHELL_RULES + 5):
        walk.shell_rule({"name": name, "input": Raw(b'{"command":"pytest -k c%d"}' % number)})
    assert 0 < len(memo._shell_rules) <= _MAX_SHELL_RULES
    memo._shell_rules.clear()
    large = msgspec.json.encode({"command": "pytest " + "y" * _CACHED_INPUT_BYTES})
    walk.shell_rule({"name": name, "input": Raw(large)})
    assert not memo._shell_rules


_frame_head = st.sampled_from(
    ["Exit code 1\n", "Exit code: 0\nWall time: 0.4 seconds\nOutput:\n",
     "Exit code: 2\nWall time: 1 s\nTotal output lines: 3\nOutput:\n"]
)  # fmt: skip
_output = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@_SETTINGS
@given(_frame_head, _output)
def test_a_spliced_frame_is_the_framed_text_encoded(head: str, output: str) -> None:
    frame, inner = split_frame(head + output)
    assert frame is not None and not frame.quoted
    encoded = msgspec.json.encode(inner)
    assert _framed_json(frame, inner, encoded) == msgspec.json.encode(frame.wrap(inner))


@_SETTINGS
@given(_output, _output)
def test_a_quoted_frame_is_encoded_whole(output: str, tail: str) -> None:
    for frame in (Frame('{"output":', ',"metadata":{}}', quoted=True), Frame("head", tail)):
        encoded = msgspec.json.encode(output)
        assert _framed_json(frame, output, encoded) == msgspec.json.encode(frame.wrap(output))


def _only_place_plainly(data: bytes, part: bytes) -> int:
    """``only_place`` as two general searches, the plain path."""
    first = data.find(part)
    return first if first >= 0 and data.find(part, first + 1) < 0 else -1


_ab = st.binary(max_size=0) | st.text(alphabet="ab", max_size=150).map(str.encode)


@_SETTINGS
@given(_ab, st.lists(st.integers(min_value=0, max_value=200), max_size=14), _ab)
def test_finding_the_messages_array_by_its_first_bytes_equals_a_full_search(
    part: bytes, cuts: list[int], filler: bytes
) -> None:
    # Pieces of ``part`` (its first bytes over and over, cut anywhere) make the probe occur
    # often and overlap, past the tries after which the general search takes over.
    data = b"".join(part[:cut] if cut % 3 else filler[: cut // 3] for cut in cuts)
    for candidate in (data, data + part, part + data, data + part + data + part):
        assert only_place(candidate, part) == _only_place_plainly(candidate, part)


def test_a_probe_found_often_hands_over_to_the_general_search() -> None:
    part = b"a" * 100
    assert only_place(b"a" * 1000, part) == -1
    assert only_place(b"a" * 100, part) == 0
    assert only_place(b"ab" * 20 + b"a" * 100 + b"b", part) == 40
    many = b"a" * 64 + b"b"
    assert only_place(many * 20 + part, part) == 20 * len(many)
    assert only_place(many * 20 + part + many + part, part) == -1
