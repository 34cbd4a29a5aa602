"""The generic text transforms one by one, adversarial inputs, and compress_tool_text."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages_mw.compression.text import (
    TextOptions,
    cap_text,
    collapse_progress,
    collapse_repeats,
    compress_tool_text,
    minify_json,
    strip_ansi,
    strip_escapes,
    tidy_whitespace,
)

from . import compression_samples as samples

OPTIONS = TextOptions()
ALL_OFF = TextOptions(
    strip_ansi=False,
    collapse_progress=False,
    tidy_whitespace=False,
    collapse_repeats=False,
    minify_json=False,
    command_filters=False,
    cap_chars=None,
)


def cpu_seconds(run: Callable[[], object], repeat: int = 1) -> float:
    """The least CPU time this thread spent in ``run()`` over ``repeat`` runs. CPU time, not
    wall time: other processes loading the machine's shared CPUs do not count."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        run()
        best = min(best, time.thread_time() - start)
    return best


def growth(run: Callable[[int], object], size: int) -> float:
    """How many times longer ``run(8 * size)`` takes than ``run(size)``: about 8 for a linear
    algorithm, about 64 for a quadratic one (best of three runs each)."""
    return cpu_seconds(lambda: run(8 * size), 3) / cpu_seconds(lambda: run(size), 3)


# Linearity guards below: either the growth from n to 8n, bounded at 20 (2.5x a linear 8, well
# under a quadratic 64), or an absolute bound on an input where a quadratic algorithm would
# take minutes and the linear one takes milliseconds (100x or more below the bound).

# (command, output) pairs as an agent's shell tool returns them.
SAMPLE_RUNS = [
    ("python -m pytest -v", samples.PYTEST_VERBOSE),
    ("pytest -q", samples.PYTEST_QUIET),
    ("npm test", samples.JEST),
    ("go test -v ./...", samples.GO_TEST),
    ("cargo test", samples.CARGO_TEST),
    ("pip install -r requirements.txt", samples.PIP_INSTALL),
    ("npm install", samples.NPM_INSTALL),
    ("git status", samples.GIT_STATUS),
    ("git diff", samples.GIT_DIFF),
    ("ls -la", samples.LS_LONG),
    ("find . -name '*.js'", samples.find_output()),
    ("tree -a", samples.tree_output()),
    ("grep -rn TODO .", samples.grep_output()),
    ("npx tsc --noEmit", samples.TSC),
    ("curl -s localhost:8000/items", samples.JSON_PRETTY),
]


# strip_ansi


def test_strip_ansi_removes_colours_cursor_moves_and_titles() -> None:
    text = "\x1b[1;31mFAILED\x1b[0m \x1b[2K\x1b[1Gtests/a.py:3\x1b]0;pytest\x07 done\x1b[?25h"
    assert strip_ansi(text) == "FAILED tests/a.py:3 done"


def test_strip_ansi_keeps_hyperlink_text_and_drops_the_link() -> None:
    text = "see \x1b]8;;https://x.org/a\x1b\\the docs\x1b]8;;\x1b\\ and \x1b]8;;u\x07y\x1b]8;;\x07"
    assert strip_ansi(text) == "see the docs and y"


def test_strip_ansi_single_character_escapes_dcs_and_8bit_sequences() -> None:
    assert strip_ansi("\x1b(B\x1b7x\x1b8\x1b=\x1bMy") == "xy"
    assert strip_ansi("a\x1bPq#0;2;0;0;0\x1b\\b") == "ab"
    assert strip_ansi("\x9b31mred\x9b0m \x9d0;title\x9cok") == "red ok"


