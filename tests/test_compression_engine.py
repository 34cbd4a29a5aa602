"""The compression engine: which blocks it rewrites, what it never touches, dedupe, alignment."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest

from messages_mw import compression
from messages_mw.compression import (
    BUNDLE_NAMES,
    Bundle,
    CompressionMemo,
    bundle_named,
    compress_request,
    detect_bundle,
)
from messages_mw.compression.alignment import MAX_BREAKPOINTS, MIN_PREFIX_BYTES
from messages_mw.compression.bundles import BUNDLES
from messages_mw.compression.engine import DEDUPE_MIN_BYTES, EMPTY_MARKER
from messages_mw.compression.rewrite import split_frame

from .servers import SAMPLES

CLAUDE = BUNDLES["claude-code"]
CODEX = BUNDLES["codex"]

# ANSI colours, trailing blanks and a long run of one line: every text rule shrinks this.
NOISY = "".join(f"\x1b[32mok\x1b[0m step {i % 3}   \n" for i in range(40)) + "\n\n\n\ndone\n"
# The same text as a file's content, line-numbered as Claude Code's Read returns it.
FILE_TEXT = "".join(f"{n:>6}\t{line}\n" for n, line in enumerate(NOISY.splitlines(), 1))
# A build log with distinct lines: its colours and trailing blanks go, its lines all stay.
BUILD_LOG = "".join(
    f"\x1b[1m{name}\x1b[0m compiled in {i} ms   \n"
    for i, name in enumerate(f"module_{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(40))
)
_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _body(messages: list[dict[str, Any]], **top: Any) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 5, **top, "messages": messages}).encode()


def _call(tool_id: str, name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input}


def _result(tool_id: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": content, **extra}


def _turns(*calls: tuple[str, str, dict[str, Any], Any]) -> list[dict[str, Any]]:
    """A user prompt, then one assistant turn and its results per call."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    for tool_id, name, tool_input, output in calls:
        messages.append({"role": "assistant", "content": [_call(tool_id, name, tool_input)]})
        messages.append({"role": "user", "content": [_result(tool_id, output)]})
    return messages


def _compress(body: bytes, bundle: Bundle = CLAUDE, **options: Any) -> dict[str, Any]:
    result = compress_request(body, bundle, **options)
    assert result.body is not None
    decoded: dict[str, Any] = json.loads(result.body)
    return decoded


def _outputs(body: dict[str, Any]) -> list[Any]:
    return [
        block.get("content")
        for message in body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]


def test_public_names() -> None:
    assert sorted(compression.__all__) == [
        "BUNDLE_NAMES",
        "Bundle",
        "CompressionMemo",
        "CompressionResult",
        "TextOptions",
        "bundle_named",
        "compress_request",
        "compress_tool_text",
        "detect_bundle",
    ]


# --- what is rewritten, by the tool that produced it ---


def test_shell_output_is_compressed_and_the_call_is_not() -> None:
    body = _body(_turns(("t1", "Bash", {"command": "make"}, NOISY)))
    out = _compress(body)
    (text,) = _outputs(out)
    assert len(text) < len(NOISY) and "\x1b" not in text and "done" in text
    assert out["messages"][1] == json.loads(body)["messages"][1]


@pytest.mark.parametrize("name", ["Read", "Edit", "Write", "MultiEdit"])
def test_file_read_and_edit_results_are_kept_exactly(name: str) -> None:
    body = _body(_turns(("t1", name, {"file_path": "/a.py"}, FILE_TEXT)))
    assert compress_request(body, CLAUDE).body is None


@pytest.mark.parametrize(
    ("command", "verbatim"),
    [
        (["bash", "-lc", "sed -n '1,200p' src/app.py"], True),
        (["bash", "-lc", "cd src && nl -ba app.py | sed -n '1,80p'"], True),
        (["cat", "README.md"], True),
        (["bash", "-lc", "make test"], False),
        (["bash", "-lc", "cat log.txt | grep ERROR"], False),
    ],
)
def test_codex_argv_commands_and_file_reads(command: list[str], verbatim: bool) -> None:
    body = _body(_turns(("c1", "shell", {"command": command, "workdir": "/w"}, NOISY)))
    result = compress_request(body, CODEX)
    assert (result.body is None) is verbatim


@pytest.mark.parametrize(
    ("command", "reads"),
    [
        ("cat a.py", True),
        ("FOO=1 /bin/cat a.py b.py 2>/dev/null", True),
        ("sed -n '1,20p;30p' a.py", True),
        ('cat "a \\" b;c" 2>&1 | head -n 5', True),
        ("cd src", False),
        ("cat a.py; rm -rf b", False),
        ("cat a.py & make", False),
        ("cat 'unbalanced", False),
        ("make", False),
        # Files named by what comes first, printed by the last program.
        ("find src -name '*.py' | xargs cat", True),
        ("ls src/*.py | xargs -n 1 cat", True),
        ("git ls-files '*.json' | xargs -0 head -n 50", True),
        ("find . -name '*.cfg' -exec cat {} \\;", True),
        ("cd src && find . -type f -exec cat {} +", True),
        ("find . | xargs grep foo", False),
        ("find . -exec rm {} +", False),
        ("pytest | tail -50", False),
        ("pytest |& cat", False),
        ("ls | xargs", False),
    ],
)
def test_reads_files_recognises_only_printing_programs(command: str, reads: bool) -> None:
    assert CODEX.reads_files(command) is reads


@pytest.mark.parametrize(
    "command", ["find src -name '*.py' | xargs cat", "find src -name '*.json' -exec cat {} +"]
)
def test_files_printed_through_xargs_or_find_exec_are_kept_exactly(command: str) -> None:
    # Code with blank runs, trailing blanks and lines alike but for digits: all of it counts.
    code = "import os\n\n\n\nLEVELS = {\n" + "".join(f"    'l{n}': {n},\n" for n in range(1, 6))
    code += "}\n\n\ndef f(x):  \n    return x\n" + json.dumps({"a": 1, "b": [1, 2]}, indent=2)
    body = _body(_turns(("t1", "Bash", {"command": command}, code)))
    assert compress_request(body, CLAUDE).body is None


