"""Command-aware output filters: a shell command line picks the filters that know its output.

:func:`filter_for_command` is what the contract names; :func:`inspect_command` also tells
whether the output's lines are text an agent may quote back exactly (a diff, grep matches, a
printed file), which the generic line rewrites in :mod:`..text` must then leave alone. Every
program in a ``&&``/``;`` chain contributes its filter, applied in order: each filter removes only
lines it recognises, so one program's filter leaves another's output as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from types import MappingProxyType

from .files import (
    NOISE_DIRS,
    filter_diff,
    filter_find,
    filter_git_status,
    filter_grep,
    filter_lint,
    filter_ls_long,
    filter_tree,
)
from .installs import filter_cargo_build, filter_npm, filter_pip
from .parse import MAX_COMMAND_CHARS, main_programs, names_files, operands, program_name
from .testrunners import filter_cargo_test, filter_go_test, filter_js_tests, filter_pytest

__all__ = [
    "DIFF_OUTPUT",
    "MAX_COMMAND_CHARS",
    "CommandOutput",
    "filter_for_command",
    "inspect_command",
]

Filter = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class CommandOutput:
    """What a command line says about its output: its filter, and whether its lines are exact.

    ``exact_lines`` means the agent may copy lines of this output into an edit or a patch, so
    only escape stripping, this filter and the size cap may touch it.
    """

    filter: Filter | None
    exact_lines: bool


# A plan names filters by key, so that a chain running pytest twice applies it once.
_Plan = tuple[tuple[str, ...], bool]
_FILTERS: Mapping[str, Filter] = MappingProxyType(
    {
        "pytest": filter_pytest,
        "js-tests": filter_js_tests,
        "go-test": filter_go_test,
        "cargo-test": filter_cargo_test,
        "cargo": filter_cargo_build,
        "pip": filter_pip,
        "npm": filter_npm,
        "git-status": filter_git_status,
        "diff": filter_diff,
        "ls": filter_ls_long,
        "grep": filter_grep,
        "lint": filter_lint,
    }
)
_PYTEST: _Plan = (("pytest",), False)
_JS: _Plan = (("js-tests",), False)
_PIP: _Plan = (("pip",), False)
_NPM: _Plan = (("npm",), False)
_GREP: _Plan = (("grep",), True)
_LINT: _Plan = (("lint",), False)
_PRINTS_FILE: _Plan = ((), True)
_DIFF_LINES: _Plan = (("diff",), True)
_FILE_PRINTERS = ("cat", "head", "tail", "nl", "bat", "batcat", "less", "more", "tac", "sed", "awk")
_LINTERS = ("tsc", "vue-tsc", "mypy", "dmypy", "ruff", "eslint", "pyright", "basedpyright",
            "flake8", "pylint", "biome", "oxlint")  # fmt: skip
_FIND: _Plan = (("find",), False)
_UNFILTERED = CommandOutput(None, exact_lines=False)
_EXACT = CommandOutput(None, exact_lines=True)
# The answer for a command with one program, built once: a frozen dataclass costs to construct.
_SINGLE: Mapping[tuple[str, bool], CommandOutput] = MappingProxyType(
    {(key, exact): CommandOutput(output_filter, exact)
     for key, output_filter in _FILTERS.items() for exact in (False, True)}
)  # fmt: skip
# What ``git diff`` gets, for output that shows a unified diff whatever its command.
DIFF_OUTPUT = _SINGLE["diff", True]
_PROGRAMS: Mapping[str, _Plan] = MappingProxyType(
    {
        **dict.fromkeys(("pytest", "py.test", "tox", "nox"), _PYTEST),
        **dict.fromkeys(("jest", "vitest", "mocha"), _JS),
        **dict.fromkeys(("pip", "pip3"), _PIP),
        **dict.fromkeys(("grep", "egrep", "fgrep", "ag", "ack"), _GREP),
        **dict.fromkeys(_LINTERS, _LINT),
        **dict.fromkeys(_FILE_PRINTERS, _PRINTS_FILE),
        # diff's own format: a line that differs only in trailing blanks, or in digits, is
        # the difference itself.
        **dict.fromkeys(("diff", "colordiff", "cmp"), _DIFF_LINES),
        "ls": (("ls",), False),
    }
)
_NPM_INSTALLS = frozenset(
    {"install", "i", "ci", "add", "update", "up", "upgrade", "uninstall", "remove", "rm", "audit",
     "dedupe", "prune", "rebuild", "outdated", "link", "fetch"}
)  # fmt: skip
_PY_INSTALLS = frozenset({"pip", "add", "sync", "lock", "remove", "install", "update", "tool"})
_CARGO_TESTS = frozenset({"test", "t", "nextest"})
_CARGO_BUILDS = frozenset(
    {"build", "b", "check", "c", "clippy", "run", "r", "fetch", "install", "update", "doc", "bench"}
)
_GIT_VALUE_OPTIONS = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace"})
_GIT_DIFFS = frozenset({"diff", "show", "log", "whatchanged", "format-patch", "reflog"})
# Print a file's lines as stored (a blob, or each line with its commit): kept exactly, as cat's.
_GIT_FILE_PRINTERS = frozenset({"cat-file", "blame", "annotate"})


def filter_for_command(command: str) -> Filter | None:
    """The output filter for a shell command line, or ``None`` when no filter knows it.

    ``"cd app && python -m pytest -x -q"`` gives the pytest filter. Handles pytest, jest, vitest,
    go test, cargo test and build, pip, npm, yarn, pnpm, git status/log/diff, ls, find, tree,
    grep, rg, tsc, mypy, ruff and eslint. Never raises; the filter never raises either.
    """
    return inspect_command(command).filter


def inspect_command(command: str) -> CommandOutput:
    """The filters of every program in ``command`` whose output reaches the agent, composed."""
    if len(command) > _CACHED_COMMAND_CHARS:
        return _inspect_long_cached(command[:MAX_COMMAND_CHARS])
    return _inspect_cached(command)


# An agent reruns the same few commands (its test suite, ``git status``) and every output of
# one is compressed with its command line: parse each line once. The answer is a pure function
# of the line. Long lines (scripts, heredocs) get a cache of their own, of a few: a call's every
# output block is compressed with its line, but few such lines recur across requests. The
# parser reads MAX_COMMAND_CHARS at most, so no longer key is kept.
_CACHED_COMMAND_CHARS = 2048
_CACHED_COMMANDS = 512
_CACHED_LONG_COMMANDS = 8


def _inspect(command: str) -> CommandOutput:
    filters: list[Filter] = []
    exact = False
    single = ""
    for argv in main_programs(command):
        plan = _plan(argv)
        if plan is None:
            continue
        exact = exact or plan[1]
        for key in plan[0]:
            output_filter = _FILTERS.get(key)
            if output_filter is None:
                output_filter = _listing_filter(key, argv)
            elif not filters:
                single = key
            if output_filter not in filters:
                filters.append(output_filter)
    if not filters:
        return _EXACT if exact else _UNFILTERED
    if len(filters) == 1:
        return _SINGLE[single, exact] if single else CommandOutput(filters[0], exact)
    return CommandOutput(partial(_apply_in_order, tuple(filters)), exact)


_inspect_cached = lru_cache(maxsize=_CACHED_COMMANDS)(_inspect)
_inspect_long_cached = lru_cache(maxsize=_CACHED_LONG_COMMANDS)(_inspect)


def _apply_in_order(filters: tuple[Filter, ...], text: str) -> str:
    for output_filter in filters:
        text = output_filter(text)
    return text


def _plan(argv: list[str]) -> _Plan | None:
    """Filter keys and exactness for one program's argv; ``None`` for an unknown program."""
    name = program_name(argv[0])
    args = argv[1:]
    if name in _PROGRAMS:
        plan = _PROGRAMS[name]
        return None if name in _FILE_PRINTERS and not names_files(argv) else plan
    if name in ("find", "fd", "fdfind"):
        return _FIND
    if name == "tree":
        return (("tree",), False)
    if name == "rg":
        return _FIND if "--files" in args else _GREP
    handler = _SUBCOMMANDS.get(name)
    return handler(args) if handler is not None else None


