"""Collapsing runs of repeated lines in tool output (``… repeated 57 times``).

A run of identical lines keeps one line and a count, losing nothing. A run of near-identical
lines (equal once digits are ignored: counters, percentages) also loses its middle, unless its
lines hold an error word, a file location or different file names, or are each a single name
(tags, branches, constants), which an agent needs.
Deterministic and dependent on the text alone, like every transform of :mod:`.text`.
"""

from __future__ import annotations

import re
from itertools import compress, groupby
from operator import eq

__all__ = ["collapse_repeats"]

_DIGITS = b"0123456789"
_EXACT_MIN_RUN = 3
# A near-duplicate run loses its middle lines, so it must be long enough to be noise.
_NEAR_MIN_RUN = 5
_LETTER_RE = re.compile(r"[A-Za-z]")
_ALNUM_RE = re.compile(r"[A-Za-z0-9]")
# Lines a near-duplicate merge must never hide: errors, in any case, and anything pointing into
# a file: ``\S:\d+``, ``\bline \d+`` (``Line``, ``LINE`` too), ``(\d+,\d+)``, and a number
# opening a line with ``:`` or ``-``, as grep prints one file's matches and context (a date's
# ``2024-`` is not one). Each location pattern starts with a literal, so the regex engine only
# tries it there (the first line's number is matched apart); the words are substring scans of
# the lowered text, not an ignore-case alternation tried at every character.
_PRECIOUS_WORDS = (
    "error", "fail", "warn", "exception", "panic", "fatal", "traceback", "assert", "denied",
    "invalid", "missing",
)  # fmt: skip
_PRECIOUS_WORD_RE = re.compile(f"(?i:{'|'.join(_PRECIOUS_WORDS)})")
_NUMBERED_LINE = r"\d+(?::|-(?!\d))"
_LOCATION_RE = re.compile(
    "|".join(
        [
            r":(?<=\S:)\d",
            rf"\n{_NUMBERED_LINE}",
            *(rf"{word} \d(?<!\w{word} \d)" for word in ("line", "Line", "LINE")),
            r"\(\d+,\d+\)",
        ]
    )
)
_FIRST_LINE_NUMBER_RE = re.compile(_NUMBERED_LINE)
# The non-ASCII letters that ignore-case matching pairs with an ASCII one but str.lower() does
# not lower to it alone (the Kelvin sign it does).
_CASE_FOLD_ODDITIES = ("\u0130", "\u0131", "\u017f")
# File names: ``src/mod1.py`` and ``src/mod2.py`` differ only in a digit but are different files.
# That is ``[\w.-]*(?:\w/\w|\w\.[A-Za-z])[\w./-]*``, written so that the regex engine tries it
# only at word characters, and once per word: no match starts right after a character its
# prefix could have taken. The first character is taken apart, then the prefix's longest
# lengths are tried first and the empty one last, as the plain form backtracks.
_FILE_NAME_REST = (
    r"(?<![\w.-][\w.-])(?:[\w.-]*(?:\w/\w|\w\.[A-Za-z])|(?<=\w)(?:/\w|\.[A-Za-z]))[\w./-]*"
)
_FILE_NAME_RE = re.compile(rf"[\w.-]{_FILE_NAME_REST}")
# The same matches with each line break as a match of its own.
_FILE_NAME_OR_BREAK_RE = re.compile(rf"[\w.\n-](?:(?<=\n)|{_FILE_NAME_REST})")


def collapse_repeats(text: str, *, near: bool = True) -> str:
    """Collapse runs of identical lines, and with ``near`` runs of near-identical ones.

    Identical runs (3+) keep one line and a count, which loses nothing. Near-identical lines
    are equal once digits are ignored (``Downloading x 12%``, ``epoch 3 loss 0.52``); a run of
    5+ keeps its first and last line, so the numbers at both ends survive, and a count. Runs
    with blank lines, lines without letters (numeric data), lines that look like errors or
    locations (``path:line``, ``Line 12``, a search's ``12:`` match), or lines naming different
    files only get the lossless identical-run treatment.
    """
    if text.find("\n", text.find("\n") + 1) < 0:
        return text
    keys: list[str] | list[bytes]
    if near:
        keys = text.encode("utf-8", "surrogatepass").translate(None, _DIGITS).split(b"\n")
    else:
        keys = text.split("\n")
    # Three equal keys in a row include an equal pair starting at an even index: comparing
    # those pairs alone rules out most texts at half the cost of comparing every pair.
    if not any(map(eq, keys[1::2], keys[::2])):
        return text
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
    """Whether dropping the middle of a near-identical run loses only noise.

    No line is blank, since every line's key holds the letter of ``run[0]``'s. The patterns run
    once over the joined lines (none of their matches spans a line break), since a progress
    log can make a run of a hundred thousand lines.
    """
    if run.count(run[0]) == len(run) or not _LETTER_RE.search(run[0]):
        return False
    if _one_name(run[0]) and _one_name(run[-1]):
        return False  # a list of names (tags, branches, migrations, constants): each counts
    names = _FILE_NAME_RE.findall(run[0])
    # A run of different files mostly shows at its second line already.
    if _FILE_NAME_RE.findall(run[1]) != names or _FILE_NAME_RE.findall(run[-1]) != names:
        return False
    joined = "\n".join(run)
    if _has_precious(joined):
        return False
    if not names:  # a file name needs a "/" or a "."
        return ("/" not in joined and "." not in joined) or _FILE_NAME_RE.search(joined) is None
    # Every line names the same files: the matches, line by line, are ``names`` each time.
    expected = [*names, "\n"] * len(run)
    expected.pop()
    return _FILE_NAME_OR_BREAK_RE.findall(joined) == expected


def _one_name(line: str) -> bool:
    """Whether ``line`` holds a single word, past list marks (``-``, ``*``, ``[X]``) and
    values (``= 1``): ``v1.11.0``, ``* release-3``, ``[X] 0007_auto``, ``LEVEL_6 = 6``. A
    progress line has more words (``Downloading x 40%``, ``batch 7 of 80``)."""
    words = 0
    for token in line.split():
        if "%" not in token and _LETTER_RE.search(token) and len(_ALNUM_RE.findall(token)) > 1:
            words += 1
            if words > 1:
                return False
    return words == 1


def _has_precious(text: str) -> bool:
    """Whether ``text`` holds an error word (in any case) or a file location."""
    if _LOCATION_RE.search(text) or _FIRST_LINE_NUMBER_RE.match(text):
        return True
    if not text.isascii() and any(odd in text for odd in _CASE_FOLD_ODDITIES):
        return _PRECIOUS_WORD_RE.search(text) is not None
    lowered = text.lower()
    return any(word in lowered for word in _PRECIOUS_WORDS)