@pytest.mark.parametrize(
    "command", ["git cat-file -p HEAD:tsconfig.json", "git cat-file blob 3b18e51", "git blame a.py"]
)
def test_files_printed_by_git_are_kept_exactly(command: str) -> None:
    # A blob as stored: not minified, blank runs and lines alike but for digits all kept.
    tsconfig = json.dumps({"compilerOptions": {"strict": True, "paths": {"a": ["b"]}}}, indent=2)
    code = "\n\n\n\nLEVELS = {\n" + "".join(f"    'l{n}': {n},\n" for n in range(1, 6)) + "}\n"
    for content in (tsconfig + "\n", code):
        body = _body(_turns(("t1", "Bash", {"command": command}, content)))
        assert compress_request(body, CLAUDE).body is None


@pytest.mark.parametrize(
    "tool", ["mcp__filesystem__read_text_file", "mcp__github__get_file_contents", "view"]
)
def test_tools_named_as_file_readers_keep_their_output_exactly(tool: str) -> None:
    tsconfig = json.dumps({"compilerOptions": {"strict": True}}, indent=2) + "\n\n\n"
    body = _body(_turns(("t1", tool, {"path": "tsconfig.json"}, tsconfig + FILE_TEXT)))
    assert compress_request(body, CLAUDE).body is None


def test_plain_diff_output_keeps_its_trailing_blanks_and_every_changed_line() -> None:
    old = "".join(f"< id{n} = {n}0  \n" for n in range(8))
    output = f"1,8c1,8\n{old}---\n" + "".join(f"> id{n} = {n}1\n" for n in range(8))
    body = _body(_turns(("t1", "Bash", {"command": "diff expected.txt actual.txt"}, output)))
    assert compress_request(body, CLAUDE).body is None


def test_commands_and_descriptions_of_calls() -> None:
    def raw(value: Any) -> msgspec.Raw:
        return msgspec.Raw(msgspec.json.encode(value))

    assert CODEX.command("shell", raw({"command": ["bash", "-lc", "ls"]})) == "ls"
    assert CODEX.command("shell", raw({"command": ["rg", "-n", "a b"]})) == "rg -n 'a b'"
    assert CODEX.command("exec_command", raw({"cmd": "ls"})) == "ls"
    assert CODEX.command("apply_patch", raw({"input": "x"})) is None
    assert CLAUDE.command("Bash", raw({"command": 3})) is None
    assert CLAUDE.describe("Bash", raw({"command": "make\nmake install"})) == "Bash: make"
    assert CLAUDE.describe("Read", raw({"file_path": "/" + "a" * 100})).endswith("a…")
    assert CLAUDE.describe("Task", raw({"prompt": "x"})) == "Task"
    assert CLAUDE.describe("Task", raw([1])) == "Task"


def test_other_tools_and_unknown_ids_get_the_generic_rules() -> None:
    messages = _turns(("t1", "WebFetch", {"url": "https://x"}, NOISY))
    messages.append({"role": "user", "content": [_result("nobody", NOISY + "x")]})
    for text in _outputs(_compress(_body(messages))):
        assert len(text) < len(NOISY) and "\x1b" not in text


# Search matches as each agent's own grep tool returns them. Claude Code's Grep on one file:
# rg prints no path then (and keeps a line's trailing blanks); OpenCode's grep: a header, the
# file, then "  Line N: text" per match; Cursor's grep_search: "File: path" and "Line N: text".
GREP_ONE_FILE = "".join(f"{10 * i}:    total_{i} = compute({i})  \n" for i in range(1, 9))
OPENCODE_GREP = "Found 8 matches\nsrc/app.py:\n" + "".join(
    f"  Line {10 * i}: total_{i} = compute({i})\n" for i in range(1, 9)
)
CURSOR_GREP = "".join(
    f"File: src/app.py\nLine {10 * i}: total_{i} = compute({i})\n" for i in range(1, 9)
)


@pytest.mark.parametrize(
    ("bundle", "tool", "output"),
    [
        ("claude-code", "Grep", GREP_ONE_FILE),
        ("opencode", "grep", OPENCODE_GREP),
        ("cursor", "grep_search", CURSOR_GREP),
        ("generic", "search_files", GREP_ONE_FILE),
    ],
    ids=["claude-code", "opencode", "cursor", "generic"],
)
@pytest.mark.parametrize("memo", [None, CompressionMemo()], ids=["cold", "memo"])
def test_search_tools_keep_every_match_exactly(
    bundle: str, tool: str, output: str, memo: CompressionMemo | None
) -> None:
    # The generic rules would merge these near-identical lines and trim their blanks.
    body = _body(_turns(("t1", tool, {"pattern": "compute"}, output)))
    assert compress_request(body, BUNDLES[bundle], memo=memo).body is None


def test_a_search_tool_gets_what_rg_through_the_shell_gets() -> None:
    matches = "".join(f"src/app.py:{n}:    total = compute({n})\n" for n in range(1, 80))
    search = _turns(("t1", "Grep", {"pattern": "compute", "output_mode": "content"}, matches))
    shell = _turns(("t1", "Bash", {"command": "rg -n compute"}, matches))
    (text,) = _outputs(_compress(_body(search)))
    assert [text] == _outputs(_compress(_body(shell)))
    assert "src/app.py:50:" in text and "29 more matches in src/app.py" in text