def test_strip_ansi_drops_only_the_control_of_an_unterminated_8bit_osc() -> None:
    # Double-encoded UTF-8 ("“Hello”" read as Latin-1) holds U+009D with no terminator.
    mojibake = "“Hello”".encode().decode("latin-1")
    line = f"data.csv:12: {mojibake}, amount=-25.00, id=E-1\nnext line\n"
    assert strip_ansi(line) == "data.csv:12: âHelloâ, amount=-25.00, id=E-1\nnext line\n"
    assert strip_ansi("a\x9d0;title\x07b \x9d0;t\x9cc \x9dx\ny") == "ab c x\ny"


def test_strip_ansi_keeps_tabs_newlines_and_carriage_returns() -> None:
    text = "a\tb\r\nc\rd\n"
    assert strip_ansi(text) is text


def test_strip_ansi_removes_bell_nul_del_and_form_feed() -> None:
    assert strip_ansi("a\x07b\x00c\x7fd\x0ce\x0bf\x01g") == "abcdefg"


def test_strip_escapes_keeps_every_control_that_is_not_part_of_one() -> None:
    text = "\x1b[31ma\x1b[0m\x07b\x00c\x7fd\x0ce\x0bf\x01g\x08h\x9bi\x1b]0;t\x07j"
    assert strip_escapes(text) == "a\x07b\x00c\x7fd\x0ce\x0bf\x01g\x08h\x9bij"


def test_strip_ansi_resolves_backspace_overstrike() -> None:
    assert strip_ansi("N\x08NA\x08AM\x08ME\x08E") == "NAME"
    assert strip_ansi("_\x08u_\x08l") == "ul"
    assert strip_ansi("abc\x08\x08d\n\x08x") == "ad\nx"


@pytest.mark.parametrize(
    "tail", ["\x1b", "\x1b[", "\x1b[31", "\x1b[38;5", "\x1b]8;;http://x", "\x9b3"]
)
def test_strip_ansi_drops_a_sequence_cut_off_at_the_end(tail: str) -> None:
    assert strip_ansi("\x1b[32mok\x1b[0m line\n" + tail) == "ok line\n"


def test_strip_ansi_sequence_split_by_a_newline_loses_no_text() -> None:
    assert strip_ansi("a\x1b[3\n1mb") == "a\n1mb"
    assert strip_ansi("x\x1b]0;title\nnext") == "x\nnext"


def test_strip_ansi_millions_of_backspaces_stay_linear() -> None:
    assert strip_ansi("x" * 200_000 + "\x08" * 200_000 + "y") == "y"
    # Growth, not an absolute bound: a quadratic strip that re-copied its output per backspace
    # would move only some 20 GB here, seconds at memcpy speed.
    texts = {n: "x" * n + "\x08" * n + "y" for n in (50_000, 400_000)}
    assert growth(lambda n: strip_ansi(texts[n]), 50_000) < 20


# collapse_progress


def test_collapse_progress_keeps_each_lines_final_state() -> None:
    text = "Downloading 10%\rDownloading 55%\rDownloading 100%\nDone\n"
    assert collapse_progress(text) == "Downloading 100%\nDone\n"


def test_collapse_progress_treats_crlf_as_a_newline() -> None:
    assert collapse_progress("a\r\nb\r\n") == "a\nb\n"
    assert collapse_progress("50%\r100%\r\nnext\r\r\n") == "100%\nnext\n"


def test_collapse_progress_trailing_and_lone_carriage_returns() -> None:
    assert collapse_progress("done\r\n\r\r\nx\r") == "done\n\nx"


@pytest.mark.parametrize(
    "text",
    [
        # Grep matches in a file with CR-only line ends: the location heads the first segment.
        "reports/legacy.csv:1:id,amount\rE-1,-25.00\rE-2,5.00\rE-3,-7.50\n",
        "1:id,amount\rE-1,-25.00\rE-3,-7.50",
        "reports/a.csv-3-x\rx\rx",
        # CR-only lines that are not redraws of each other.
        "id,amount\rE-1,-25.00\rE-3,-7.50\n",
        "Smith,John\rSmith,Jane\rDoe,Bob",
    ],
)
def test_collapse_progress_keeps_segments_that_are_not_redraws(text: str) -> None:
    assert collapse_progress(text) == text.replace("\r\n", "\n")
    assert compress_tool_text(text, OPTIONS) == text.rstrip("\n") + ("\n" * text.endswith("\n"))


