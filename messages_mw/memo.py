"""A pure function's results, looked up as a dict: for the few values the hot path computes
from a handful of recurring arguments (response header names, model prices, tag headers).
Bounded in entries, not bytes: keep arguments short (a caller bounds their length)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["Memo"]

_K = TypeVar("_K")
_V = TypeVar("_V")


class Memo(dict[_K, _V]):
    """``memo[argument]`` is ``function(argument)``, computed once per argument and kept
    for the next time; what ``function`` raises propagates and nothing is kept. Once
    ``maxsize`` arguments are kept, the memo starts afresh, so arguments that never repeat
    (names an upstream invents) cost memory only up to that bound.

    Faster than :func:`functools.lru_cache` where it matters, on every response header: a
    hit is one dict lookup, where an lru_cache call builds an argument tuple, and for an
    argument that is not a str or an int a key tuple too, several times the cost.
    """

    __slots__ = ("_function", "_maxsize")

    def __init__(self, function: Callable[[_K], _V], maxsize: int) -> None:
        super().__init__()
        self._function = function
        self._maxsize = maxsize

    def __missing__(self, argument: _K) -> _V:
        value = self._function(argument)
        if len(self) >= self._maxsize:
            self.clear()
        self[argument] = value
        return value