# A failing verbose pytest run as Claude Code sends it: its exit code line, then the output.
FAILING_RUN = "Exit code 1\n" + "".join(
    [
        "============================= test session starts ==============================\n",
        *(f"tests/test_api.py::test_case_{i} PASSED{' ' * 20}[{i:3d}%]\n" for i in range(60)),
        "tests/test_api.py::test_refund FAILED\n",
        "=================================== FAILURES ===================================\n",
        "_________________________________ test_refund __________________________________\n",
        "tests/test_api.py:88: in test_refund\n",
        "    assert refund(order) == 10\n",
        "E   assert 9 == 10\n",
        "=========================== short test summary info ============================\n",
        "FAILED tests/test_api.py::test_refund - assert 9 == 10\n",
        "======================== 1 failed, 60 passed in 3.21s =========================\n",
    ]
)
FAILURE_LINES = (
    "tests/test_api.py:88: in test_refund",
    "    assert refund(order) == 10",
    "E   assert 9 == 10",
    "FAILED tests/test_api.py::test_refund - assert 9 == 10",
)


def _failing(tool_id: str, content: Any) -> dict[str, Any]:
    return _result(tool_id, content, is_error=True)


def test_error_results_are_filtered_like_any_command_output() -> None:
    messages = _turns(("t1", "Bash", {"command": "python -m pytest -v"}, ""))
    messages[-1]["content"] = [_failing("t1", FAILING_RUN)]
    out = _compress(_body(messages))
    (text,) = _outputs(out)
    assert len(text) < len(FAILING_RUN) / 2
    assert text.startswith("Exit code 1\n") and "test_case_7 PASSED" not in text
    for line in FAILURE_LINES:
        assert line in text
    assert "1 failed, 60 passed" in text
    assert out["messages"][-1]["content"][0]["is_error"] is True


def test_error_results_are_capped() -> None:
    huge = "Exit code 2\n" + "".join(f"src/m.py:{i}: line {i} failed\n" for i in range(20_000))
    messages = _turns(("t1", "Bash", {"command": "make"}, ""))
    messages[-1]["content"] = [_failing("t1", huge)]
    (text,) = _outputs(_compress(_body(messages)))
    assert len(text) <= CLAUDE.text.cap_chars + 100  # type: ignore[operator]
    assert text.startswith("Exit code 2\nsrc/m.py:0: line 0 failed") and "src/m.py:19999" in text


def test_a_diff_keeps_its_form_feed_lines() -> None:
    # Python and GNU C sources use ^L page breaks; a diff quoting one must still apply.
    diff = (
        "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,4 +1,4 @@\n"
        " import os\n-a = 1\n+a = 2\n \x0c\n def f():\n"
    )
    body = _body(_turns(("t1", "Bash", {"command": "git diff"}, diff)))
    assert compress_request(body, CLAUDE).body is None


def test_agent_error_markers_are_kept() -> None:
    error = "<tool_use_error>" + NOISY + "</tool_use_error>"
    body = _body(_turns(("t1", "Bash", {"command": "make"}, error)))
    assert compress_request(body, CLAUDE).body is None


def test_list_content_text_blocks_are_compressed_and_images_kept() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
    }
    content = [{"type": "text", "text": NOISY}, image]
    out = _compress(_body(_turns(("t1", "mcp__x__run", {}, content))))
    (blocks,) = _outputs(out)
    assert len(blocks[0]["text"]) < len(NOISY) and blocks[1] == image


def test_empty_rewrites_keep_a_marker() -> None:
    blank = "\x1b[0m   \n" * 300
    out = _compress(_body(_turns(("t1", "Bash", {"command": "make"}, blank))))
    assert _outputs(out) == [EMPTY_MARKER]


@pytest.mark.parametrize("blank", ["   \n", " \n\n ", "\n\n\n", "\t"])
def test_a_blank_text_is_never_rewritten_to_an_empty_one(blank: str) -> None:
    content = [{"type": "text", "text": blank}, {"type": "text", "text": "ok"}]
    body = _body(_turns(("t1", "Bash", {"command": "make"}, content)))
    result = compress_request(body, CLAUDE)
    if result.body is not None:
        (blocks,) = _outputs(json.loads(result.body))
        assert blocks[0]["text"] == blank
    assert compression.rewrite.shrink(blank, CLAUDE.text, "make") == blank


# --- user text ---


@pytest.mark.parametrize(
    "pasted",
    [
        # Under 2,048 characters, over 2,048 bytes as JSON: each newline is written \n.
        "".join(f"INFO step {i:03d} ok   \n" for i in range(100)),
        "".join(f"\u65e5\u5fd7 {i:03d} \u6b63\u5e38   \n" for i in range(150)),  # CJK
        "".join(f"INFO step {i:03d} ok   \n" for i in range(120)),  # over 2,048 characters
        "short prose   \n",
    ],
    ids=["escapes", "cjk", "long", "short"],
)
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_a_prompt_compresses_alike_as_a_string_and_as_a_block(
    pasted: str, ensure_ascii: bool
) -> None:
    # Claude Code sends a prompt as a text block while it carries the cache breakpoint, as a
    # string once the breakpoint moves on: the next turn must repeat the cached prefix.
    def sent(content: Any) -> str:
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]
        body = json.dumps(
            {"model": "m", "max_tokens": 5, "messages": messages}, ensure_ascii=ensure_ascii
        )
        result = compress_request(body.encode(), CLAUDE)
        first = json.loads(result.body or body)["messages"][0]["content"]
        return first if isinstance(first, str) else first[0]["text"]

    block = [{"type": "text", "text": pasted, "cache_control": {"type": "ephemeral"}}]
    assert sent(pasted) == sent(block)
    # Pasted text from 2,048 characters on is compressed (trailing blanks trimmed).
    assert (sent(pasted) != pasted) == (len(pasted) >= 2048)