@pytest.mark.parametrize(
    ("text", "final"),
    [
        ("  0%|     | 0/10\r 50%|██   | 5/10\r100%|█████| 10/10 [00:01<00:00]", "100%|█████|"),
        ("Reading package lists... 0%\rReading package lists... Done", "lists... Done"),
        ("   ━━━━╺━━━ 1.2/3.4 MB\r   ━━━━━━━━ 3.4/3.4 MB 5 MB/s", "3.4/3.4 MB 5"),
        ("Downloading...\r              \rDone.", "Done."),
        ("⠋ idealTree\r⠙ reify:lodash\rup to date", "up to date"),
    ],
)
def test_collapse_progress_collapses_redraws(text: str, final: str) -> None:
    result = collapse_progress(text)
    assert "\r" not in result and final in result


def test_collapse_progress_without_carriage_returns_is_the_same_object() -> None:
    text = "plain\ntext\n"
    assert collapse_progress(text) is text


# tidy_whitespace


def test_tidy_trims_line_ends_and_keeps_one_blank_line() -> None:
    assert tidy_whitespace("a  \nb\t\n\n\n\nc \n\n\n") == "a\nb\n\nc\n"


def test_tidy_drops_leading_blank_and_whitespace_only_lines() -> None:
    assert tidy_whitespace("\n  \n\t\nx\n  \n \n\ny") == "x\n\ny"


def test_tidy_long_mixed_trailing_whitespace() -> None:
    assert tidy_whitespace("a" + " \t" * 50 + "\nb" + " " * 100 + "\nc") == "a\nb\nc"


def test_tidy_stays_linear_on_long_inner_blank_runs() -> None:
    text = "a" + " " * 1_000_000 + "x\nb" + " \t" * 50 + "\n"
    result: list[str] = []
    # Absolute: backtracking over a million-space run (n^2 / 2 steps) takes hours; the linear
    # pass takes about 5 ms, 200x below the bound.
    assert cpu_seconds(lambda: result.append(tidy_whitespace(text))) < 1
    assert result == ["a" + " " * 1_000_000 + "x\nb\n"]


def test_tidy_trims_runs_mixing_spaces_and_tabs_whichever_comes_last() -> None:
    assert tidy_whitespace("a \t\nb\t \nc \n\t\n \nd\t") == "a\nb\nc\n\nd"


def test_tidy_keeps_text_without_final_newline_and_clean_text_as_is() -> None:
    assert tidy_whitespace("a\nb ") == "a\nb"
    text = "clean\ntext\n"
    assert tidy_whitespace(text) is text


def test_without_blank_line_tidying_only_line_ends_are_trimmed() -> None:
    options = dataclasses.replace(ALL_OFF, tidy_whitespace=True, tidy_blank_lines=False)
    assert compress_tool_text("\n\na  \nb\t\n\n\n\nc \n\n\n", options) == "\n\na\nb\n\n\n\nc\n\n\n"
    text = "clean\n\n\ntext\n"
    assert compress_tool_text(text, options) is text


# collapse_repeats


def test_identical_lines_collapse_to_one_and_a_count() -> None:
    text = "start\n" + "npm WARN deprecated inflight@1.0.6\n" * 10 + "end"
    assert collapse_repeats(text) == (
        "start\nnpm WARN deprecated inflight@1.0.6\n… line above repeated 9 more times\nend"
    )


def test_two_identical_lines_stay() -> None:
    text = "x\nx\ny\n"
    assert collapse_repeats(text) is text


