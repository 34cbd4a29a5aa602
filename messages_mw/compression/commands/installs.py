"""Filters for package managers and builds: drop progress and download lines, keep the rest.

Warnings, errors, build failures, ``Successfully installed``, ``added N packages`` and audit
counts are never matched. A step line is only dropped when it reports success (``... done``),
so ``Preparing metadata (pyproject.toml) ... error`` stays.
"""

from __future__ import annotations

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


def filter_pip(text: str) -> str:
    """pip, uv, poetry installs: drop ``Collecting``, downloads, bars and satisfied requirements."""
    return drop_runs(text, _PIP_PROGRESS, _PROGRESS)


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