def test_large_pasted_user_text_is_compressed_small_prose_is_not() -> None:
    pasted = NOISY * 4
    assert len(pasted) >= 2048
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "why does this fail?"},
                {"type": "text", "text": pasted},
            ],
        },
    ]
    out = _compress(_body(messages))
    small, big = out["messages"][0]["content"]
    assert small["text"] == "why does this fail?" and len(big["text"]) < len(pasted)
    out = _compress(_body([{"role": "user", "content": pasted}]))
    assert len(out["messages"][0]["content"]) < len(pasted)


def test_pasted_code_keeps_its_line_numbers() -> None:
    # A PEP 8 file (two blank lines between functions, a run of equal lines) and a question
    # about one of its lines: every line must stay where it was.
    source = "import os\n\n\n" + "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(120))
    source += "x = [\n" + "    0,\n" * 5 + "]  \n"
    prompt = "Why does line 12 of this file fail?\n\n" + source
    out = _compress(_body([{"role": "user", "content": prompt}]))
    # Only the trailing blanks of the last line go.
    assert out["messages"][0]["content"].split("\n") == prompt.replace("  \n", "\n").split("\n")


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>" + NOISY * 4}]},
        {"role": "user", "content": [{"type": "text", "text": NOISY * 4, "citations": []}]},
        {"role": "assistant", "content": [{"type": "text", "text": NOISY * 4}]},
        {"role": "system", "content": [{"type": "text", "text": NOISY * 4}]},
        {"role": "system", "content": NOISY * 4},
        {"role": "user", "content": [{"type": "text", "text": NOISY}]},
    ],
)
def test_text_the_engine_leaves_alone(message: dict[str, Any]) -> None:
    assert compress_request(_body([message]), CLAUDE).body is None


def test_a_bundle_without_pasted_text_rules_leaves_user_text() -> None:
    bundle = Bundle("x", {}, frozenset(), CLAUDE.text, pasted_text=None)
    assert compress_request(_body([{"role": "user", "content": NOISY * 4}]), bundle).body is None


# --- agent frames around shell output ---

PYTEST_RUN = FAILING_RUN.split("\n", 1)[1]
SED = ["bash", "-lc", "sed -n '1,200p' src/app.py"]


def _codex_text(output: str, code: int = 0, seconds: float = 0.4) -> str:
    return f"Exit code: {code}\nWall time: {seconds} seconds\nOutput:\n{output}"


def _codex_json(output: str, code: int = 0, seconds: float = 0.4) -> str:
    metadata = {"exit_code": code, "duration_seconds": seconds}
    return json.dumps({"output": output, "metadata": metadata})


def _unframed(text: str) -> tuple[str, str]:
    """The output inside a codex frame, and the frame's header (or its metadata as JSON)."""
    if text.startswith("{"):
        decoded = json.loads(text)
        return decoded["output"], json.dumps(decoded["metadata"])
    header, output = text.split("Output:\n", 1)
    return output, header


@pytest.mark.parametrize("frame", [_codex_text, _codex_json])
def test_codex_frames_stay_and_the_output_inside_is_filtered(frame: Any) -> None:
    text = frame(PYTEST_RUN, 1, 3.2)
    command = ["bash", "-lc", "python -m pytest -v"]
    (out,) = _outputs(_compress(_body(_turns(("c1", "shell", {"command": command}, text))), CODEX))
    output, header = _unframed(out)
    assert len(out) < len(text) / 2 and (output, header) != _unframed(text)
    assert header == _unframed(text)[1]
    assert "test_case_7 PASSED" not in output and "1 failed, 60 passed" in output
    for line in FAILURE_LINES:
        assert line in output


def test_codex_header_lines_are_all_kept() -> None:
    header = "Exit code: 1\nWall time: 3.2 seconds\nTotal output lines: 900\nOutput:\n"
    command = ["bash", "-lc", "python -m pytest -v"]
    body = _body(_turns(("c1", "shell", {"command": command}, header + PYTEST_RUN)))
    (out,) = _outputs(_compress(body, CODEX))
    assert out.startswith(header) and "E   assert 9 == 10" in out


@pytest.mark.parametrize("frame", [_codex_text, _codex_json])
def test_codex_rereads_refer_to_the_first_read_which_stays_exact(frame: Any) -> None:
    messages = _turns(
        ("c1", "shell", {"command": SED}, frame(FILE_TEXT, 0, 0.1)),
        ("c2", "shell", {"command": SED}, frame(FILE_TEXT, 0, 0.3)),
    )
    first, second = _outputs(_compress(_body(messages), CODEX))
    assert first == frame(FILE_TEXT, 0, 0.1)
    reference = (
        "[messages_mw: output identical to the tool result of c1 above"
        " (shell: sed -n '1,200p' src/app.py)]"
    )
    assert _unframed(second) == _unframed(frame(reference, 0, 0.3))
    alone = _body(_turns(("c1", "shell", {"command": SED}, frame(FILE_TEXT, 0, 0.1))))
    assert compress_request(alone, CODEX).body is None


def test_a_frame_whose_output_compresses_away_keeps_a_marker() -> None:
    text = _codex_text("\x1b[0m   \n" * 300, 0, 0.1)
    body = _body(_turns(("c1", "shell", {"command": ["bash", "-lc", "make"]}, text)))
    assert _outputs(_compress(body, CODEX)) == [_codex_text(EMPTY_MARKER, 0, 0.1)]


@pytest.mark.parametrize(
    "text",
    [
        "Exit code: x\nOutput:\n" + NOISY,
        "Exit code 1",
        '{"output": "' + "a" * 600 + '"}',
        '{"output": 5, "metadata": {}}',
        '{"output": "unterminated',
    ],
)
def test_what_is_not_a_frame_is_plain_output(text: str) -> None:
    assert split_frame(text) == (None, text)


# --- deduplication ---