def test_near_identical_lines_keep_first_and_last() -> None:
    lines = [f"Downloading model.bin {n}% ({n * 3} MB)" for n in range(0, 101)]
    result = collapse_repeats("\n".join(["start", *lines, "done"]))
    assert result.split("\n") == [
        "start",
        "Downloading model.bin 0% (0 MB)",
        "… 99 similar lines omitted",
        "Downloading model.bin 100% (300 MB)",
        "done",
    ]


def test_short_near_identical_runs_stay() -> None:
    text = "\n".join(f"epoch {n} loss 0.{n}" for n in range(4))
    assert collapse_repeats(text) is text


@pytest.mark.parametrize(
    "line",
    [
        "ERROR: request {n} failed",
        "src/app.py:{n}: unused import",
        "  File 'x.py', line {n}, in run",
        "src/app.ts({n},5): oops",
        "{n}:    total = compute()",
        "{n}-    total = compute()",
        "  Line {n}: total = compute()",
        "{n},{n}.5,{n}",
        "src/pkg/module{n}",
        "fixture{n}.json 4.0K",
    ],
)
def test_near_identical_errors_locations_and_numbers_are_never_merged(line: str) -> None:
    text = "\n".join(line.format(n=n) for n in range(1, 12))
    assert collapse_repeats(text) is text


@pytest.mark.parametrize(
    "line",
    [
        "v1.{n}.0",  # git tag
        "  release-{n}",  # git branch
        " [X] 00{n:02d}_auto",  # showmigrations
        "  - migration_00{n:02d}",  # a listing
        "svc_worker_{n}",  # docker ps --format {{.Names}}
        "LEVEL_{n} = {n}",  # an enum, read by a tool outside the bundle's lists
    ],
)
def test_a_list_of_names_alike_but_for_digits_is_never_merged(line: str) -> None:
    # Identifiers, not counters: a tag or branch left out of the list is one the agent
    # never learns of (release-5 missing from release-0..11 would not show).
    text = "\n".join(line.format(n=n) for n in range(12))
    assert collapse_repeats(text) is text


def test_a_date_opening_a_line_is_not_a_location() -> None:
    text = "\n".join(f"2024-05-{n:02d} nightly build ok" for n in range(1, 12))
    assert "… 9 similar lines omitted" in collapse_repeats(text)


def test_identical_lines_inside_a_protected_run_still_collapse() -> None:
    text = "\n".join(["ERROR 1 x"] * 3 + ["ERROR 2 x"] * 4)
    assert collapse_repeats(text).split("\n") == [
        "ERROR 1 x",
        "… line above repeated 2 more times",
        "ERROR 2 x",
        "… line above repeated 3 more times",
    ]


def test_blank_lines_are_not_counted_as_repeats() -> None:
    text = "a\n\n\n\n\nb"
    assert collapse_repeats(text) is text


def test_without_near_only_identical_runs_collapse() -> None:
    progress = "\n".join(f"Downloading {n}%" for n in range(10))
    assert collapse_repeats(progress, near=False) is progress
    assert collapse_repeats("k\nk\nk", near=False) == "k\n… line above repeated 2 more times"


def test_near_merging_sees_error_words_in_any_case_and_script() -> None:
    # Ignore-case matching pairs the long s (U+017F) with "s" and the dotted capital I (U+0130)
    # with "i", which str.lower() does not.
    for word in ("MISSING", "mi\u017f\u017fing", "\u0130nvalid", "Fail"):
        text = "\n".join(f"{word} chunk {n}" for n in range(10))
        assert collapse_repeats(text) is text


def test_near_merging_compares_each_lines_file_names() -> None:
    # Same files in total, not on each line: the first line names one, the others none or two.
    lines = ["get 1/b /b", "get /b /b", "get 1/b 1/b", "get 1/b /b", "get 1/b /b"]
    text = "\n".join(lines)
    assert collapse_repeats(text) is text


def _steps(count: int) -> str:
    return "".join(f"step {n} of 100000 ok\n" for n in range(count))


