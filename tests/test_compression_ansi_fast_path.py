"""strip_ansi's CSI-only fast path removes exactly what the full escape pattern removes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from messages_mw.compression.text import _ESCAPE_RE, strip_ansi

# Pieces that make complete, cut-short and joinable escape sequences when concatenated.
_PIECES = st.sampled_from(
    ["\x1b", "\x1b[", "[", "0", "31", ";", "?", "25", " ", "m", "K", "h", "l", "A", "]", "P",
     "\x1b\\", "\x07", "\\", "x", "PASSED", "\n", "\x1b[0m", "\x1b[32m", "\x1b[2K", "\x1b[?25l",
     "\x1b]0;t\x07", "é"]
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_fast_path_removes_what_the_full_pattern_removes(text: str) -> None:
    assert strip_ansi(text) == strip_ansi_reference(text)


def strip_ansi_reference(text: str) -> str:
    """strip_ansi with the full escape pattern alone, as before the fast path."""
    return strip_ansi(_ESCAPE_RE.sub("", text)) if "\x1b" in text else strip_ansi(text)


def test_a_cut_short_sequence_before_a_colour_does_not_join_what_follows() -> None:
    # Removing ``\x1b[0m`` first would make ``\x1b[31m`` out of what is left.
    assert strip_ansi("\x1b[\x1b[0m31m ok") == "31m ok"
    assert strip_ansi("\x1b\x1b[0m[31m ok") == "[31m ok"


def test_colour_only_output_loses_only_its_escapes() -> None:
    line = "tests/a.py::test_x \x1b[32mPASSED\x1b[0m [ 50%]\n"
    assert strip_ansi(line * 3) == "tests/a.py::test_x PASSED [ 50%]\n" * 3