def test_identical_results_become_references_to_the_first() -> None:
    messages = _turns(
        ("r1", "Read", {"file_path": "/src/app.py"}, FILE_TEXT),
        ("r2", "Read", {"file_path": "/src/app.py"}, FILE_TEXT),
        ("b1", "Bash", {"command": "cat /src/app.py"}, FILE_TEXT),
    )
    first, second, third = _outputs(_compress(_body(messages)))
    assert first == FILE_TEXT
    assert second == "[messages_mw: identical to the tool result of r1 above (Read /src/app.py)]"
    assert third == second


def test_dedupe_compares_compressed_text_and_needs_a_minimum_size() -> None:
    recoloured = BUILD_LOG.replace("[1m", "[4m")
    messages = _turns(
        ("b1", "Bash", {"command": "make\nmake install"}, BUILD_LOG),
        ("b2", "Bash", {"command": "make"}, recoloured),
    )
    first, second = _outputs(_compress(_body(messages)))
    assert len(first) >= DEDUPE_MIN_BYTES and first.count("\n") == 40 and "\x1b" not in first
    assert second == "[messages_mw: identical to the tool result of b1 above (Bash: make)]"
    short = "x" * (DEDUPE_MIN_BYTES - 3)  # with its quotes, one byte short of the minimum
    messages = _turns(("r1", "Read", {}, short), ("r2", "Read", {}, short))
    assert compress_request(_body(messages), CLAUDE).body is None
    at_minimum = "x" * (DEDUPE_MIN_BYTES - 2)  # with its quotes, the minimum itself
    messages = _turns(("r1", "Read", {}, at_minimum), ("r2", "Read", {}, at_minimum))
    assert _outputs(_compress(_body(messages)))[1].startswith("[messages_mw: identical to")
    # The minimum holds on the compressed text too: a few coloured lines compress to well
    # under it, and both copies stay.
    few_lines = "\n".join(BUILD_LOG.splitlines()[:4])
    messages = _turns(
        ("b1", "Bash", {"command": "make"}, few_lines),
        ("b2", "Bash", {"command": "make"}, few_lines),
    )
    compressed = compress_request(_body(messages), CLAUDE).body
    kept = _outputs(json.loads(compressed)) if compressed else [few_lines, few_lines]
    assert kept[0] == kept[1] and "messages_mw:" not in kept[1]


def test_agent_errors_are_never_replaced_by_references() -> None:
    error = "<tool_use_error>" + "x" * DEDUPE_MIN_BYTES + "</tool_use_error>"
    messages = _turns(("r1", "Read", {}, error), ("r2", "Read", {}, error))
    messages += _turns(("b1", "Bash", {"command": "make"}, error), ("b2", "Bash", {}, error))[1:]
    assert compress_request(_body(messages), CLAUDE).body is None


def test_a_repeated_failure_refers_to_the_first_and_keeps_its_exit_code() -> None:
    messages = _turns(
        ("t1", "Bash", {"command": "python -m pytest -v"}, ""),
        ("t2", "Bash", {"command": "python -m pytest -v"}, ""),
    )
    messages[2]["content"] = [_failing("t1", FAILING_RUN)]
    messages[4]["content"] = [_failing("t2", FAILING_RUN.replace("Exit code 1", "Exit code 3"))]
    first, second = _outputs(_compress(_body(messages)))
    assert "E   assert 9 == 10" in first
    assert second == (
        "Exit code 3\n[messages_mw: output identical to the tool result of t1 above"
        " (Bash: python -m pytest -v)]"
    )


def test_single_text_block_content_is_deduplicated_multi_block_is_not() -> None:
    one = [{"type": "text", "text": FILE_TEXT}]
    two = [{"type": "text", "text": FILE_TEXT}, {"type": "text", "text": "tail"}]
    messages = _turns(
        ("r1", "Read", {}, FILE_TEXT), ("r2", "Read", {}, one), ("r3", "Read", {}, two)
    )
    _, second, third = _outputs(_compress(_body(messages)))
    assert second[0]["text"].startswith("[messages_mw: identical to the tool result of r1")
    assert third == two


# --- what is never touched ---