def test_a_long_near_identical_run_is_fast() -> None:
    result = collapse_repeats(_steps(100_000))
    assert result == "step 0 of 100000 ok\n… 99998 similar lines omitted\nstep 99999 of 100000 ok\n"
    # Growth, not an absolute bound: the linear pass over 100k lines already takes 50 ms.
    texts = {count: _steps(count) for count in (12_500, 100_000)}
    assert growth(lambda count: collapse_repeats(texts[count]), 12_500) < 20


def test_markers_keep_the_runs_indentation() -> None:
    text = "def f():\n" + "    pass\n" * 4
    assert collapse_repeats(text) == "def f():\n    pass\n    … line above repeated 3 more times\n"


def test_repeats_are_idempotent_on_a_progress_log() -> None:
    text = "\n".join([f"step {n}/500 ok" for n in range(500)] + ["x"] * 5 + ["done"])
    once = collapse_repeats(text)
    assert collapse_repeats(once) == once


# minify_json


def test_minify_keeps_key_order_non_ascii_big_ints_and_exact_numbers() -> None:
    assert minify_json(samples.JSON_PRETTY) == (
        '{"id":1234567890123456789012,"name":"Zoë é 中","price":12.50,'
        '"tags":["a","a","a"],"nested":{"z":1,"a":2}}'
    )


def test_minify_keeps_the_text_of_every_number() -> None:
    assert minify_json("[\n  1e400,\n  -0.0,\n  1.0e-5\n]") == "[1e400,-0.0,1.0e-5]"
    assert minify_json('{"a": 1E5, "b": 1.0, "c": 1.50, "d": -1}') == (
        '{"a":1E5,"b":1.0,"c":1.50,"d":-1}'
    )
    big = "[18446744073709551616, -9223372036854775809, 12345678901234567890123]"
    assert minify_json(big) == big.replace(" ", "")


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',  # decoding keeps one of a repeated key
        '[{"x": {"k": "v", "k": "w"}}, 1]',
        '{"a": -0, "b": 1}',  # the integer -0 would become 0
        "[ -0 ]",
        '{"a": "\\u003a", "a": 1, "b": 2}',  # an escape could hide a lost ":"
    ],
)
def test_minify_leaves_json_whose_round_trip_changes_content(text: str) -> None:
    assert minify_json(text) is text


@pytest.mark.parametrize(
    "text",
    [
        '{\n  "a": 1,\n  "b": [1, 2',  # cut off
        '{\n  "a": 1\n}\ntrailing words',
        "\ufeff[\n  1\n]",
        "[\n  NaN\n]",
        '[\n  "\\ud800"\n]',  # an escaped lone surrogate
        '[\n  "\ud800"\n]',  # a lone surrogate in the text itself
        '{"a":1,"b":[2,3]}',  # already compact: not smaller
        "  123  ",
        '"just a string"',
        "{not json at all}",
        "[" * 10_000 + "]" * 10_000,
        "[" * 200_000,
    ],
)
def test_minify_leaves_non_json_and_undecodable_text_unchanged(text: str) -> None:
    assert minify_json(text) is text


def test_minify_moderately_deep_json() -> None:
    deep = "[\n" * 100 + "1" + "\n]" * 100
    assert minify_json(deep) == "[" * 100 + "1" + "]" * 100


# cap_text


def test_cap_leaves_short_text_alone() -> None:
    text = "line\n" * 100
    assert cap_text(text, 24_000, 60, 60) is text


def test_cap_keeps_head_and_tail_lines_with_counts() -> None:
    text = "".join(f"line {n}\n" for n in range(1000))
    capped = cap_text(text, 2_000, 2, 3)
    lines = capped.split("\n")
    assert lines[:2] == ["line 0", "line 1"]
    omitted = "\n".join(f"line {n}" for n in range(2, 997))
    assert lines[2] == f"[… 995 lines ({len(omitted)} chars) omitted by messages_mw …]"
    assert lines[3:] == ["line 997", "line 998", "line 999", ""]
    assert cap_text(capped, 2_000, 2, 3) == capped


