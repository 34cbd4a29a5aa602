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


def drop_runs(
    text: str,
    runs: re.Pattern[str],
    what: str,
    keep: Callable[[str, list[re.Match[str]]], list[int]] | None = None,
) -> str:
    """Replace each run matched by ``runs`` with a count marker, when the marker is shorter.

    ``keep``, given the text framed by newlines and the runs found in it, names lines of those
    runs to keep all the same, each by the position of the newline before it.
    """
    if keep is None:
        return sub_framed(text, runs, lambda match: _run_marker(match.group(), what))
    framed = f"\n{text}\n"
    found = list(runs.finditer(framed))
    if not found:
        return text
    kept = sorted(keep(framed, found))
    pieces: list[str] = []
    done = 0
    index = 0
    for run in found:
        pieces.append(framed[done : run.start()])
        start = run.start()
        while index < len(kept) and kept[index] < run.end():
            line_start = kept[index]
            index += 1
            if line_start < start:
                continue
            # Every line of a run ends at a newline no later than the run's end.
            line_end = framed.find("\n", line_start + 1)
            if line_start > start:
                pieces.append(_run_marker(framed[start:line_start], what))
            pieces.append(framed[line_start:line_end])
            start = line_end
        if start < run.end():
            pieces.append(_run_marker(framed[start : run.end()], what))
        done = run.end()
    pieces.append(framed[done:])
    return "".join(pieces)[1:-1]


def _run_marker(found: str, what: str) -> str:
    """What a run of lines (each after its newline) becomes: a marker when that is shorter."""
    line = "\n" + marker(found.count("\n"), what)
    return line if len(line) < len(found) else found