def test_untouched_values_are_byte_identical() -> None:
    signature = "EqQBCkgIARABGAIiQL" + "x" * 300
    top = {
        "system": [{"type": "text", "text": "you are", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
        "future_field": {"nested": [1, 2.5, "é"]},
        "cache_control": {"type": "ephemeral"},
    }
    messages = _turns(("t1", "Bash", {"command": "make", "z": [1e5]}, NOISY))
    messages[1]["content"][:0] = [
        {"type": "thinking", "thinking": "hmm   \n\n\n", "signature": signature},
        {"type": "redacted_thinking", "data": "opaque=="},
        {"type": "hologram", "payload": {"x": NOISY}},
    ]
    messages.insert(1, {"role": "system", "content": [{"type": "text", "text": NOISY * 4}]})
    body = _body(messages, **top).replace(b"100000.0", b"1E5")
    result = compress_request(body, CLAUDE)
    assert result.body is not None
    before, after = _raw_fields.decode(body), _raw_fields.decode(result.body)
    assert list(before) == list(after)
    for name in ("model", "system", "tools", "future_field", "cache_control"):
        assert bytes(before[name]) == bytes(after[name])
    raw_before = msgspec.json.decode(before["messages"], type=list[dict[str, msgspec.Raw]])
    raw_after = msgspec.json.decode(after["messages"], type=list[dict[str, msgspec.Raw]])
    for index in (1, 2):
        assert msgspec.json.decode(raw_before[index]["content"]) == msgspec.json.decode(
            raw_after[index]["content"]
        )
    blocks = list[dict[str, msgspec.Raw]]
    thinking_after = msgspec.json.decode(raw_after[2]["content"], type=blocks)[0]
    thinking_before = msgspec.json.decode(raw_before[2]["content"], type=blocks)[0]
    assert list(thinking_after) == ["type", "thinking", "signature"]
    for key, value in thinking_before.items():
        assert bytes(thinking_after[key]) == bytes(value)
    tool_use = msgspec.json.decode(raw_after[2]["content"], type=blocks)[3]
    assert bytes(tool_use["input"]) == b'{"command": "make", "z": [1E5]}'


def test_key_order_unknown_fields_and_cache_control_stay_put() -> None:
    result_block = {
        "content": NOISY,
        "x_extra": 1,
        "cache_control": {"type": "ephemeral"},
        "type": "tool_result",
        "tool_use_id": "t1",
    }
    messages = _turns(("t1", "Bash", {"command": "make"}, NOISY))
    messages[-1] = {"content": [result_block], "role": "user", "x_note": 7}
    out = _compress(_body(messages))
    block = out["messages"][-1]["content"][0]
    assert list(block) == list(result_block)
    assert block["cache_control"] == {"type": "ephemeral"} and block["x_extra"] == 1
    assert list(out["messages"][-1]) == ["content", "role", "x_note"]


def test_cache_control_does_not_change_how_a_block_is_compressed() -> None:
    plain = _turns(("t1", "Bash", {"command": "make"}, NOISY))
    marked = json.loads(json.dumps(plain))
    marked[-1]["content"][0]["cache_control"] = {"type": "ephemeral"}
    a, b = _compress(_body(plain)), _compress(_body(marked))
    del b["messages"][-1]["content"][0]["cache_control"]
    assert a == b


def test_unusual_shapes_raise_nothing() -> None:
    for body in (b"[]", b"{}", b'{"messages": 3}', b'{"messages": [1, "x"]}', b"not json"):
        assert compress_request(body, CLAUDE).body is None
    odd = _turns(("t1", "Bash", {"command": "make"}, NOISY))
    odd.append({"role": "user", "content": 42})
    odd.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": 5}]})
    odd.append({"role": "user", "content": [_result("t1", {"weird": True})]})
    out = _compress(_body(odd))
    assert out["messages"][-3:] == odd[-3:]


def test_a_body_msgspec_cannot_decode_is_forwarded_unchanged() -> None:
    # msgspec rejects lone surrogate escapes, which the JSON spec tolerates.
    messages = _turns(("t1", "Bash", {"command": "make"}, NOISY), ("t2", "Bash", {}, "PLACEHOLDER"))
    body = _body(messages).replace(b"PLACEHOLDER", b"\\ud800 broken")
    assert json.loads(body)
    assert compress_request(body, CLAUDE).body is None


def test_no_tool_output_means_no_body_and_stable_numbers() -> None:
    body = (SAMPLES / "small_chat.json").read_bytes()
    result = compress_request(body, CLAUDE)
    assert result.body is None and result.bytes_before == result.bytes_after == len(body)
    assert result.tokens_saved == 0 and result.bundle == "claude-code"


def test_result_counts_tool_bytes() -> None:
    body = _body(_turns(("t1", "Bash", {"command": "make"}, NOISY)))
    result = compress_request(body, CLAUDE)
    assert result.body is not None
    assert result.tool_bytes_before == len(msgspec.json.encode(NOISY))
    assert result.tool_bytes_after == len(msgspec.json.encode(_outputs(json.loads(result.body))[0]))
    saved = result.tool_bytes_before - result.tool_bytes_after
    assert result.tokens_saved == saved // 4 > 0
    assert result.bytes_after == len(result.body) and result.seconds >= 0


def test_output_is_deterministic() -> None:
    body = (SAMPLES / "agent_turn.json").read_bytes()
    assert compress_request(body, CLAUDE).body == compress_request(bytes(body), CLAUDE).body


# --- real samples ---


def _structure(body: dict[str, Any]) -> list[Any]:
    return [
        (
            m["role"],
            [
                (b["type"], b.get("id"), b.get("tool_use_id"), "cache_control" in b)
                for b in m["content"]
            ]
            if isinstance(m["content"], list)
            else "str",
        )
        for m in body["messages"]
    ]


@pytest.mark.parametrize("name", ["agent_turn.json", "long_context.json"])
def test_samples_keep_everything_but_tool_text(name: str) -> None:
    body = (SAMPLES / name).read_bytes()
    original = json.loads(body)
    for bundle_name in BUNDLE_NAMES:
        bundle = bundle_named(bundle_name)
        assert bundle is not None
        result = compress_request(body, bundle)
        out = json.loads(result.body) if result.body is not None else original
        assert _structure(out) == _structure(original)
        assert {k: v for k, v in out.items() if k != "messages"} == {
            k: v for k, v in original.items() if k != "messages"
        }
        for before, after in zip(original["messages"], out["messages"], strict=True):
            if before["role"] != "user":
                assert before == after


def test_claude_code_sample_compresses_shell_output_and_keeps_reads() -> None:
    body = (SAMPLES / "agent_turn.json").read_bytes()
    original, out = json.loads(body), _compress(body)
    reads = {
        b["id"]
        for m in original["messages"]
        if m["role"] == "assistant"
        for b in m["content"]
        if b["type"] == "tool_use" and b["name"] == "Read"
    }
    errors = 0
    for before, after in zip(original["messages"], out["messages"], strict=True):
        for b, a in zip(before["content"], after["content"], strict=True):
            if b["type"] == "tool_result" and b["tool_use_id"] in reads:
                assert a == b
            elif b["type"] == "tool_result" and b.get("is_error"):
                errors += 1
                assert a["is_error"] is True
                for line in b["content"].splitlines():
                    if re.search(r"FAILED|Error|\.py:\d+", line):
                        assert line.rstrip() in a["content"]
    assert errors


# --- cache alignment ---


def _tools(count: int, size: int) -> list[dict[str, Any]]:
    return [
        {"name": f"t{i}", "description": "d" * size, "input_schema": {"type": "object"}}
        for i in range(count)
    ]


def _breakpoints(body: dict[str, Any]) -> list[str]:
    found = [f"tools.{i}" for i, t in enumerate(body.get("tools", [])) if "cache_control" in t]
    system = body.get("system")
    if isinstance(system, list):
        found += [f"system.{i}" for i, b in enumerate(system) if "cache_control" in b]
    return found


def test_alignment_marks_the_last_tool_and_system_block() -> None:
    body = _body([{"role": "user", "content": "hi"}], system="be brief", tools=_tools(3, 2000))
    out = _compress(body, align_cache=True)
    assert _breakpoints(out) == ["tools.2", "system.0"]
    assert out["system"] == [
        {"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}
    ]
    assert len(_breakpoints(out)) <= MAX_BREAKPOINTS
    assert compress_request(body, CLAUDE).body is None


def test_alignment_skips_deferred_tools_empty_text_and_small_prefixes() -> None:
    tools = [*_tools(2, 2000), {"name": "later", "defer_loading": True, "input_schema": {}}]
    system = [{"type": "text", "text": "a"}, {"type": "text", "text": ""}]
    out = _compress(
        _body([{"role": "user", "content": "hi"}], system=system, tools=tools), align_cache=True
    )
    assert _breakpoints(out) == ["tools.1"]
    small = _body([{"role": "user", "content": "hi"}], system="s", tools=_tools(1, 100))
    assert compress_request(small, CLAUDE, align_cache=True).body is None
    assert len(small) < MIN_PREFIX_BYTES


@pytest.mark.parametrize(
    "top",
    [
        {"cache_control": {"type": "ephemeral"}},
        {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]},
    ],
)
def test_alignment_leaves_clients_that_cache_alone(top: dict[str, Any]) -> None:
    body = _body([{"role": "user", "content": "hi"}], tools=_tools(3, 2000), **top)
    assert compress_request(body, CLAUDE, align_cache=True).body is None


@pytest.mark.parametrize("where", ["tools", "system"])
def test_alignment_never_replaces_a_marker_spelled_with_an_escape(where: str) -> None:
    # "cache\u005fcontrol" decodes to cache_control: the client's 1 h TTL must survive.
    tools = _tools(3, 2000)
    system = [{"type": "text", "text": "be brief"}]
    marked = tools[-1] if where == "tools" else system[-1]
    marked["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    body = _body([{"role": "user", "content": "hi"}], system=system, tools=tools)
    escaped = body.replace(b'"cache_control"', b'"cache\\u005fcontrol"')
    assert escaped != body
    result = compress_request(escaped, CLAUDE, align_cache=True)
    if result.body is not None:
        assert json.loads(result.body)[where][-1]["cache_control"]["ttl"] == "1h"


def test_alignment_on_samples_never_exceeds_four() -> None:
    for name in ("agent_turn.json", "long_context.json", "small_chat.json"):
        body = (SAMPLES / name).read_bytes()
        result = compress_request(body, CLAUDE, align_cache=True)
        out = result.body if result.body is not None else body
        assert out.count(b'"cache_control"') == body.count(b'"cache_control"') <= MAX_BREAKPOINTS


# --- bundles ---


def test_bundle_names_and_aliases() -> None:
    assert BUNDLE_NAMES == ("claude-code", "opencode", "cursor", "codex", "generic")
    for name in (*BUNDLE_NAMES, "claude", "Claude", " CODEX ", "OpenCode", "cursor"):
        assert bundle_named(name) is not None
    assert bundle_named("claude") is CLAUDE
    assert bundle_named("gpt") is None and bundle_named("") is None


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("claude-cli/2.1.330 (external, cli)", "claude-code"),
        ("claude-cli/2.1.330 (external, sdk-cli)", "claude-code"),
        ("opencode/0.15.3 ai-sdk/provider-utils/3.0.9", "opencode"),
        ("codex_cli_rs/0.46.0 (Mac OS 15.1.0; arm64) iTerm.app/3.5.10", "codex"),
        ("Cursor/1.7.0", "cursor"),
        ("python-httpx/0.28.1", None),
        ("", None),
    ],
)
def test_detect_bundle(user_agent: str, expected: str | None) -> None:
    bundle = detect_bundle(user_agent)
    assert (bundle.name if bundle else None) == expected


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_every_bundle_compresses_its_shell_tool(name: str) -> None:
    bundle = bundle_named(name)
    assert bundle is not None
    tool, key = next(iter(bundle.shell_tools.items()))
    command: Any = ["bash", "-lc", "make"] if name == "codex" and key == "command" else "make"
    body = _body(_turns(("t1", tool, {key: command}, NOISY)))
    (text,) = _outputs(_compress(body, bundle))
    assert len(text) < len(NOISY)
    for read_tool in bundle.file_read_tools:
        body = _body(_turns(("t1", read_tool, {"path": "a"}, FILE_TEXT)))
        assert compress_request(body, bundle).body is None


@pytest.mark.parametrize(
    "field",
    [b'"content":"h\xff"', b'"content":[{"type":"text","text":"pasted \xff log"}]'],
    ids=["string", "text-block"],
)
def test_invalid_utf8_in_a_block_leaves_the_request_alone(field: bytes) -> None:
    # The gateway's validation never decodes these strings; the compressor must not be the
    # one to raise on them (msgspec raises UnicodeDecodeError, not DecodeError).
    noisy = json.dumps(NOISY).encode()
    body = (
        b'{"model":"m","max_tokens":5,"messages":[{"role":"user",' + field + b"},"
        b'{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"Bash",'
        b'"input":{"command":"make"}}]},{"role":"user","content":[{"type":"tool_result",'
        b'"tool_use_id":"t1","content":"\xff' + noisy[1:] + b"}]}]}"
    )
    result = compress_request(body, CLAUDE)
    assert result.body is None or b"\xff" in result.body


@pytest.mark.parametrize("memo", [None, CompressionMemo()], ids=["cold", "memo"])
def test_no_result_points_at_one_the_server_is_asked_to_clear(memo: CompressionMemo | None) -> None:
    # With clear_tool_uses, Anthropic replaces the oldest results' content: a later copy
    # turned into a reference to one of them would leave the file in neither place.
    messages: list[dict[str, Any]] = [{"role": "user", "content": "refactor app.py"}]
    for index in range(6):
        call = _call(f"toolu_{index:02d}", "Read", {"file_path": "/src/app.py"})
        result = {"type": "tool_result", "tool_use_id": f"toolu_{index:02d}", "content": FILE_TEXT}
        messages += [
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result]},
        ]

    def newest_result(body: bytes | None) -> str:
        assert body is not None
        text: str = json.loads(body)["messages"][-1]["content"][0]["content"]
        return text

    # Without the edit, the last copy is a reference to the first.
    assert "toolu_00" in newest_result(compress_request(_body(messages), CLAUDE, memo=memo).body)
    keep = {"type": "tool_uses", "value": 3}
    clearing = {"edits": [{"type": "clear_tool_uses_20250919", "keep": keep}]}
    body = _body(messages, context_management=clearing)
    sent = json.loads(compress_request(body, CLAUDE, memo=memo).body or body)["messages"]
    # Only the field counts: a session whose text names the edit still deduplicates.
    messages[0]["content"] = "what does clear_tool_uses_20250919 do?"
    mentioned = compress_request(_body(messages), CLAUDE, memo=memo).body
    assert "toolu_00" in newest_result(mentioned)
    assert all("toolu_" not in message["content"][0]["content"] for message in sent[2::2])


