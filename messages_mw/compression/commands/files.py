"""Filters for git, directory listings, search results and compilers/linters.

These outputs are mostly information the agent asked for, so the filters are conservative: git
loses only its hint lines and blob ids, listings lose the insides of dependency and cache
directories the command did not name, searches lose matches beyond the first
:data:`MATCHES_PER_FILE` of one file, and diagnostics only their duplicate summary table and
column padding. File paths, line numbers and messages always survive.
"""

from __future__ import annotations

import re

from .lines import drop_runs, marker, runs_of, sub_framed

__all__ = [
    "MATCHES_PER_FILE",
    "NOISE_DIRS",
    "filter_diff",
    "filter_find",
    "filter_git_status",
    "filter_grep",
    "filter_lint",
    "filter_ls_long",
    "filter_tree",
]

MATCHES_PER_FILE = 50
# Directories whose insides are dependencies, caches or VCS internals, never the agent's code;
# the most common first, since the check for any of them stops at the first it finds.
_NOISE_NAMES = (
    "node_modules", ".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".tox", ".nox", ".next", ".nuxt", ".turbo", ".gradle", ".idea",
    "site-packages", ".cache", ".parcel-cache", ".eggs",
)  # fmt: skip
NOISE_DIRS = frozenset(_NOISE_NAMES)
# Substring scans skip ahead on a miss; a regex alternation of these names would try a dozen
# of them at every "." of a text.
_NOISE_PATHS = tuple(f"{name}/" for name in _NOISE_NAMES)
# The dotted names behind one "\.", so the regex engine tells most names apart by one letter
# (none is the start of another, so the grouping changes no match).
_NOISE_ALT = "|".join(
    [
        rf"\.(?:{'|'.join(re.escape(name[1:]) for name in sorted(NOISE_DIRS) if name[0] == '.')})",
        *(re.escape(name) for name in sorted(NOISE_DIRS) if name[0] != "."),
    ]
)
_MIN_COLLAPSED = 3


_GIT_HINTS = re.compile(
    r"\n[ \t]+\((?:use \"git |commit or discard |create/copy files |fix conflicts and run "
    r"|all conflicts fixed: run )[^\n]*\)[ \t]*(?=\n)"
)


def filter_git_status(text: str) -> str:
    """git status: drop the ``(use "git add <file>..." ...)`` hints; every file line stays."""
    if '  (use "git ' not in text and "(commit or discard" not in text:
        return text
    return sub_framed(text, _GIT_HINTS, "")


_DIFF_INDEX = re.compile(
    r"\nindex [0-9a-f]{7,}(?:,[0-9a-f]{7,})*\.\.[0-9a-f]{7,}(?: [0-7]{6})?[ \t]*(?=\n)"
)


def filter_diff(text: str) -> str:
    """git diff, show, log -p: drop ``index abc..def 100644`` lines, keep headers and hunks."""
    if "\nindex " not in text and not text.startswith("index "):
        return text
    return sub_framed(text, _DIFF_INDEX, "")


_LS_MODE = re.compile(r"\n[-dlcbpsD][-rwxsStT]{9}")
_LS_LONG = re.compile(
    r"\n([-dlcbpsD][-rwxsStT]{9}[.+@]?) +\d+ +(\S+) +(\S+) +"
    r"(\d[\d,]* +(?:[A-Z][a-z]{2} +\d{1,2} +(?:\d{1,2}:\d{2}|\d{4})"
    r"|\d{4}-\d{2}-\d{2}(?:[ T][\d:.]+)?(?: [+-]\d{4})?) [^\n]*)(?=\n)"
)
_LS_MIN_ENTRIES = 8


def filter_ls_long(text: str) -> str:
    """ls -l: drop the link count and the owner and group columns when every entry shares them.

    Only when every line starting with a file mode parses; a header line names the owner and
    group once. Permissions, sizes, dates and names stay.
    """
    framed = f"\n{text}\n"
    modes = len(_LS_MODE.findall(framed))
    if modes < _LS_MIN_ENTRIES:
        return text
    # [text between, mode, owner, group, size to name] per entry, then the text after the last:
    # rebuilt with a join, since a substitution template costs a Python call per entry.
    parts = _LS_LONG.split(framed)
    if len(parts) // 5 != modes:
        return text
    owners = set(zip(parts[2::5], parts[3::5], strict=True))
    if len(owners) != 1:
        return text
    owner, group = owners.pop()
    note = f"[messages_mw: ls -l link counts omitted; all owned by {owner}, group {group}]"
    pieces = [note, parts[0]]
    for mode, rest, between in zip(parts[1::5], parts[4::5], parts[5::5], strict=True):
        pieces += ("\n", mode, " ", rest, between)
    return "".join(pieces)[:-1]


_FIND_NOISE_RUN = re.compile(rf"\n((?:[^\n/]*/)*?({_NOISE_ALT})/)[^\n]*(?:\n\1[^\n]*)*(?=\n)")


def filter_find(text: str, named: frozenset[str] = frozenset()) -> str:
    """find, fd: collapse what lies inside ``node_modules``, ``.git``, ``.venv``... to a count.

    The directory's own line and its path stay; a directory the command line ``named`` is one
    the agent asked about, so it is listed in full.
    """
    if not _has_noise(text, named, _NOISE_PATHS):
        return text

    def collapse(run: re.Match[str]) -> str:
        count = run.group().count("\n")
        if run.group(2) in named or count < _MIN_COLLAPSED:
            return run.group()
        return f"\n{run.group(1)}… {marker(count, 'entries')}"

    return sub_framed(text, _FIND_NOISE_RUN, collapse)


