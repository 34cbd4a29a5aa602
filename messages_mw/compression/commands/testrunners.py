"""Filters for test runners: keep every failure, error and summary, drop the passing noise.

Each filter only removes lines it positively recognises as a passing test or a progress line of
its runner; everything else (tracebacks, assertion diffs, ``path:line`` locations, captured
output, warnings, the final summary) passes through untouched, so a filter applied to some
other command's output changes nothing there.
"""

from __future__ import annotations

import re

from .lines import drop_runs, marker, runs_of, sub_framed

__all__ = ["filter_cargo_test", "filter_go_test", "filter_js_tests", "filter_pytest"]

_PASSING = "passing-test lines"

# Built for the regex engine's fast paths, since a -v run is mostly these lines: ``[^\n]*``
# (a far faster loop than any class such as ``\S``) followed by a literal, which it finds by
# scanning back; alternatives that start with a literal or a class, which it rejects on their
# first character; no lazy repeats. The atomic group keeps a line with many ``::`` linear.
# ``PASSED(?<= PASSED)`` means `` PASSED``, led by a letter so that the back-scan does not stop
# at every space of the padding.
_PYTEST_PASSING = runs_of(
    r"(?>[^\n]*::)[^\n]*PASSED(?<= PASSED)(?: +\[ *\d+%\])?+"  # -v: one line per test
    r"|\[gw\d+\] \[ *\d+%\] PASSED [^\n]*"  # -v with xdist
    r"|PASSED [^\n]*::[^\n]*"  # -rA short summary
    r"|[.sxX][.sxX]* *\[ *\d+%\]"  # progress dots with a percentage
    # Progress dots of one file (an F or E keeps the line): a first word ending in ``.py``.
    r"|[^ \n]++(?<=[^ \n]\.py) [.sxX]+(?: *\[ *\d+%\])?"
)
_PYTEST_WARNINGS = re.compile(r"\n=+ warnings summary =+(?:\n(?!=+ |-- Docs: )[^\n]*)*(?=\n)")
# In the warnings summary, unindented lines list the tests that raised the warning below them.
_WARNING_TESTS = re.compile(r"\n(?:[^\s][^\n]*\n){5,}[^\s][^\n]*(?=\n|\Z)")
_KEEP_WARNING_TESTS = 3


def filter_pytest(text: str) -> str:
    """pytest: drop ``PASSED`` lines and dot-progress lines, shorten warnings' test lists.

    Failures, errors, the warnings themselves (with their ``path:line``), the short test summary
    and the final ``N failed, M passed`` line are kept whole.
    """
    if " PASSED" in text or "PASSED " in text or "%]" in text or ".py ." in text:
        text = drop_runs(text, _PYTEST_PASSING, _PASSING)
    if " warnings summary " in text:
        text = sub_framed(text, _PYTEST_WARNINGS, _shorten_warning_tests)
    return text


def _shorten_warning_tests(section: re.Match[str]) -> str:
    found = section.group()
    headline_end = found.find("\n", 1)
    if headline_end < 0:
        return found
    return found[:headline_end] + _WARNING_TESTS.sub(_keep_first_tests, found[headline_end:])


def _keep_first_tests(run: re.Match[str]) -> str:
    lines = run.group().split("\n")
    omitted = marker(len(lines) - 1 - _KEEP_WARNING_TESTS, "more test ids")
    return "\n".join([*lines[: _KEEP_WARNING_TESTS + 1], omitted])


_JS_PASSING = runs_of(
    r"[ \t]*[✓✔√] [^\n]*"  # jest --verbose, vitest, mocha: a passing test or file
    r"| ?PASS {1,2}\S[^\n]*"  # jest: a passing suite
)


def filter_js_tests(text: str) -> str:
    """jest, vitest, mocha: drop passing tests and suites (``✓ ...``, `` PASS  src/a.test.ts``).

    ``✕`` and ``x`` lines, ``FAIL`` suites, the ``●`` failure blocks with their code frames and
    ``at file:line:col`` stacks, and the ``Tests:``/``Test Files`` summary are kept.
    """
    if "✓" not in text and "✔" not in text and "√" not in text and "PASS " not in text:
        return text
    return drop_runs(text, _JS_PASSING, _PASSING)


# An ``=== RUN``/``NAME``/``CONT`` line says which test the lines after it belong to (a
# ``helper.go:12:`` line names no test), so it goes only when nothing but dropped lines follows
# it up to the next ``===`` or ``---`` line. The per-package ``ok  pkg 0.01s coverage: ...``
# lines are the run's summary and stay.
_GO_DROPPED_AFTER = r"(?:\n(?:PASS|\?   [ \t]*\S+[ \t]+\[no test files\])[ \t]*)*"
_GO_NEXT_HEADER = r"\n[ \t]*+(?:===|---) "
_GO_PASSING = runs_of(
    r"[ \t]*=== (?:RUN|PAUSE|CONT|NAME) [^\n]*+"
    # The next line is most often the next header: that alternative first.
    rf"(?={_GO_NEXT_HEADER}|{_GO_DROPPED_AFTER}(?:{_GO_NEXT_HEADER}|\n\n?\Z))"
    r"|[ \t]*--- PASS: [^\n]*"
    r"|\?   [ \t]*\S+[ \t]+\[no test files\]"
    r"|PASS"
)
_GO_DROPPED = "passing-test and progress lines"


def filter_go_test(text: str) -> str:
    """go test: drop ``=== RUN``, ``--- PASS``, ``PASS`` and ``[no test files]`` lines.

    ``--- FAIL`` lines, the test's log lines (``foo_test.go:12: ...``) with the ``=== RUN`` or
    ``=== NAME`` line that says whose they are, panics, the ``FAIL pkg`` lines and the
    ``ok  pkg 0.01s coverage: 81.3% of statements`` summary lines are kept.
    """
    if not any(word in text for word in ("=== ", "PASS", "[no test files]")):
        return text
    return drop_runs(text, _GO_PASSING, _GO_DROPPED)


_CARGO_PASSING = runs_of(r"test \S[^\n]* \.\.\. ok")


def filter_cargo_test(text: str) -> str:
    """cargo test: drop ``test x ... ok`` lines; ``FAILED`` tests, panics and results stay."""
    if " ... ok" not in text:
        return text
    return drop_runs(text, _CARGO_PASSING, _PASSING)