@pytest.mark.parametrize("memo", [None, CompressionMemo()], ids=["cold", "memo"])
def test_no_result_points_at_one_before_a_compaction_block(memo: CompressionMemo | None) -> None:
    # With server-side compaction the API drops every block before the compaction block the
    # client sends back: a copy read again after it must not refer to one read before.
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "refactor app.py"},
        {"role": "assistant", "content": [_call("toolu_01", "Read", {"file_path": "/src/app.py"})]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": FILE_TEXT}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "compaction", "content": "Summary: app.py was read once."},
                {"type": "text", "text": "Let me read the file again."},
                _call("toolu_02", "Read", {"file_path": "/src/app.py"}),
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_02", "content": FILE_TEXT}],
        },
    ]
    compacting = {
        "edits": [
            {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 150000}}
        ]
    }
    body = _body(messages, context_management=compacting)
    sent = json.loads(compress_request(body, CLAUDE, memo=memo).body or body)["messages"]
    assert sent[-1]["content"][0]["content"] == FILE_TEXT


_ALIGN_TOOLS = [
    {"name": f"tool_{i}", "description": "d" * 2000, "input_schema": {"type": "object"}}
    for i in range(3)
]


def _aligned_body(messages: list[dict[str, Any]]) -> bytes:
    fields = {"system": "You are a coding agent.", "tools": _ALIGN_TOOLS, "messages": messages}
    return msgspec.json.encode({"model": "m", "max_tokens": 100, **fields})


