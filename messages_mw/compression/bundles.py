"""Compression bundles: one preset per coding agent, naming its tools and tuning the text rules.

A bundle tells the engine which tool results are shell output (and where the command line sits
in the tool's input, so a command-aware filter can be chosen), which are file contents that must
be kept exactly as the agent produced them, which are search matches, and which
:class:`TextOptions` suit the agent's outputs. Bundles are immutable module constants; choose
one per request with :func:`bundle_named` (a header or key policy) or :func:`detect_bundle`
(the user agent).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import msgspec
from msgspec import Raw

from ..protocol import DECODE_ERRORS
from .text import TextOptions

__all__ = [
    "BUNDLES",
    "BUNDLE_NAMES",
    "PASTED_TEXT_OPTIONS",
    "READ_COMMANDS",
    "Bundle",
    "bundle_named",
    "detect_bundle",
]

# A user who pastes a log or code chose what to send, and may ask about its line 12: no command
# filter, no cap, no JSON reformatting, and no line added or removed (blank runs and repeated
# lines stay). Escapes, redraws and trailing spaces and tabs are still cleaned up.
PASTED_TEXT_OPTIONS = TextOptions(
    tidy_blank_lines=False,
    collapse_repeats=False,
    minify_json=False,
    command_filters=False,
    cap_chars=None,
)

# Shell programs whose output is file content (codex reads files with `sed -n` and `nl -ba`):
# kept byte for byte like a file-read tool's output, since edits quote it exactly.
READ_COMMANDS = frozenset({"cat", "nl", "sed", "head", "tail"})


@dataclass(frozen=True, slots=True, eq=False)
class Bundle:
    """How to compress one agent's requests.

    ``shell_tools`` maps a tool name to the input key holding its command line (a string, or an
    argv list as codex sends); ``file_read_tools`` are tools whose output is kept exactly (file
    contents with line-number prefixes, edit results quoting the file), only deduplicated.
    ``text`` applies to every other tool result; ``pasted_text`` to large user-pasted text
    blocks (``None`` leaves user text alone); ``read_commands`` are shell programs treated as
    file reads; ``search_tools`` are the agent's own grep tools, whose matches are kept as
    ``rg``'s output is (line for line, at most 50 a file). A bundle equals only itself, so that
    it can key what a memo remembers.
    """

    name: str
    shell_tools: Mapping[str, str]
    file_read_tools: frozenset[str]
    text: TextOptions
    pasted_text: TextOptions | None = PASTED_TEXT_OPTIONS
    read_commands: frozenset[str] = READ_COMMANDS
    search_tools: frozenset[str] = frozenset()

    def command(self, tool: str, tool_input: Raw) -> str | None:
        """The command line a shell tool ran (an argv list joined), or ``None`` for other tools.

        The tool's own input key is tried first, then ``command`` and ``cmd``; codex's
        ``["bash", "-lc", script]`` gives ``script``.
        """
        key = self.shell_tools.get(tool)
        if key is None:
            return None
        try:
            fields = _mapping.decode(tool_input)
            raw = fields.get(key) or fields.get("command") or fields.get("cmd")
            value: str | list[str] | None = _command_value.decode(raw) if raw else None
        except DECODE_ERRORS:
            return None
        if value is None or isinstance(value, str):
            return value
        if len(value) == 3 and value[0].rsplit("/", 1)[-1] in _SHELLS and _runs_script(value[1]):
            return value[2]
        return shlex.join(value)

    def reads_files(self, command: str) -> bool:
        """Whether every program ``command`` runs only prints files (``cd`` aside), so that its
        output is file content to keep exactly.

        A rough shell reading: quoted strings are blanked out, then the line is cut at ``&&``,
        ``||``, ``;``, ``|``, ``&`` and newlines (not at redirections like ``2>&1``). An
        unbalanced quote means "not a plain read".
        """
        first = _program(command)
        if first is None or (first not in self.read_commands and first not in _READ_VIA):
            return False  # the common case, decided without the full reading below
        bare = _QUOTED.sub("Q", command) if "'" in command or '"' in command else command
        if "'" in bare or '"' in bare:
            return False
        readers = False
        bare = bare.replace("|&", "|").replace(">&", ">").replace("&>", ">")
        for pipeline in _COMMAND_SEPARATOR.split(bare):
            stages = pipeline.split("|")
            program = _program(stages[-1])
            if program is None or program == "cd":
                continue
            # Files named by what comes before: find ... | xargs cat, or find -exec cat.
            if self._prints_named_files(stages[-1]):
                readers = True
                continue
            for stage in stages:
                program = _program(stage)
                if program is not None and program not in self.read_commands:
                    return False
            readers = True
        return readers

    def _prints_named_files(self, stage: str) -> bool:
        """``xargs [options] cat`` or ``find ... -exec cat {} +``: a reader of the files the
        rest of the command names."""
        words = stage.split()
        at = _program_at(words)
        program = words[at].rsplit("/", 1)[-1] if at < len(words) else None
        if program == "xargs":
            at += 1
            while at < len(words) and words[at].startswith("-"):
                at += 2 if words[at] in _XARGS_VALUE_OPTIONS else 1
            return at < len(words) and _program(words[at]) in self.read_commands
        if program in ("find", "fd", "fdfind"):
            runs = [words[i + 1] for i, word in enumerate(words[:-1]) if word in _EXEC_FLAGS]
            return bool(runs) and all(_program(run) in self.read_commands for run in runs)
        return False

    def reads_files_by_name(self, tool: str) -> bool:
        """Whether a tool outside the bundle's lists looks like a file reader by its name
        (an MCP server's ``read_text_file``, ``read_file``, ``get_file_contents``, ``view``):
        its output is kept exactly, as the agent's own read tool's is, since the agent copies
        its lines into exact-match edits. A name that only looks so (``thread_list``) loses
        nothing but compression."""
        return _READER_NAME.search(tool.rsplit("__", 1)[-1]) is not None

    def describe(self, tool: str, tool_input: Raw) -> str:
        """A short label for a call, e.g. ``Read /src/app.py`` or ``Bash: git status``."""
        command = self.command(tool, tool_input)
        if command is not None:
            return f"{tool}: {_clip(command)}" if command.strip() else tool
        try:
            fields = _mapping.decode(tool_input)
        except DECODE_ERRORS:
            return tool
        for key in _SUMMARY_KEYS:
            raw = fields.get(key)
            if raw is None:
                continue
            try:
                value = _string.decode(raw)
            except DECODE_ERRORS:
                continue
            if value.strip():
                return f"{tool} {_clip(value)}"
        return tool


_mapping = msgspec.json.Decoder(dict[str, Raw])
_command_value = msgspec.json.Decoder(str | list[str])
_string = msgspec.json.Decoder(str)
_SHELLS = frozenset({"bash", "sh", "zsh", "dash", "ksh"})
_SUMMARY_KEYS = ("file_path", "path", "filePath", "target_file", "pattern", "url", "query")
_QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"")
# Between commands (each a pipeline): ';', '&&', '||', '&' and newlines.
_COMMAND_SEPARATOR = re.compile(r"\|\||[;&\n]+")
# Where a command's first program may start a read of files named elsewhere in it.
_READ_VIA = frozenset({"find", "fd", "fdfind", "ls", "git", "rg", "grep", "cd", "xargs"})
_XARGS_VALUE_OPTIONS = frozenset({"-n", "-L", "-P", "-I", "-d", "-E", "-s", "-a"})
_READER_NAME = re.compile(r"read|view|file_?contents?|get_?file|open_?file|cat_?file", re.I)
_EXEC_FLAGS = frozenset({"-exec", "-execdir", "-x", "--exec", "-X", "--exec-batch"})


def _runs_script(flag: str) -> bool:
    """``-c``, ``-lc``: the shell runs the next argument as a script."""
    return flag.startswith("-") and flag.endswith("c")


def _program(segment: str) -> str | None:
    """The program a simple command runs, past any ``NAME=value`` assignments."""
    words = segment.split()
    at = _program_at(words)
    return words[at].rsplit("/", 1)[-1] if at < len(words) else None


def _program_at(words: list[str]) -> int:
    """Where the program is among a simple command's words (``len(words)`` if nowhere)."""
    for at, word in enumerate(words):
        if "=" not in word or word.startswith("-"):
            return at
    return len(words)


def _clip(text: str, limit: int = 80) -> str:
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _shells(names: Iterable[str], key: str) -> Mapping[str, str]:
    return MappingProxyType(dict.fromkeys(names, key))


# Claude Code replaces Bash output over 30,000 characters with its own preview, so the cap only
# needs to catch other large outputs (WebFetch, subagent reports, MCP tools).
CLAUDE_CODE = Bundle(
    name="claude-code",
    shell_tools=_shells(("Bash",), "command"),
    file_read_tools=frozenset(
        {"Read", "NotebookRead", "Edit", "MultiEdit", "Write", "NotebookEdit"}
    ),
    text=TextOptions(cap_chars=32_000, head_lines=80, tail_lines=80),
    search_tools=frozenset({"Grep"}),
)

# OpenCode truncates tool output at 2,000 lines or 50 KB itself; cap below that.
OPENCODE = Bundle(
    name="opencode",
    shell_tools=_shells(("bash",), "command"),
    file_read_tools=frozenset({"read", "edit", "write", "patch", "multiedit"}),
    text=TextOptions(cap_chars=24_000, head_lines=60, tail_lines=60),
    search_tools=frozenset({"grep"}),
)

# Cursor's grep_search runs ripgrep and formats its matches in ripgrep's style.
CURSOR = Bundle(
    name="cursor",
    shell_tools=_shells(("run_terminal_cmd",), "command"),
    file_read_tools=frozenset({"read_file", "edit_file", "search_replace", "reapply"}),
    text=TextOptions(cap_chars=24_000, head_lines=60, tail_lines=60),
    search_tools=frozenset({"grep_search"}),
)

# Codex already cuts shell output to about 10 KiB (head and tail) for the model, so most
# results never reach the cap; `exec_command` takes a string `cmd`, the others an argv list.
# Every shell output comes framed with its exit code and wall time: the engine keeps the frame
# and compresses, or deduplicates, the output inside it (see `rewrite`).
CODEX = Bundle(
    name="codex",
    shell_tools=MappingProxyType(
        {
            "shell": "command",
            "local_shell": "command",
            "container.exec": "command",
            "exec_command": "cmd",
        }
    ),
    file_read_tools=frozenset({"apply_patch", "read_file"}),
    text=TextOptions(cap_chars=16_000, head_lines=50, tail_lines=50),
)

_GENERIC_SHELLS = (
    "bash",
    "shell",
    "run",
    "execute",
    "terminal",
    "run_command",
    "run_shell_command",
    "run_terminal_cmd",
    "exec_command",
    "execute_command",
    "local_shell",
)
_GENERIC_READS = (
    "read",
    "read_file",
    "view",
    "cat",
    "open_file",
    "view_file",
    "str_replace_editor",
    "str_replace_based_edit_tool",
    "edit",
    "edit_file",
    "write",
    "write_file",
)
_GENERIC_SEARCHES = ("grep", "grep_search", "search_files")

GENERIC = Bundle(
    name="generic",
    shell_tools=_shells((*_GENERIC_SHELLS, *(n.capitalize() for n in _GENERIC_SHELLS)), "command"),
    file_read_tools=frozenset((*_GENERIC_READS, *(n.capitalize() for n in _GENERIC_READS))),
    text=TextOptions(),
    search_tools=frozenset((*_GENERIC_SEARCHES, *(n.capitalize() for n in _GENERIC_SEARCHES))),
)

BUNDLES: Mapping[str, Bundle] = MappingProxyType(
    {b.name: b for b in (CLAUDE_CODE, OPENCODE, CURSOR, CODEX, GENERIC)}
)
BUNDLE_NAMES: tuple[str, ...] = tuple(BUNDLES)

# Edgee's `X-Edgee-Compression-Model` values, besides our own names.
_ALIASES: Mapping[str, str] = MappingProxyType(
    {"claude": "claude-code", "claude_code": "claude-code"}
)


def bundle_named(name: str) -> Bundle | None:
    """The bundle called ``name`` (case-insensitive; Edgee's ``claude`` too), or ``None``."""
    key = name.strip().lower()
    return BUNDLES.get(_ALIASES.get(key, key))


# Ordered: the first marker found in the lower-cased user agent wins. Claude Code's is captured
# (`claude-cli/2.1.330 (external, cli)`) and OpenCode's is its `opencode/<version>` prefix; the
# Cursor and Codex markers are best-effort (`codex_cli_rs/…`, `codex_exec/…`, `Cursor/…`).
_USER_AGENT_MARKERS: tuple[tuple[str, Bundle], ...] = (
    ("claude-cli/", CLAUDE_CODE),
    ("claude-code", CLAUDE_CODE),
    ("opencode/", OPENCODE),
    ("codex", CODEX),
    ("cursor", CURSOR),
)


def detect_bundle(user_agent: str) -> Bundle | None:
    """The bundle for a client's ``User-Agent``, or ``None`` when no agent is recognised."""
    agent = user_agent.lower()
    for marker, bundle in _USER_AGENT_MARKERS:
        if marker in agent:
            return bundle
    return None
