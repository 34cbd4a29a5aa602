"""The memo behind the response path's header-name checks."""

from __future__ import annotations

import pytest

from messages_mw.memo import Memo


def test_each_argument_is_computed_once_and_then_looked_up() -> None:
    calls: list[str] = []

    def shout(word: str) -> str:
        calls.append(word)
        return word.upper()

    memo = Memo(shout, 8)
    assert [memo["a"], memo["b"], memo["a"], memo["a"]] == ["A", "B", "A", "A"]
    assert calls == ["a", "b"]


def test_a_full_memo_starts_afresh_so_it_stays_bounded() -> None:
    memo = Memo(lambda n: n * 2, 3)
    for n in range(10):
        assert memo[n] == n * 2
        assert len(memo) <= 3
    assert memo == {9: 18}  # cleared at the 4th, 7th and 10th new argument


def test_what_the_function_raises_propagates_and_nothing_is_kept() -> None:
    def refuse(name: bytes) -> bytes:
        raise RuntimeError(f"bad {name!r}")

    memo = Memo(refuse, 8)
    for _ in range(2):  # refused again, not remembered as anything
        with pytest.raises(RuntimeError, match="bad b'x y'"):
            memo[b"x y"]
    assert memo == {}
