"""Generic compression of one tool output: small pure ``str -> str`` transforms and their pipeline.

Each transform is deterministic and depends on its input text alone, so the same tool output
compresses to the same bytes on every request (the cache-safety rule). Every transform does its
cheap check first (a C-speed ``in`` test, a regex that jumps from newline to newline, a length
comparison) and returns its input unchanged, the same object, when there is nothing to do, since
most tool outputs are already clean. None raises on any ``str``: lone surrogates, NULs,
multi-megabyte single lines, deeply nested JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from .commands import DIFF_OUTPUT, CommandOutput, inspect_command
from .repeats import collapse_repeats

__all__ = [
    "TextOptions",
    "cap_text",
    "collapse_progress",
    "collapse_repeats",
    "compress_tool_text",
    "is_unified_diff",
    "minify_json",
    "strip_ansi",
    "strip_escapes",
    "tidy_whitespace",
]


@dataclass(frozen=True, slots=True)
class TextOptions:
    """Which transforms :func:`compress_tool_text` applies, and the size cap.

    ``cap_chars=None`` disables the cap; above ``cap_chars`` characters a text keeps its first
    ``head_lines`` and last ``tail_lines`` lines around an omitted-lines marker.
    ``collapse_near_repeats=False`` keeps :func:`collapse_repeats` lossless (identical runs
    only), for text whose every line may matter. ``tidy_blank_lines=False`` has
    :func:`tidy_whitespace` trim only line ends, keeping every line: with ``collapse_repeats``
    off too, a line keeps its number, as code a user pasted and asks about must.
    """

    strip_ansi: bool = True
    collapse_progress: bool = True
    tidy_whitespace: bool = True
    tidy_blank_lines: bool = True
    collapse_repeats: bool = True
    collapse_near_repeats: bool = True
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
    whose lines an agent may quote back exactly (grep matches, printed files, and diffs, which
    are also recognised by their hunk headers whatever the command) skips the line rewrites
    and loses only escape sequences (:func:`strip_escapes`), not its control characters.
    Pure and deterministic: the result depends on the arguments alone.
    """
    # Both markers start with "<": one memchr spares most texts two substring scans.
    reminders = False
    if "<" in text:
        if _TOOL_USE_ERROR in text:
            return text
        reminders = _REMINDER_OPEN in text
    profile = inspect_command(command) if command and options.command_filters else None
    if not reminders:
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
        text = strip_escapes(text)
    if not exact and "@@ -" in text and is_unified_diff(text):
        # A diff from any command (``diff -u``, ``gh pr diff``, ``hg diff``): its hunk headers
        # count its lines, so they stay exact, as ``git diff``'s do.
        exact = True
        if profile is None or profile.filter is None:
            profile = DIFF_OUTPUT if options.command_filters else None
    if options.strip_ansi and not exact:
        text = _strip_controls(text)
    if options.collapse_progress and not exact:
        text = collapse_progress(text)
    if profile is not None and profile.filter is not None:
        text = profile.filter(text)
    if not exact:
        if options.tidy_whitespace:
            text = tidy_whitespace(text) if options.tidy_blank_lines else _trim_line_ends(text)
        if options.minify_json:
            # Before repeats: a pretty-printed document's repeated lines must not break its JSON.
            text = minify_json(text)
        if options.collapse_repeats:
            # A command filter knows its output; lossy near-duplicate merging is for the rest.
            near = options.collapse_near_repeats and (profile is None or profile.filter is None)
            text = collapse_repeats(text, near=near)
    if options.cap_chars is not None:
        text = cap_text(text, options.cap_chars, options.head_lines, options.tail_lines)
    return text


# A unified diff's hunk header; the regex starts with a literal, and the caller checks that
# it begins a line.
_HUNK_RE = re.compile(r"@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")


def is_unified_diff(text: str) -> bool:
    """Whether ``text`` holds a unified diff: a line that starts with a hunk header,
    ``@@ -12,7 +12,9 @@``. Such lines are counted by the header, so none may be merged."""
    for match in _HUNK_RE.finditer(text):
        start = match.start()
        if start == 0 or text[start - 1] == "\n":
            return True
    return False


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
# The usual escapes, colours and cursor moves, are complete CSI sequences: one branch, no
# alternation, removes them at a fraction of the cost of the full pattern. At each ESC it spans
# what the full pattern's CSI branch spans, since its final byte ends that branch too.
_CSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_CONTROL_RE = re.compile(
    r"""
      \x9b[0-?]*[ -/]*[@-~]?                      # 8-bit CSI
    | \x9d[^\x07\x1b\x9c\x9d\n]*+(?:\x07|\x9c|\x1b\\)  # 8-bit OSC, only with its terminator
    | [\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f]         # other controls but \t \n \r \b
    """,
    re.VERBOSE,
)


