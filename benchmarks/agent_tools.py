"""How each agent turns an abstract action (read a file, run a command, search...) into a
``tool_use`` input and a ``tool_result`` text: its tool names, input shapes and output formats,
and what it already does to long output before the model sees it.

- claude-code: ``Read{file_path}`` answers ``cat -n`` style (6-wide number, tab) plus the
  reminder Claude Code appends to every read; ``Bash{command, description}`` output over 30,000
  characters is replaced by a short preview of a saved file, or, for a failing command, cut to
  its head and tail; ``Grep``, ``Glob``, ``LS``, ``Edit``, ``TodoWrite``.
- opencode: lowercase ``bash``/``read``/``edit``/``grep``/``glob``/``list``/``todowrite``,
  ``00001| `` line prefixes, bash output capped at 30,000 characters.
- cursor: ``run_terminal_cmd``, ``read_file`` (at most 250 lines a call), ``grep_search`` (at
  most 50 hits), ``list_dir``, ``file_search``, ``edit_file``, each with Cursor's wrapper text.
- codex: everything through ``shell{command:[argv]}`` (files read with ``sed -n``/``nl -ba``),
  output framed with the exit code and wall time and cut to 128 head + 128 tail lines; edits
  with ``apply_patch``; ``update_plan``.
- generic: ``run_command``, ``read_file``, ``write_file`` (whole file), ``search_files``; output
  cut at 50,000 characters.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .agent_outputs import Run
from .agent_repo import Edit

Json = dict[str, Any]

CC_READ_REMINDER = (
    "\n\n<system-reminder>\nWhenever you read a file, you should consider whether it would be "
    "considered malware. You CAN and SHOULD provide analysis of malware, what it is doing. But "
    "you MUST refuse to improve or augment the code. You can still analyze existing code, write "
    "reports, or answer questions about the code behavior.\n</system-reminder>\n"
)
CC_TODO_RESULT = (
    "Todos have been modified successfully. Ensure that you continue to use the todo list to "
    "track your progress. Please proceed with the current tasks if applicable"
)
CC_OUTPUT_LIMIT = 30_000
CC_PREVIEW = 2_000
CODEX_HEAD_LINES = 128
CODEX_LINE_LIMIT = 256
GENERIC_LIMIT = 50_000
CURSOR_READ_LINES = 250


@dataclass(frozen=True)
class Action:
    """Something the agent does in a turn, before any agent-specific formatting.

    ``lines`` is the file as it is at that moment (reads and edits), ``start``/``count`` the
    range read (``count`` None: the whole file), ``hits`` the (path, line, text) matches.
    """

    kind: str  # read, edit, shell, grep, glob, list, todo
    path: str = ""
    lines: tuple[str, ...] = ()
    start: int = 1
    count: int | None = None
    run: Run | None = None
    edit: Edit | None = None
    pattern: str = ""
    hits: tuple[tuple[str, int, str], ...] = ()
    paths: tuple[str, ...] = field(default=())
    description: str = ""


@dataclass(frozen=True)
class Call:
    name: str
    input: Json
    output: str
    is_error: bool = False


def _numbered(lines: tuple[str, ...], start: int, width: int = 6, sep: str = "\t") -> str:
    return "\n".join(f"{n:>{width}}{sep}{text}" for n, text in enumerate(lines, start))


def _read_range(action: Action) -> tuple[str, ...]:
    end = None if action.count is None else action.start - 1 + action.count
    return action.lines[action.start - 1 : end]


def _edit_snippet(action: Action) -> tuple[int, tuple[str, ...]]:
    assert action.edit is not None
    first = max(1, action.edit.line - 4)
    return first, action.lines[first - 1 : action.edit.line + len(action.edit.new) + 4]


def _head_tail(text: str, limit: int) -> str:
    lines = text.split("\n")
    head, tail, size = [], [], 0
    for line in lines:
        if size + len(line) > limit // 2:
            break
        head.append(line)
        size += len(line) + 1
    size = 0
    for line in reversed(lines[len(head) :]):
        if size + len(line) > limit // 2:
            break
        tail.append(line)
        size += len(line) + 1
    omitted = len(lines) - len(head) - len(tail)
    return "\n".join([*head, f"\n... [{omitted} lines truncated] ...\n", *reversed(tail)])


def cc_bash_output(run: Run, tool_id: str) -> tuple[str, bool]:
    """What Claude Code puts in the tool_result for a Bash run, and whether it is an error."""
    text = run.output
    if len(text) > CC_OUTPUT_LIMIT:
        if run.exit_code:
            text = _head_tail(text, CC_OUTPUT_LIMIT)
        else:
            text = (
                f"<persisted-output>\nOutput too large ({len(run.output) / 1024:.1f}KB). Full "
                f"output saved to: /home/dev/.claude/projects/-home-dev-ledgerline/tool-results/"
                f"{tool_id}.txt\n\nPreview (first 2KB):\n{text[:CC_PREVIEW]}\n..."
                "\n</persisted-output>"
            )
    if run.exit_code:
        return f"Exit code {run.exit_code}\n{text}", True
    return text, False


def _claude_code(action: Action, root: str, tool_id: str) -> Call:
    path = f"{root}/{action.path}"
    if action.kind == "read":
        args: Json = {"file_path": path}
        if action.count is not None:
            args |= {"offset": action.start, "limit": action.count}
        return Call("Read", args, _numbered(_read_range(action), action.start) + CC_READ_REMINDER)
    if action.kind == "edit":
        assert action.edit is not None
        first, snippet = _edit_snippet(action)
        args = {
            "file_path": path,
            "old_string": "\n".join(action.edit.old),
            "new_string": "\n".join(action.edit.new),
        }
        text = (
            f"The file {path} has been updated. Here's the result of running `cat -n` on a "
            f"snippet of the edited file:\n{_numbered(snippet, first)}"
        )
        return Call("Edit", args, text)
    if action.kind == "shell":
        assert action.run is not None
        text, failed = cc_bash_output(action.run, tool_id)
        return Call(
            "Bash", {"command": action.run.command, "description": action.description}, text, failed
        )
    if action.kind == "grep":
        args = {"pattern": action.pattern, "path": root, "output_mode": "content", "-n": True}
        return Call(
            "Grep",
            args,
            "\n".join(f"{root}/{p}:{n}:{t}" for p, n, t in action.hits) or "No matches found",
        )
    if action.kind == "glob":
        return Call(
            "Glob", {"pattern": action.pattern}, "\n".join(f"{root}/{p}" for p in action.paths)
        )
    if action.kind == "list":
        return Call(
            "LS", {"path": path}, f"- {path}/\n" + "\n".join(f"  - {p}" for p in action.paths)
        )
    return Call("TodoWrite", {"todos": _todos(action)}, CC_TODO_RESULT)


def _todos(action: Action) -> list[Json]:
    steps = action.description.split("; ")
    return [
        {
            "content": step,
            "status": "completed" if i == 0 else "in_progress" if i == 1 else "pending",
            "activeForm": step,
        }
        for i, step in enumerate(steps)
    ]


def _opencode_read(action: Action, path: str) -> Call:
    lines = _read_range(action)
    body = "\n".join(f"{n:05d}| {text}" for n, text in enumerate(lines, action.start))
    args: Json = {"filePath": path}
    if action.count is not None:
        args |= {"offset": action.start - 1, "limit": action.count}
    footer = f"(End of file - total {len(action.lines)} lines)"
    return Call("read", args, f"<file>\n{body}\n\n{footer}\n</file>")


def _opencode_grep(action: Action, root: str) -> Call:
    groups: dict[str, list[str]] = {}
    for path, number, text in action.hits[:100]:
        groups.setdefault(path, []).append(f"  Line {number}: {text}")
    found = [f"{root}/{path}:\n" + "\n".join(hits) for path, hits in groups.items()]
    text = f"Found {len(action.hits)} matches\n" + "\n\n".join(found)
    return Call("grep", {"pattern": action.pattern, "path": root}, text)


def _opencode(action: Action, root: str, tool_id: str) -> Call:
    path = f"{root}/{action.path}"
    if action.kind == "read":
        return _opencode_read(action, path)
    if action.kind == "grep":
        return _opencode_grep(action, root)
    if action.kind == "edit":
        assert action.edit is not None
        old, new = "\n".join(action.edit.old), "\n".join(action.edit.new)
        args = {"filePath": path, "oldString": old, "newString": new}
        return Call("edit", args, "Edit applied successfully.")
    if action.kind == "shell":
        assert action.run is not None
        text = action.run.output
        if len(text) > CC_OUTPUT_LIMIT:
            text = text[:CC_OUTPUT_LIMIT] + (
                "\n\n<bash_metadata>\nbash tool truncated output as it exceeded 30000 char"
                " limit\n</bash_metadata>"
            )
        args = {"command": action.run.command, "description": action.description}
        return Call("bash", args, text)
    if action.kind == "glob":
        paths = "\n".join(f"{root}/{p}" for p in action.paths)
        return Call("glob", {"pattern": action.pattern}, paths)
    if action.kind == "list":
        listing = f"{path}/\n" + "\n".join(f"  {p}" for p in action.paths)
        return Call("list", {"path": path}, listing)
    todos = _todos(action)
    return Call("todowrite", {"todos": todos}, json.dumps(todos, indent=2))


def _cursor_read(action: Action) -> Call:
    count = min(action.count or CURSOR_READ_LINES, CURSOR_READ_LINES)
    lines = action.lines[action.start - 1 : action.start - 1 + count]
    end = action.start + len(lines) - 1
    args: Json = {
        "target_file": action.path,
        "should_read_entire_file": False,
        "start_line_one_indexed": action.start,
        "end_line_one_indexed_inclusive": end,
    }
    head = (
        f"Contents of {action.path}, lines {action.start}-{end} (total {len(action.lines)} lines)"
    )
    return Call("read_file", args, f"{head}:\n```\n" + "\n".join(lines) + "\n```")


def _cursor_shell(run: Run, root: str, explanation: str) -> Call:
    output = run.output
    if len(output) > CC_OUTPUT_LIMIT:
        output = output[:CC_OUTPUT_LIMIT] + "\n... (output truncated)"
    text = (
        f"Exit code: {run.exit_code}\n\nCommand output:\n\n```\n{output}\n```\n\n"
        "Command completed.\n\nThe previous shell command ended, so on the next invocation"
        " of this tool, you will be reusing the shell.\n\n"
        f"On the next terminal tool call, the directory of the shell will already be {root}."
    )
    args = {"command": run.command, "is_background": False, "explanation": explanation}
    return Call("run_terminal_cmd", args, text)


def _cursor(action: Action, root: str, tool_id: str) -> Call:
    why = action.description
    if action.kind == "read":
        return _cursor_read(action)
    if action.kind == "shell":
        assert action.run is not None
        return _cursor_shell(action.run, root, why)
    if action.kind == "edit":
        assert action.edit is not None
        code = "\n".join(["// ... existing code ...", *action.edit.new, "// ... existing code ..."])
        args = {"target_file": action.path, "instructions": why, "code_edit": code}
        diff = "\n".join(
            [*(f"- {t}" for t in action.edit.old), *(f"+ {t}" for t in action.edit.new)]
        )
        changes = f"The apply model made the following changes to the file:\n\n```\n{diff}\n```"
        return Call("edit_file", args, changes)
    if action.kind == "grep":
        text = "\n".join(f"File: {p}\nLine {n}: {t}" for p, n, t in action.hits[:50])
        if len(action.hits) > 50:
            text += "\n\nNOTE: Results are limited to 50 matches. Please refine your search."
        args = {"query": action.pattern, "include_pattern": "*", "explanation": why}
        return Call("grep_search", args, text)
    if action.kind == "glob":
        args = {"query": action.pattern, "explanation": why}
        return Call("file_search", args, "\n".join(action.paths[:10]))
    entries = "\n".join(f"[{'dir' if '.' not in p else 'file'}]  {p}" for p in action.paths)
    args = {"relative_workspace_path": action.path or ".", "explanation": why}
    return Call("list_dir", args, f"Contents of directory:\n\n{entries}")


def codex_output(output: str, exit_code: int, seconds: float) -> str:
    lines = output.split("\n")
    head = f"Exit code: {exit_code}\nWall time: {seconds:.1f} seconds\n"
    if len(lines) > CODEX_LINE_LIMIT:
        omitted = len(lines) - 2 * CODEX_HEAD_LINES
        kept = [
            *lines[:CODEX_HEAD_LINES],
            f"[... omitted {omitted} of {len(lines)} lines ...]",
            *lines[-CODEX_HEAD_LINES:],
        ]
        return head + f"Total output lines: {len(lines)}\nOutput:\n" + "\n".join(kept)
    return head + "Output:\n" + output


def _codex(action: Action, root: str, tool_id: str) -> Call:
    seconds = (sum(map(ord, tool_id)) % 40) / 10
    if action.kind == "edit":
        assert action.edit is not None
        patch = "\n".join(
            [
                "*** Begin Patch",
                f"*** Update File: {action.path}",
                "@@",
                *(f"-{t}" for t in action.edit.old),
                *(f"+{t}" for t in action.edit.new),
                "*** End Patch",
            ]
        )
        return Call(
            "apply_patch",
            {"input": patch},
            codex_output(f"Success. Updated the following files:\nM {action.path}", 0, seconds),
        )
    if action.kind == "todo":
        return Call(
            "update_plan",
            {"plan": [{"step": t["content"], "status": t["status"]} for t in _todos(action)]},
            "Plan updated",
        )
    command, output, code = _codex_shell(action)
    args = {"command": ["bash", "-lc", command], "workdir": root, "timeout_ms": 120000}
    return Call("shell", args, codex_output(output, code, seconds))


def _codex_shell(action: Action) -> tuple[str, str, int]:
    if action.kind == "read":
        count = action.count or 250
        lines = action.lines[action.start - 1 : action.start - 1 + count]
        end = action.start + count - 1
        if action.start % 2:
            return (
                f"nl -ba {action.path} | sed -n '{action.start},{end}p'",
                _numbered(lines, action.start),
                0,
            )
        return f"sed -n '{action.start},{end}p' {action.path}", "\n".join(lines), 0
    if action.kind == "shell":
        assert action.run is not None
        return action.run.command, action.run.output, action.run.exit_code
    if action.kind == "grep":
        return (
            f"rg -n '{action.pattern}'",
            "\n".join(f"{p}:{n}:{t}" for p, n, t in action.hits),
            0 if action.hits else 1,
        )
    if action.kind == "glob":
        return f"rg --files | rg '{action.pattern}'", "\n".join(action.paths), 0
    return f"ls {action.path}".rstrip(), "\n".join(action.paths), 0


def _generic(action: Action, root: str, tool_id: str) -> Call:
    if action.kind == "read":
        return Call("read_file", {"path": action.path}, "\n".join(_read_range(action)))
    if action.kind == "edit":
        content = "\n".join(action.lines)
        return Call(
            "write_file",
            {"path": action.path, "content": content},
            f"Wrote {len(content.encode())} bytes to {action.path}",
        )
    if action.kind == "grep":
        return Call(
            "search_files",
            {"pattern": action.pattern, "path": "."},
            "\n".join(f"{p}:{n}:{t}" for p, n, t in action.hits),
        )
    command, output, _ = _codex_shell(action)
    if len(output) > GENERIC_LIMIT:
        output = output[:GENERIC_LIMIT] + "\n[output truncated]"
    return Call("run_command", {"command": command}, output)


def _anthropic_id(rng: random.Random) -> str:
    return "toolu_01" + "".join(rng.choices(string.ascii_letters + string.digits, k=22))


def _codex_id(rng: random.Random) -> str:
    return "call_" + "".join(rng.choices(string.ascii_letters + string.digits, k=24))


Renderer = Callable[[Action, str, str], Call]


@dataclass(frozen=True)
class AgentStyle:
    """An agent's tool renderer, its tool-use id format, and which actions it has a tool for."""

    render: Renderer
    new_id: Callable[[random.Random], str]
    has_todo: bool
    thinks: bool
    read_cap: int | None = None  # most lines one read returns (None: the whole file)


STYLES = {
    "claude-code": AgentStyle(_claude_code, _anthropic_id, has_todo=True, thinks=True),
    "opencode": AgentStyle(_opencode, _anthropic_id, has_todo=True, thinks=False),
    "cursor": AgentStyle(_cursor, _anthropic_id, has_todo=False, thinks=False, read_cap=250),
    "codex": AgentStyle(_codex, _codex_id, has_todo=True, thinks=False, read_cap=250),
    "generic": AgentStyle(_generic, _anthropic_id, has_todo=False, thinks=False),
}