_TREE_UNIT = r"(?:[│|\xa0 ][\xa0 ]{2} )"
_TREE_NOISE = re.compile(
    # A unit never matches where a connector does, so the units need no backtracking.
    rf"\n((?:{_TREE_UNIT})*+)(?:[├└]──|[|`]--)[\xa0 ]({_NOISE_ALT})/?(?:[ \t][^\n]*)?"
    rf"((?:\n\1{_TREE_UNIT}[^\n]*)+)(?=\n)"
)


def filter_tree(text: str, named: frozenset[str] = frozenset()) -> str:
    """tree: replace the subtree of ``node_modules``, ``.git``... with a count of its lines."""
    if not _has_noise(text, named, _NOISE_NAMES):
        return text

    def collapse(node: re.Match[str]) -> str:
        children = node.group(3)
        count = children.count("\n")
        if node.group(2) in named or count < _MIN_COLLAPSED:
            return node.group()
        head = node.group()[: len(node.group()) - len(children)]
        indent = children[1 : len(node.group(1)) + 5]
        return f"{head}\n{indent}… {marker(count, 'entries')}"

    return sub_framed(text, _TREE_NOISE, collapse)


def _has_noise(text: str, named: frozenset[str], needles: tuple[str, ...]) -> bool:
    """Whether ``text`` holds one of ``needles`` (noise names, or paths into them) other than
    a directory the command ``named``."""
    if not named:
        return any(needle in text for needle in needles)
    return any(
        needle in text
        for name, needle in zip(_NOISE_NAMES, needles, strict=True)
        if name not in named
    )


_GREP_BINARY = runs_of(
    r"Binary file [^\n]+ matches"
    r"|grep: [^\n]+: binary file matches"
    r"|[^\n]+: binary file matches \(found [^\n]*\)"
)
_GREP_FILE_RUN = re.compile(r"\n([^\s:]+):[^\n]*(?:\n\1:[^\n]*)*(?=\n)")
_GREP_NUMBERED_RUN = re.compile(r"\n\d+[:-][^\n]*(?:\n\d+[:-][^\n]*)*(?=\n)")


def filter_grep(text: str) -> str:
    """grep, rg, ag, ack: drop binary-file notices; cap one file's matches at the first 50.

    Every kept match stays exactly ``path:line:text``; a marker names the file and how many of
    its matches were omitted. Context lines (``path-12-``) are never dropped.
    """
    if "inary file " in text:  # in every notice the pattern knows
        text = drop_runs(text, _GREP_BINARY, "binary-file notices")
    if text.count("\n") <= MATCHES_PER_FILE:
        return text
    text = sub_framed(text, _GREP_FILE_RUN, _cap_file_matches)
    return sub_framed(text, _GREP_NUMBERED_RUN, _cap_numbered_matches)


def _cap_file_matches(run: re.Match[str]) -> str:
    found = run.group()
    if found.count("\n") <= MATCHES_PER_FILE:  # most runs: no list of their lines
        return found
    path = run.group(1)
    lines = found.split("\n")
    if "/" not in path and "." not in path:
        return found
    omitted = marker(len(lines) - 1 - MATCHES_PER_FILE, f"more matches in {path}")
    return "\n".join([*lines[: MATCHES_PER_FILE + 1], omitted])


def _cap_numbered_matches(run: re.Match[str]) -> str:
    found = run.group()
    if found.count("\n") <= MATCHES_PER_FILE:
        return found
    lines = found.split("\n")
    omitted = marker(len(lines) - 1 - MATCHES_PER_FILE, "more matches in this file")
    return "\n".join([*lines[: MATCHES_PER_FILE + 1], omitted])


_TSC_FILES_TABLE = re.compile(r"\nErrors {2,}Files(?:\n[ \t]+\d+[ \t]+\S[^\n]*)+(?=\n)")
# An eslint row's location and severity; its message and rule, split at the last run of two or
# more blanks, are found in Python. A regex that also matched those (a lazy message, then the
# blanks) backtracked over every way to cut a long run of blanks: cubic in a line's length.
_ESLINT_ROW = re.compile(r"\n[ \t]+(\d+:\d+)[ \t]++(error|warning)[ \t]++([^\n]*)(?=\n)")


def filter_lint(text: str) -> str:
    """tsc, mypy, ruff, eslint...: every diagnostic stays; drop tsc's per-file error table
    (it repeats the diagnostics' paths) and eslint's column padding."""
    if "Errors  " in text:
        text = sub_framed(text, _TSC_FILES_TABLE, "")
    if "error " in text or "warning " in text:
        text = _pad_eslint_rows(text)
    return text


def _pad_eslint_rows(text: str) -> str:
    """Rows ``  <line:col>  <severity>  <message>  <rule>`` as ``  \\1 \\2 \\3  \\4``, rebuilt
    with one join; a row whose message and rule are not two blanks apart stays as it is."""
    framed = f"\n{text}\n"
    pieces: list[str] = []
    done = 0
    for row in _ESLINT_ROW.finditer(framed):
        split = _message_and_rule(row.group(3))
        if split is None:
            continue
        message, rule = split
        location, severity = row.group(1), row.group(2)
        pieces += (framed[done : row.start()], "\n  ", location, " ", severity, " ", message)
        pieces += ("  ", rule)
        done = row.end()
    if not pieces:
        return text
    pieces.append(framed[done:])
    return "".join(pieces)[1:-1]


def _message_and_rule(rest: str) -> tuple[str, str] | None:
    body = rest.rstrip(" \t")
    cut = max(body.rfind(" "), body.rfind("\t"))
    message = body[: cut + 1].rstrip(" \t")
    if cut < 0 or not message or cut + 1 - len(message) < 2:
        return None
    return message, body[cut + 1 :]