def strip_ansi(text: str) -> str:
    """Remove ANSI escape sequences and terminal control codes, keeping ``\\t``, ``\\n``, ``\\r``.

    Colours, cursor moves, titles and hyperlinks (whose visible text stays) cost tokens and
    carry nothing for a model. Backspace overstrike (``X\\bX``, ``_\\bX``) resolves to what a
    terminal shows. ``\\r`` is left to :func:`collapse_progress`.
    """
    return _strip_controls(strip_escapes(text))


def strip_escapes(text: str) -> str:
    """Remove the sequences that start with ESC (colours, cursor moves, titles, hyperlinks)
    and nothing else: all that output with exact lines loses, since a form feed, a NUL or a
    backspace in a diff is the file's own content."""
    if "\x1b" in text:
        plain = _CSI_RE.sub("", text)
        # No ESC left: every one began a CSI sequence, which the full pattern removes alike.
        # Otherwise removing some first could join what is left into other sequences.
        text = plain if "\x1b" not in plain else _ESCAPE_RE.sub("", text)
    return text


def _strip_controls(text: str) -> str:
    """Remove 8-bit CSI and OSC sequences and control codes but ``\\t``, ``\\n``, ``\\r``, and
    resolve backspace overstrike."""
    # Controls that make it scan for all of them (rarer ones alone are left as they are):
    # single-character tests are memchr calls, far cheaper than one regex scan.
    if (
        "\x07" in text
        or "\x00" in text
        or "\x0b" in text
        or "\x0c" in text
        or "\x7f" in text
        or (not text.isascii() and ("\x9b" in text or "\x9d" in text or "\x9c" in text))
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
    one line for the model. The final state is the last non-empty segment after a ``\\r``. Only
    segments that look like redraws of it are dropped (see :func:`_is_redraw`): a bare ``\\r``
    also ends the lines of old Mac files, whose every segment is content.
    """
    if "\r" not in text:
        return text
    text = text.replace("\r\n", "\n")
    if "\r" not in text:
        return text
    return "\n".join([_final_state(line) if "\r" in line else line for line in text.split("\n")])


def _final_state(line: str) -> str:
    """The last non-empty ``\\r``-separated segment when the others are redraws of it, else
    ``line`` without its trailing ``\\r`` (which shows nothing)."""
    line = line.rstrip("\r")
    cut = line.rfind("\r")
    if cut < 0:
        return line
    return line[cut + 1 :] if _is_redraw(line, cut) else line


# A grep-style location opening a line (``src/a.py:12:``, ``12-``): such a line is a match, never
# a progress bar. Looked for in the first segment's head only, so it stays linear.
_SEGMENT_LOCATION_RE = re.compile(r"(?:\S*:)?\d+[:-]")
_LOCATION_HEAD = 512
_LETTER_RE = re.compile(r"[A-Za-z]")
# What a redrawn state shows: a percentage, a bar or a braille spinner.
_PROGRESS_CHARS = "%━╸╺█▉▊▋▌▍▎▏░▒▓⠀-⣿"
_PROGRESS_MARK_RE = re.compile(rf"[{_PROGRESS_CHARS}]|[=#>]{{3}}")
# A segment (after its ``\r``) that is not blank and holds none of the characters above: one
# class loop per segment, where a search for marks would try them at every character.
_UNMARKED_SEGMENT_RE = re.compile(rf"\r(?![ \t]*+(?:\r|\Z))[^\r{_PROGRESS_CHARS}]*+(?=\r|\Z)")
_MIN_SHARED_PREFIX = 4


def _is_redraw(line: str, cut: int) -> bool:
    """Whether every segment of ``line`` before its last (after the ``\\r`` at ``cut``) is a
    redraw the last one replaces.

    A segment is one when it is blank or blanked by the next one (a cleared line), starts like
    the last segment (its first :data:`_MIN_SHARED_PREFIX` characters, at least up to its first
    letter: ``Downloading``, ``Receiving objects:``), or shows progress (a percentage, a bar, a
    spinner). A first segment holding a ``path:line:`` location is a search match, which is
    never collapsed.
    """
    if _SEGMENT_LOCATION_RE.match(line, 0, _LOCATION_HEAD) is not None:
        return False
    last = line[cut + 1 :]
    letter = _LETTER_RE.search(last)
    prefix = last[: max(_MIN_SHARED_PREFIX, letter.end())] if letter is not None else None
    # The common case, a line redrawn with one label, costs two counts and no split.
    if (
        prefix is not None
        and line.startswith(prefix)
        and line.count(f"\r{prefix}") == line.count("\r")
    ):
        return True
    first_end = line.find("\r")
    if (
        _UNMARKED_SEGMENT_RE.match(f"\r{line[:first_end]}") is None
        and _UNMARKED_SEGMENT_RE.search(line, first_end, cut) is None
    ):
        return True
    head = line[:cut]
    segments = head.split("\r")
    cleared = False  # whether the segment after this one blanks the line with spaces
    for segment in reversed(segments):
        blank = not segment.strip(" \t")
        if not (
            blank
            or cleared
            or (prefix is not None and segment.startswith(prefix))
            or _PROGRESS_MARK_RE.search(segment) is not None
        ):
            return False
        cleared = blank and segment != ""
    return True


# A newline after a space or tab, or starting a blank run: one pass that jumps from newline to
# newline costs less than the two substring scans it replaces.
_UNTIDY_RE = re.compile(r"\n(?:(?<=[ \t]\n)|\n\n)")
_BLANK_RUN_RE = re.compile(r"\n\n\n+")


def tidy_whitespace(text: str) -> str:
    """Trim trailing spaces and tabs, drop leading blank lines, keep at most one blank line.

    Also leaves at most one newline at the end. Alignment padding and blank runs are pure
    token cost.
    """
    if _UNTIDY_RE.search(text) is not None:
        text = _trim_line_ends(text)
        if "\n\n\n" in text:
            text = _BLANK_RUN_RE.sub("\n\n", text)
    elif text.endswith((" ", "\t")):
        text = text.rstrip(" \t")
    if text.startswith("\n"):
        text = text.lstrip("\n")
    if text.endswith("\n\n"):
        text = text.rstrip("\n") + "\n"
    return text


def _trim_line_ends(text: str) -> str:
    """Trailing spaces and tabs off every line, the last one included; linear on any input.

    Splitting at ``" \n"`` leaves each piece ending in the rest of one line's trailing run, so
    one ``rstrip`` per piece trims the whole run; the ``"\t\n"`` pass then finds only lines
    that ended in a tab.
    """
    for line_end in (" \n", "\t\n") if "\t" in text else (" \n",):
        pieces = text.split(line_end)
        if len(pieces) > 1:
            text = "\n".join([piece.rstrip(" \t") for piece in pieces])
    return text.rstrip(" \t") if text.endswith((" ", "\t")) else text


# Floats as Raw keep their exact text (1.10, 1e400, 1E5) through the round trip.
_JSON_DECODER = msgspec.json.Decoder(float_hook=msgspec.Raw)
_JSON_ENCODER = msgspec.json.Encoder()
_JSON_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeError, ValueError, OverflowError)
# Escapes that decode to a character the checks in minify_json count.
_COUNTED_ESCAPES = ("\\u003a", "\\u003A", "\\u002d", "\\u002D")


def minify_json(text: str) -> str:
    """A text that is one JSON object or array, re-encoded compactly; otherwise unchanged.

    Key order, non-ASCII text, big integers and the exact text of every number survive;
    escapes become the characters they stand for. A text that does not decode (truncated, lone
    surrogates, nested beyond the recursion limit), would not get shorter, or whose round trip
    would change content stays as it is: an object repeating a key (decoding keeps one) or an
    integer ``-0`` (which becomes ``0``).
    """
    # Most texts neither start nor end like JSON: refuse them before copying anything.
    first, last = text[:1], text[-1:]
    if (first not in "{[" and not first.isspace()) or (last not in "}]" and not last.isspace()):
        return text
    body = text.strip()
    if len(body) < 2 or body[0] not in "{[" or body[-1] not in "}]":
        return text
    try:
        minified = _JSON_ENCODER.encode(_JSON_DECODER.decode(body)).decode()
    except _JSON_ERRORS:
        return text
    if len(minified) >= len(text):
        return text
    # The round trip only drops whitespace and turns escapes into characters, so each ":" and
    # "-" stays, unless a repeated key (with its ":") or a "-0" was lost. Escapes of those
    # characters would add some: such rare texts are left alone.
    if minified.count(":") != body.count(":") or minified.count("-") != body.count("-"):
        return text
    if "\\u00" in body and any(escape in body for escape in _COUNTED_ESCAPES):
        return text
    return minified


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
