"""Generic compression of one tool output: small pure ``str -> str`` transforms and their pipeline.

Each transform is deterministic and depends on its input text alone, so the same tool output
compresses to the same bytes on every request (the cache-safety rule). Every transform does its
cheap check first (a C-speed ``in`` test or a length comparison) and returns its input unchanged,
the same object, when there is nothing to do, since most tool outputs are already clean. None
raises on any ``str``: lone surrogates, NULs, multi-megabyte single lines, deeply nested JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from itertools import compress, groupby
from operator import eq

import msgspec

from .commands import CommandOutput, inspect_command

__all__ = [
    "TextOptions",
    "cap_text",
    "collapse_progress",
    "collapse_repeats",
    "compress_tool_text",
    "minify_json",
    "strip_ansi",
    "tidy_whitespace",
]


@dataclass(frozen=True, slots=True)
class TextOptions:
    """Which transforms :func:`compress_tool_text` applies, and the size cap.

    ``cap_chars=None`` disables the cap; above ``cap_chars`` characters a text keeps its first
    ``head_lines`` and last ``tail_lines`` lines around an omitted-lines marker.
    """

    strip_ansi: bool = True
    collapse_progress: bool = True
    tidy_whitespace: bool = True
    collapse_repeats: bool = True
    minify_json: bool = True
    command_filters: bool = True
    cap_chars: int | None = 24_000
    head_lines: int = 60
    tail_lines: int = 60


_TOOL_USE_ERROR = "<tool_use_error>"
_REMINDER_OPEN = "<system-reminder>"
# An unclosed reminder runs to the end of the text: keeping too much verbatim is the safe side.
_REMINDER_RE = re.compile(r"(<system-reminder>.*?(?:</system-reminder>|\Z))", re.DOTALL)


def compress_tool_text(text: str, options: TextOptions, command: str | None = None) -> str:
    """Compress one piece of tool output (or user-pasted text); never raises on any ``str``.

    A text containing ``<tool_use_error>`` is returned verbatim, and ``<system-reminder>``
    segments are kept verbatim while the text around them is compressed. The order is: strip
    ANSI, collapse redraws (both normalise terminal output so that command filters see plain
    lines), the command filter for ``command``, whitespace, JSON, repeats, then the cap. Output
    whose lines an agent may quote back exactly (diffs, grep matches, printed files) skips the
    line rewrites. Pure and deterministic: the result depends on the arguments alone.
    """
    if _TOOL_USE_ERROR in text:
        return text
    profile = inspect_command(command) if command and options.command_filters else None
    if _REMINDER_OPEN not in text:
        return _compress_segment(text, options, profile)
    parts = _REMINDER_RE.split(text)
    last = len(parts) - 1
    for index in range(0, len(parts), 2):
        part = parts[index]
        new = _compress_segment(part, options, profile)
        # A reminder stays on its own lines: keep the newlines that separate it from the text.
        if index > 0 and part.startswith("\n") and not new.startswith("\n"):
            new = "\n" + new
        if index < last and part.endswith("\n") and not new.endswith("\n"):
            new += "\n"
        parts[index] = new
    return "".join(parts)


def _compress_segment(text: str, options: TextOptions, profile: CommandOutput | None) -> str:
    """The pipeline for text outside reminders; ``profile`` is what the command line tells."""
    exact = profile is not None and profile.exact_lines
    if options.strip_ansi:
        text = strip_ansi(text)
    if options.collapse_progress and not exact:
        text = collapse_progress(text)
    if profile is not None and profile.filter is not None:
        text = profile.filter(text)
    if not exact:
        if options.tidy_whitespace:
            text = tidy_whitespace(text)
        if options.minify_json:
            # Before repeats: a pretty-printed document's repeated lines must not break its JSON.
            text = minify_json(text)
        if options.collapse_repeats:
            # A command filter knows its output; lossy near-duplicate merging is for the rest.
            text = collapse_repeats(text, near=profile is None or profile.filter is None)
    if options.cap_chars is not None:
        text = cap_text(text, options.cap_chars, options.head_lines, options.tail_lines)
    return text


# A regex that starts with a literal (ESC) lets the engine jump between candidates.
_ESCAPE_RE = re.compile(
    r"""
    \x1b(?:
        \[[0-?]*[ -/]*[@-~]?                      # CSI, also cut short at the end
      | \][^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?   # OSC (titles, OSC 8 hyperlinks)
      | [PX^_][^\x1b\x9c\n]*(?:\x1b\\|\x9c)?       # DCS, SOS, PM, APC strings
      | [ -/]*[0-~]?                              # other escapes, or a lone ESC
    )
    """,
    re.VERBOSE,
)
_CONTROL_RE = re.compile(
    r"""
      \x9b[0-?]*[ -/]*[@-~]?                      # 8-bit CSI
    | \x9d[^\x07\x1b\x9c\n]*(?:\x07|\x9c)?         # 8-bit OSC
    | [\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f]         # other controls but \t \n \r \b
    """,
    re.VERBOSE,
)
# Controls that make strip_ansi scan for all of them; rarer ones alone are left as they are.
_CONTROL_HINTS = ("\x07", "\x00", "\x0b", "\x0c", "\x7f")
_C1_HINTS = ("\x9b", "\x9d", "\x9c")


def strip_ansi(text: str) -> str:
    """Remove ANSI escape sequences and terminal control codes, keeping ``\\t``, ``\\n``, ``\\r``.

    Colours, cursor moves, titles and hyperlinks (whose visible text stays) cost tokens and
    carry nothing for a model. Backspace overstrike (``X\\bX``, ``_\\bX``) resolves to what a
    terminal shows. ``\\r`` is left to :func:`collapse_progress`.
    """
    if "\x1b" in text:
        text = _ESCAPE_RE.sub("", text)
    if any(hint in text for hint in _CONTROL_HINTS) or (
        not text.isascii() and any(hint in text for hint in _C1_HINTS)
    ):
        text = _CONTROL_RE.sub("", text)
    if "\x08" in text:
        text = "\n".join(
            [_apply_backspaces(line) if "\x08" in line else line for line in text.split("\n")]
        )
    return text


def _apply_backspaces(line: str) -> str:
    """Each backspace erases the character before it; linear even for millions of them."""
    chunks: list[str] = []
    kept: list[int] = []
    for index, piece in enumerate(line.split("\x08")):
        if index and kept:
            kept[-1] -= 1
            if not kept[-1]:
                chunks.pop()
                kept.pop()
        if piece:
            chunks.append(piece)
            kept.append(len(piece))
    return "".join([chunk[:size] for chunk, size in zip(chunks, kept, strict=True)])


def collapse_progress(text: str) -> str:
    """Reduce carriage-return redraws to each line's final state; ``\\r\\n`` is a plain newline.

    A progress bar that redraws itself a thousand times is one line on screen and should be
    one line for the model. The final state is the last non-empty segment after a ``\\r``.
    """
    if "\r" not in text:
        return text
    text = text.replace("\r\n", "\n")
    if "\r" not in text:
        return text
    return "\n".join([_final_state(line) if "\r" in line else line for line in text.split("\n")])


def _final_state(line: str) -> str:
    for segment in reversed(line.split("\r")):
        if segment:
            return segment
    return ""


# Tried only where a run of blanks starts, and without backtracking: linear on any input.
_TRAILING_WS_RE = re.compile(r"(?<![ \t])[ \t]++$", re.MULTILINE)
_BLANK_RUN_RE = re.compile(r"\n\n\n+")
_FAST_TRIM_PASSES = 3


def tidy_whitespace(text: str) -> str:
    """Trim trailing spaces and tabs, drop leading blank lines, keep at most one blank line.

    Also leaves at most one newline at the end. Alignment padding and blank runs are pure
    token cost.
    """
    text = _trim_line_ends(text)
    if "\n\n\n" in text:
        text = _BLANK_RUN_RE.sub("\n\n", text)
    if text.startswith("\n"):
        text = text.lstrip("\n")
    if text.endswith("\n\n"):
        text = text.rstrip("\n") + "\n"
    return text


def _trim_line_ends(text: str) -> str:
    """Trailing whitespace off every line: ``str.replace`` passes, a regex only for long tails."""
    tabs = "\t" in text  # a single-character test is far cheaper than a two-character one
    for _ in range(_FAST_TRIM_PASSES):
        if " \n" not in text and not (tabs and "\t\n" in text):
            return text.rstrip(" \t") if text.endswith((" ", "\t")) else text
        text = text.replace("    \n", "\n").replace("  \n", "\n").replace(" \n", "\n")
        text = text.replace("\t\n", "\n")
    return _TRAILING_WS_RE.sub("", text)


_DIGITS = b"0123456789"
_EXACT_MIN_RUN = 3
# A near-duplicate run loses its middle lines, so it must be long enough to be noise.
_NEAR_MIN_RUN = 5
_LETTER_RE = re.compile(r"[A-Za-z]")
# Lines a near-duplicate merge must never hide: errors and anything pointing into a file.
_PRECIOUS_RE = re.compile(
    r"(?i:error|fail|warn|exception|panic|fatal|traceback|assert|denied|invalid|missing)"
    r"|\S:\d+|\bline \d+|\(\d+,\d+\)"
)
# File names: ``src/mod1.py`` and ``src/mod2.py`` differ only in a digit but are different files.
_FILE_NAME_RE = re.compile(r"[\w.-]*(?:\w/\w|\w\.[A-Za-z])[\w./-]*")


def collapse_repeats(text: str, *, near: bool = True) -> str:
    """Collapse runs of identical lines, and with ``near`` runs of near-identical ones.

    Identical runs (3+) keep one line and a count, which loses nothing. Near-identical lines
    are equal once digits are ignored (``Downloading x 12%``, ``epoch 3 loss 0.52``); a run of
    5+ keeps its first and last line, so the numbers at both ends survive, and a count. Runs
    with blank lines, lines without letters (numeric data), lines that look like errors or
    ``path:line`` locations, or lines naming different files only get the lossless
    identical-run treatment.
    """
    if text.find("\n", text.find("\n") + 1) < 0:
        return text
    keys: list[str] | list[bytes]
    if near:
        keys = text.encode("utf-8", "surrogatepass").translate(None, _DIGITS).split(b"\n")
    else:
        keys = text.split("\n")
    same = list(compress(range(1, len(keys)), map(eq, keys[1:], keys)))
    runs = _runs(same)
    if not runs:
        return text
    lines = text.split("\n")
    out: list[str] = []
    done = 0
    for start, end in runs:
        out += lines[done:start]
        out += _render_run(lines[start:end], near=near)
        done = end
    out += lines[done:]
    return text if len(out) == len(lines) else "\n".join(out)


def _runs(same: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` line ranges of 3+ equal-keyed lines, from the indices equal to their
    predecessor."""
    runs: list[tuple[int, int]] = []
    start = previous = -2
    for index in same:
        if index != previous + 1:
            if previous - start >= _EXACT_MIN_RUN - 1:
                runs.append((start, previous + 1))
            start = index - 1
        previous = index
    if previous - start >= _EXACT_MIN_RUN - 1:
        runs.append((start, previous + 1))
    return runs


def _render_run(run: list[str], *, near: bool) -> list[str]:
    if near and len(run) >= _NEAR_MIN_RUN and _mergeable(run):
        omitted = f"{_indent(run[0])}… {len(run) - 2} similar lines omitted"
        return [run[0], omitted, run[-1]]
    out: list[str] = []
    for line, group in groupby(run):
        count = sum(1 for _ in group)
        if count >= _EXACT_MIN_RUN and line.strip():
            out += [line, f"{_indent(line)}… line above repeated {count - 1} more times"]
        else:
            out += [line] * count
    return out


def _indent(line: str) -> str:
    """A marker takes its line's indentation, so it reads as part of the same block."""
    return line[: len(line) - len(line.lstrip())]


def _mergeable(run: list[str]) -> bool:
    """Whether dropping the middle of a near-identical run loses only noise."""
    if len(set(run)) == 1 or not _LETTER_RE.search(run[0]):
        return False
    names = _FILE_NAME_RE.findall(run[0])
    return all(
        line.strip() and not _PRECIOUS_RE.search(line) and _FILE_NAME_RE.findall(line) == names
        for line in run
    )


# Floats as Decimal keep their exact digits (1.10, 1e400) through the round trip.
_JSON_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_JSON_ENCODER = msgspec.json.Encoder(decimal_format="number")
_JSON_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeError, ValueError, OverflowError)