def test_cap_cuts_an_enormous_single_line_by_characters() -> None:
    text = "a" * 3_000_000 + "b" * 2_000_000
    capped = cap_text(text, 24_000, 60, 60)
    assert len(capped) <= 24_000
    head, marker, tail = capped.split("\n")
    assert text.startswith(head) and text.endswith(tail)
    omitted = len(text) - len(head) - len(tail)
    assert marker == f"[… {omitted} chars (0 line breaks) omitted by messages_mw …]"
    assert cap_text(capped, 24_000, 60, 60) == capped


def test_cap_cuts_long_lines_by_characters_at_line_boundaries() -> None:
    text = "".join(f"{n:04d}" + "x" * 996 + "\n" for n in range(300))
    capped = cap_text(text, 24_000, 60, 60)
    assert len(capped) <= 24_000
    head = capped.partition("\n[… ")[0]
    assert head.split("\n")[0].startswith("0000") and len(head.split("\n")[-1]) == 1000
    assert "line breaks) omitted by messages_mw …]\n0" in capped
    assert capped.endswith("0299" + "x" * 996 + "\n")


def test_cap_with_no_head_or_tail_is_just_the_marker() -> None:
    text = "row\n" * 10_000
    assert cap_text(text, 1_000, 0, 0) == "[… 10000 lines (40000 chars) omitted by messages_mw …]"


# compress_tool_text


def test_tool_use_error_text_is_verbatim() -> None:
    text = "<tool_use_error>File has not been read yet.\x1b[31m  \n\n\n</tool_use_error>"
    assert compress_tool_text(text, OPTIONS, "pytest") is text


def test_system_reminders_are_verbatim_and_the_text_around_them_compressed() -> None:
    reminder = "<system-reminder>\n  keep   \n\n\n\nthis exactly \x1b[1m\n</system-reminder>"
    text = f"\x1b[32mok\x1b[0m   \n\n\n\n{reminder}\nafter  \n\n\n\nend"
    assert compress_tool_text(text, OPTIONS) == f"ok\n{reminder}\nafter\n\nend"


def test_an_unclosed_reminder_keeps_the_rest_verbatim() -> None:
    text = "a   \n<system-reminder>\n\n\n  x  \n\n\n"
    assert compress_tool_text(text, OPTIONS) == "a\n<system-reminder>\n\n\n  x  \n\n\n"


@pytest.mark.parametrize(
    ("switch", "text", "kept"),
    [
        ("strip_ansi", "\x1b[31mred\x1b[0m", "\x1b[31m"),
        ("collapse_progress", "10%\r100%\n", "10%\r"),
        ("tidy_whitespace", "a   \nb", "a   "),
        ("collapse_repeats", "x y\n" * 5, "x y\n" * 5),
        ("minify_json", '{\n  "a": 1\n}', '{\n  "a": 1\n}'),
        ("command_filters", samples.GIT_STATUS, '(use "git add'),
    ],
)
def test_each_transform_can_be_switched_off(switch: str, text: str, kept: str) -> None:
    on = compress_tool_text(text, OPTIONS, "git status")
    off = compress_tool_text(text, dataclasses.replace(OPTIONS, **{switch: False}), "git status")
    assert kept not in on
    assert kept in off


def test_near_repeats_can_be_switched_off_alone() -> None:
    options = dataclasses.replace(OPTIONS, collapse_near_repeats=False)
    progress = "\n".join(f"processed batch {n} of 80" for n in range(80))
    assert compress_tool_text(progress, options) == progress
    assert compress_tool_text("k\nk\nk", options) == "k\n… line above repeated 2 more times"


