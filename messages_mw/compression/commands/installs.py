"""Filters for package managers and builds: drop progress and download lines, keep the rest.

Warnings, errors, build failures, ``Successfully installed``, ``added N packages`` and audit
counts are never matched. A step line is only dropped when it reports success (``... done``),
so ``Preparing metadata (pyproject.toml) ... error`` stays.
"""

from __future__ import annotations

import re

from .lines import drop_runs, runs_of

__all__ = ["filter_cargo_build", "filter_npm", "filter_pip"]

_PROGRESS = "progress lines"

_PIP_PROGRESS = runs_of(
    r"[ \t]*(?:"
    r"(?:Collecting|Downloading|Downloaded|Using cached|Obtaining) [^\n]*"
    r"|Requirement already satisfied: [^\n]*"
    r"|[━╸╺]{3}[^\n]*"  # pip >= 22 progress bar
    r"|\|[█▉▊▋▌▍▎▏ ]+\|[^\n]*"  # older pip progress bar
    r"|(?:Preparing metadata|Getting requirements to build|Installing build dependencies"
    r"|Installing backend dependencies|Building wheel for|Building editable for"
    r"|Checking if build backend supports)[^\n]*\.\.\. done"
    r"|(?:Created wheel for|Stored in directory:|Attempting uninstall:"
    r"|Found existing installation:|Uninstalling|Successfully uninstalled) [^\n]*"
    r"|Building wheels for collected packages: [^\n]*"
    r")"
)


# What a kept line reporting a failure holds: ``error: subprocess-exited-with-error``,
# ``ERROR: ...``, ``Failed to build``.
_PIP_FAILURE_WORDS = ("rror", "RROR", "ailed", "AILED")
_PIP_COLLECTING = re.compile(r"\n[ \t]*(?:Collecting|Obtaining) ")


def filter_pip(text: str) -> str:
    """pip, uv, poetry installs: drop ``Collecting``, downloads, bars and satisfied requirements.

    A failure's lines often do not name the package (``Preparing metadata (setup.py) ...
    error``): the last ``Collecting`` line before each kept line reporting an error stays.
    """
    return drop_runs(text, _PIP_PROGRESS, _PROGRESS, _failing_packages)


def _failing_packages(framed: str, runs: list[re.Match[str]]) -> list[int]:
    """The ``Collecting`` lines, among the dropped ``runs``, last before a kept error line.

    Only the kept text between runs is searched for errors (a few lines in most installs), and
    the runs for their ``Collecting`` lines only when an error follows them.
    """
    kept: list[int] = []
    floor = 0  # runs before this one precede a Collecting line already kept
    for index, run in enumerate(runs):
        gap_end = runs[index + 1].start() if index + 1 < len(runs) else len(framed)
        if not any(framed.find(word, run.end(), gap_end) >= 0 for word in _PIP_FAILURE_WORDS):
            continue
        for back in range(index, floor - 1, -1):
            earlier = runs[back]
            found = list(_PIP_COLLECTING.finditer(framed, earlier.start(), earlier.end()))
            if found:
                kept.append(found[-1].start())
                break
        floor = index + 1
    return kept


_NPM_PROGRESS = runs_of(
    r"npm (?:timing|http|sill|verb) [^\n]*"
    r"|[ \t]*[⸨⠀-⣿][^\n]*"  # spinners and the gauge, whatever state a redraw left
    r"|\[\d+/\d+\] [^\n]*\.\.\.(?:[ \t]*\d+(?:\.\d+)?m?s)?"  # yarn classic steps
    r"|➤ YN00(?:13|19): [^\n]*"  # yarn berry: fetching, cache
    r"|Progress: resolved \d+[^\n]*"  # pnpm
    r"|[+-]{8,}"  # pnpm's package bar
    r"|Downloading \S+: [^\n]*"  # pnpm large packages
)


def filter_npm(text: str) -> str:
    """npm, yarn, pnpm, bun: drop timing/http logs, spinners, steps and download progress.

    ``npm WARN``, ``npm ERR!``, ``added N packages``, vulnerability counts and lifecycle script
    output are kept.
    """
    return drop_runs(text, _NPM_PROGRESS, _PROGRESS)


_CARGO_PROGRESS = runs_of(
    r"[ \t]*(?:Compiling|Checking|Documenting|Fresh|Downloaded|Unpacking|Adding|Locking"
    r"|Removing) \S+ v\d[^\n]*"
    r"|[ \t]*Downloaded \d+ crates? [^\n]*"
    r"|[ \t]*Downloading crates \.\.\."
    r"|[ \t]*Locking \d+ packages? [^\n]*"
    r"|[ \t]*Updating [^\n]*index"
    r"|[ \t]*Updating git repository [^\n]*"
    r"|[ \t]*Blocking waiting for file lock [^\n]*"
    r"|[ \t]*Building \[[=> ]*\] [^\n]*"
)


_CARGO_WORDS = (
    "Compiling ", "Checking ", "Documenting ", "Fresh ", "Downloaded ", "Downloading ",
    "Unpacking ", "Adding ", "Locking ", "Removing ", "Updating ", "Blocking ", "Building [",
)  # fmt: skip


def filter_cargo_build(text: str) -> str:
    """cargo: drop ``Compiling x v1.2``, downloads, index updates and the build bar.

    ``warning:``/``error[E...]`` blocks with their ``-->`` locations and ``Finished`` stay.
    """
    if not any(word in text for word in _CARGO_WORDS):
        return text
    return drop_runs(text, _CARGO_PROGRESS, _PROGRESS)
