"""Line-run helpers shared by the command filters.

Filters run precompiled regexes over the whole text rather than Python loops over lines. Every
pattern starts with a literal ``\\n`` and ends with a ``(?=\\n)`` lookahead, and runs on the text
framed by one newline on each side: a pattern starting with a literal lets the regex engine jump
from newline to newline, where ``^`` with ``re.MULTILINE`` costs a try at every character (about
ten times slower on a megabyte of output).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["drop_runs", "marker", "runs_of", "sub_framed"]


def runs_of(line_pattern: str) -> re.Pattern[str]:
    """A regex matching a maximal run of whole lines that match ``line_pattern``, with the
    newline before the run; ``line_pattern`` must not match a newline itself."""
    line = rf"(?:{line_pattern})[ \t]*"
    # Not ``(?:line\n)*line``: that tries every alternative twice on each line that fails.
    return re.compile(rf"\n{line}(?:\n{line})*(?=\n)")


def marker(count: int, what: str) -> str:
    """The line that stands for dropped lines, so the agent knows they existed and how many."""
    return f"[messages_mw: {count} {what} omitted]"


def sub_framed(
    text: str, pattern: re.Pattern[str], replace: str | Callable[[re.Match[str]], str]
) -> str:
    """``pattern.sub`` over ``text`` framed by newlines; ``text`` itself when nothing matched."""
    framed = f"\n{text}\n"
    result, count = pattern.subn(replace, framed)
    return result[1:-1] if count else text


def drop_runs(text: str, runs: re.Pattern[str], what: str) -> str:
    """Replace each run matched by ``runs`` with a count marker, when the marker is shorter."""

    def replace(match: re.Match[str]) -> str:
        found = match.group()
        line = "\n" + marker(found.count("\n"), what)
        return line if len(line) < len(found) else found

    return sub_framed(text, runs, replace)