def minify_json(text: str) -> str:
    """A text that is one JSON object or array, re-encoded compactly; otherwise unchanged.

    Key order, non-ASCII text, big integers and the exact digits of numbers survive; escapes
    become the characters they stand for. A text that does not decode (truncated, lone
    surrogates, nested beyond the recursion limit) or would not get shorter stays as it is.
    """
    body = text.strip()
    if len(body) < 2 or body[0] not in "{[" or body[-1] not in "}]":
        return text
    try:
        minified = _JSON_ENCODER.encode(_JSON_DECODER.decode(body)).decode()
    except _JSON_ERRORS:
        return text
    return minified if len(minified) < len(text) else text


_CUT_MARGIN = 2  # the newlines around a marker


def cap_text(text: str, cap_chars: int, head_lines: int, tail_lines: int) -> str:
    """Above ``cap_chars``, keep the first and last lines around an explicit omission marker.

    If the kept lines are themselves too long (a few enormous lines), the cut is by characters,
    preferring line boundaries, and the marker says so. The result is at most ``cap_chars``
    long whenever the cap leaves room for the marker, so capping twice changes nothing.
    """
    if len(text) <= cap_chars:
        return text
    head_end = _head_end(text, max(head_lines, 0))
    tail_start = _tail_start(text, max(tail_lines, 0))
    omitted = text[
        head_end + 1 if head_lines > 0 else 0 : tail_start - 1 if tail_lines > 0 else None
    ]
    lines = omitted.count("\n") + (0 if omitted.endswith("\n") else 1)
    if head_end < tail_start and omitted:
        marker = f"[… {lines} lines ({len(omitted)} chars) omitted by messages_mw …]"
        capped = _join_cut(text[:head_end], marker, text[tail_start:])
        if len(capped) <= cap_chars:
            return capped
    return _cut_characters(text, cap_chars)