# Its blank context lines and its near-identical added lines are all counted by the header.
UNIFIED_DIFF = (
    "--- a/config.py\n+++ b/config.py\n@@ -1,5 +1,11 @@\n DEFAULTS = {\n"
    + "".join(f'+    "retry_{n}": {n}0,\n' for n in range(1, 7))
    + " }\n"
    + " \n" * 3
)


@pytest.mark.parametrize(
    "command",
    [
        "diff -u config.py.orig config.py",
        "gh pr diff 12",
        "git stash show -p",
        "hg diff",
        "svn diff",
        "make patch",
        "pip download x; diff -u a b",
        None,
    ],
)
def test_a_unified_diff_keeps_its_lines_exact_whatever_the_command(command: str | None) -> None:
    assert compress_tool_text(UNIFIED_DIFF, OPTIONS, command) == UNIFIED_DIFF
    coloured = UNIFIED_DIFF.replace("@@ -1,5 +1,11 @@", "\x1b[36m@@ -1,5 +1,11 @@\x1b[m")
    assert compress_tool_text(coloured, OPTIONS, command) == UNIFIED_DIFF
    if command is not None and "pip" in command:
        return  # pip's filter applies, not git diff's
    # Git's blob ids go, as they do for git diff.
    indexed = "diff --git a/config.py b/config.py\nindex 3b18e51..a9c2f4d 100644\n" + UNIFIED_DIFF
    expected = "diff --git a/config.py b/config.py\n" + UNIFIED_DIFF
    assert compress_tool_text(indexed, OPTIONS, command) == expected


# Controls a terminal would act on, but a source file may hold: ^L page breaks, a NUL, a bell.
FILE_CONTROLS = "\x00\x07\x0b\x0c\x7f"


@pytest.mark.parametrize("command", ["git diff", "rg -n x", "cat a.py", None])
def test_exact_lines_keep_their_control_characters_and_lose_only_escapes(
    command: str | None,
) -> None:
    # A patch quoting a line with a form feed must still apply.
    diff = UNIFIED_DIFF.replace(" }\n", f" }}\n \x0c\n x = '{FILE_CONTROLS}\x08'\n")
    assert compress_tool_text(diff, OPTIONS, command) == diff
    coloured = diff.replace("@@ -1,5 +1,11 @@", "\x1b[36m@@ -1,5 +1,11 @@\x1b[m")
    assert compress_tool_text(coloured, OPTIONS, command) == diff
    # Other output still loses them.
    assert compress_tool_text(f"ok\nx = '{FILE_CONTROLS}'\n", OPTIONS, "make") == "ok\nx = ''\n"


def test_a_hunk_header_inside_a_line_is_not_a_diff() -> None:
    text = "note: @@ -1,3 +1,9 @@\n" + "".join(f"    retry {n} ok\n" for n in range(8))
    assert "similar lines omitted" in compress_tool_text(text, OPTIONS)


def test_no_cap_and_all_transforms_off_is_the_identity() -> None:
    for command, output in SAMPLE_RUNS:
        assert compress_tool_text(output, ALL_OFF, command) == output


def test_the_cap_applies_last() -> None:
    text = "".join(f"row {n} of the report\n" for n in range(5000))
    result = compress_tool_text(text, OPTIONS)
    assert len(result) <= OPTIONS.cap_chars if OPTIONS.cap_chars else False
    assert result.startswith("row 0 of the report\n") and result.endswith(
        "row 4999 of the report\n"
    )


def test_command_output_is_filtered_before_the_generic_transforms() -> None:
    result = compress_tool_text(samples.PYTEST_VERBOSE, OPTIONS, "uv run pytest -v")
    assert "PASSED" not in result
    assert "tests/test_api.py:27: AssertionError" in result
    assert "1 failed, 6 passed, 1 skipped, 7 warnings, 1 error in 0.87s" in result