def _listing_filter(key: str, argv: list[str]) -> Filter:
    """find, fd, tree, ``rg --files``: a directory the command names is not collapsed."""
    arguments = "\0".join(argv[1:])
    named = frozenset(noise for noise in NOISE_DIRS if noise in arguments)
    return partial(filter_tree if key == "tree" else filter_find, named=named)


def _subcommand(args: list[str], value_options: frozenset[str] = frozenset()) -> str | None:
    found = operands(args, value_options)
    return found[0] if found else None


def _go(args: list[str]) -> _Plan | None:
    return (("go-test",), False) if _subcommand(args) == "test" else None


def _cargo(args: list[str]) -> _Plan | None:
    sub = _subcommand([arg for arg in args if not arg.startswith("+")])
    if sub in _CARGO_TESTS:
        return (("cargo-test", "cargo"), False)
    if sub in _CARGO_BUILDS:
        return (("cargo",), False)
    return None


def _git(args: list[str]) -> _Plan | None:
    found = operands(args, _GIT_VALUE_OPTIONS)
    sub = found[0] if found else None
    if sub == "status":
        return (("git-status",), False)
    if sub == "grep":
        return _GREP
    if sub == "ls-files":
        return _FIND
    if sub == "show" and any(":" in arg and not arg.startswith("-") for arg in found[1:]):
        return _PRINTS_FILE
    if sub in _GIT_FILE_PRINTERS:
        return _PRINTS_FILE
    if sub in _GIT_DIFFS:
        return (("diff",), True)
    return None


def _js_package_manager(args: list[str]) -> _Plan | None:
    """npm, yarn, pnpm, bun: installs, tests, ``run <script>`` and ``yarn <bin>``."""
    found = operands(args, frozenset({"--prefix", "-C", "--cwd", "--filter", "-F", "-w"}))
    sub = found[0] if found else "install"
    if sub in _NPM_INSTALLS:
        return _NPM
    if sub in ("test", "t", "tst"):
        return (("npm", "js-tests"), False)
    if sub in ("run", "run-script"):
        return _script_plan(found[1]) if len(found) > 1 else _NPM
    if sub in _PROGRAMS:
        return _PROGRAMS[sub]
    return _script_plan(sub)


def _script_plan(script: str) -> _Plan:
    """A package.json script, judged by its name: tests, checks and builds, or anything else."""
    lowered = script.lower()
    if "test" in lowered:
        return (("npm", "js-tests"), False)
    if any(word in lowered for word in ("lint", "tsc", "type", "check", "build")):
        return (("npm", "lint"), False)
    return _NPM


def _python_project(args: list[str]) -> _Plan | None:
    """uv, poetry, pdm, pipenv, rye, hatch: installs and syncs print pip-like progress."""
    return _PIP if _subcommand(args) in _PY_INSTALLS else None


_SUBCOMMANDS: Mapping[str, Callable[[list[str]], _Plan | None]] = MappingProxyType(
    {
        "go": _go,
        "cargo": _cargo,
        "git": _git,
        **dict.fromkeys(("npm", "yarn", "pnpm", "bun"), _js_package_manager),
        **dict.fromkeys(("uv", "poetry", "pdm", "pipenv", "rye", "hatch"), _python_project),
    }
)