def _head_end(text: str, count: int) -> int:
    """Where the first ``count`` lines end (at the newline after them)."""
    position = -1
    for _ in range(count):
        position = text.find("\n", position + 1)
        if position < 0:
            return len(text)
    return max(position, 0)


def _tail_start(text: str, count: int) -> int:
    """Where the last ``count`` lines begin; a final newline does not make an extra line."""
    position = len(text) - 1 if text.endswith("\n") else len(text)
    for _ in range(count):
        position = text.rfind("\n", 0, position)
        if position < 0:
            return 0
    return position + 1


def _join_cut(head: str, marker: str, tail: str) -> str:
    return "\n".join([part for part in (head, marker, tail) if part])


def _cut_characters(text: str, cap_chars: int) -> str:
    """Keep head and tail characters, snapping to a newline in the outer half of each side."""
    longest = _chars_marker(len(text), text.count("\n"))
    budget = max(cap_chars - len(longest) - _CUT_MARGIN, 0)
    head_end = budget // 2
    tail_start = len(text) - (budget - head_end)
    newline = text.rfind("\n", 0, head_end)
    if newline > head_end // 2:
        head_end = newline
    newline = text.find("\n", tail_start, len(text) - (len(text) - tail_start) // 2)
    if newline >= 0:
        tail_start = newline + 1
    head = text[:head_end].rstrip(" \t\n")
    omitted = text[len(head) : tail_start]
    return _join_cut(head, _chars_marker(len(omitted), omitted.count("\n")), text[tail_start:])


def _chars_marker(chars: int, line_breaks: int) -> str:
    return f"[… {chars} chars ({line_breaks} line breaks) omitted by messages_mw …]"