def test_exact_lines_of_a_diff_keep_trailing_spaces_and_repeats() -> None:
    diff = samples.GIT_DIFF + "+x\n+x\n+x\n+x\n"
    result = compress_tool_text(diff, OPTIONS, "git diff")
    assert "item.quantity;  \n" in result
    assert result.endswith("+x\n+x\n+x\n+x\n")
    assert "index 3b18e51..a9c4f2d" not in result


def test_without_a_command_filter_near_duplicates_merge() -> None:
    text = "\n".join(f"processed batch {n} of 80" for n in range(80))
    assert "similar lines omitted" in compress_tool_text(text, OPTIONS)
    assert "similar lines omitted" not in compress_tool_text(text, OPTIONS, "pytest")


@pytest.mark.parametrize(("command", "output"), SAMPLE_RUNS)
def test_realistic_outputs_shrink_deterministically_and_idempotently(
    command: str, output: str
) -> None:
    once = compress_tool_text(output, OPTIONS, command)
    assert compress_tool_text(output, OPTIONS, command) == once
    assert compress_tool_text(once, OPTIONS, command) == once
    assert len(once) < len(output)


@pytest.mark.parametrize(
    "text",
    [
        "\x00" * 1000 + "a\x00b",
        "x" * 5_000_000,
        "[" * 10_000 + "]" * 10_000,
        '{"a": "\\ud800\\udfff\\ud800"}',
        "\ud800\udc00\udfff lone surrogates \ud800\n" * 3,
        "\r" * 10_000 + "\n" * 10_000 + " " * 10_000,
        "\x1b[" * 10_000,
        "<system-reminder>" * 1000 + "</system-reminder>",
    ],
)
def test_adversarial_inputs_do_not_raise(text: str) -> None:
    result = compress_tool_text(text, OPTIONS, "pytest -q")
    assert isinstance(result, str)
    assert compress_tool_text(text, OPTIONS) == compress_tool_text(text, OPTIONS)


def test_a_five_megabyte_line_is_fast() -> None:
    text = "word " * 1_000_000
    results: list[str] = []
    # Absolute: a quadratic pass over a 5 MB line (10^13 steps) would never end; the linear
    # one takes 5-10 ms, 100x below the bound.
    assert cpu_seconds(lambda: results.append(compress_tool_text(text, OPTIONS, "cat big.log"))) < 1
    [result] = results
    assert len(result) <= 24_000


FRAGMENTS = [
    "\n", "\r", "\r\n", " ", "  ", "\t", "\x1b[31m", "\x1b[0m", "\x1b", "\x1b]8;;u\x1b\\", "\x08",
    "\x07", "\x00", "a", "Downloading 1%", "12", "error", "src/a.py:3:", "{", "}", "[", "]", '"k":',
    "1,", "PASSED", "<system-reminder>", "</system-reminder>", "<tool_use_error>", "é", "\ud800",
]  # fmt: skip
tool_texts = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join)
any_texts = st.text(alphabet=st.characters(exclude_categories=()), max_size=200)
commands = st.sampled_from([None, "pytest -v", "git diff", "npm install", "ls -l", "grep -rn x ."])


@settings(max_examples=300, deadline=None)
@given(st.one_of(tool_texts, any_texts), commands)
def test_compress_never_raises_and_is_deterministic(text: str, command: str | None) -> None:
    small_cap = dataclasses.replace(OPTIONS, cap_chars=200, head_lines=3, tail_lines=3)
    for options in (OPTIONS, small_cap):
        assert compress_tool_text(text, options, command) == compress_tool_text(
            text, options, command
        )


lines = st.sampled_from(
    ["", "  ", "same", "same", "item 1 done", "item 22 done", "x\t", "{", '  "k": 1', "}", "ok"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(lines, max_size=40).map("\n".join))
def test_generic_transforms_are_idempotent(text: str) -> None:
    once = compress_tool_text(text, OPTIONS)
    assert compress_tool_text(once, OPTIONS) == once