def _sent_breakpoints(body: bytes) -> list[str]:
    result = compress_request(body, bundle_named("generic"), align_cache=True)
    sent = json.loads(result.body or body)
    found = [f"tools.{i}" for i, tool in enumerate(sent["tools"]) if "cache_control" in tool]
    if isinstance(sent["system"], list):
        found += [f"system.{i}" for i, b in enumerate(sent["system"]) if "cache_control" in b]
    for m, message in enumerate(sent["messages"]):
        if isinstance(message["content"], list):
            marked = [i for i, block in enumerate(message["content"]) if "cache_control" in block]
            found += [f"messages.{m}.{i}" for i in marked]
    return found


def test_a_grep_for_cache_control_keeps_the_gateways_breakpoints_from_turn_to_turn() -> None:
    # The bytes "cache_control" as a string value are no client breakpoint: taken for one,
    # they switched alignment off from that turn on, and the session lost its cache.
    first = [{"role": "user", "content": "where do we set prompt caching?"}]
    grep = {
        "type": "tool_use",
        "id": "toolu_01",
        "name": "grep",
        "input": {"pattern": "cache_control"},
    }
    found = "src/client.py:12:    block['cache_control'] = {'type': 'ephemeral'}"
    result = {"type": "tool_result", "tool_use_id": "toolu_01", "content": found}
    second = [
        *first,
        {"role": "assistant", "content": [grep]},
        {"role": "user", "content": [result]},
    ]
    assert _sent_breakpoints(_aligned_body(first)) == ["tools.2", "system.0"]
    assert _sent_breakpoints(_aligned_body(second)) == ["tools.2", "system.0"]


@pytest.mark.parametrize("where", ["message block", "tool result block"])
def test_client_breakpoints_spelled_with_an_escape_in_messages_are_seen(where: str) -> None:
    # Four client breakpoints (the API's most) with the key escaped: two more would be a 400.
    messages: list[dict[str, Any]] = []
    for turn in range(4):
        marked = {"type": "text", "text": f"q{turn}", "cache_control": {"type": "ephemeral"}}
        if where == "tool result block":
            marked = {"type": "tool_result", "tool_use_id": f"t{turn}", "content": [marked]}
        messages += [
            {"role": "user", "content": [marked]},
            {"role": "assistant", "content": f"a{turn}"},
        ]
    messages.append({"role": "user", "content": "next"})
    body = _aligned_body(messages).replace(b'"cache_control"', b'"cache\\u005fcontrol"')
    added = [mark for mark in _sent_breakpoints(body) if not mark.startswith("messages.")]
    assert added == []
