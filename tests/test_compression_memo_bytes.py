"""The compression memo's bound is the memory it really keeps, not only the bytes of its texts.

Users set ``memo_bytes`` to bound a worker's memory, so what the memo keeps (its texts, the
sessions' histories and frames, and every object that holds them) is measured here with
tracemalloc while distinct sessions fill a small memo several times over.
"""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import Iterator

from benchmarks.agent_corpus import PROFILES, build_session
from messages_mw.compression import BUNDLE_NAMES, CompressionMemo, bundle_named, compress_request
from messages_mw.compression.bundles import Bundle

BUDGET = 2 * 1024 * 1024
# Enough distinct sessions to fill the budget several times, a few of them at a time, as a
# gateway sees them: each keeps a history while the others' texts come and go.
SESSIONS = 16
AT_ONCE = 4
TURNS = 12
# What the memo may really keep beyond its bound: Python objects it estimates rather than
# measures, and the tracer's own rounding.
SLACK = 1.3


def _sessions(count: int) -> Iterator[tuple[Bundle, tuple[bytes, ...]]]:
    kinds = itertools.cycle([(name, profile) for name in BUNDLE_NAMES for profile in PROFILES])
    for seed, (name, profile) in zip(range(count), kinds, strict=False):
        bundle = bundle_named(name)
        assert bundle is not None
        yield bundle, build_session(name, profile, seed=100 + seed, turns=TURNS).requests


def _warm_up() -> None:
    """Fill the caches that outlive a memo (compiled patterns, decoders' key caches), so that
    only what the memo keeps is measured."""
    for bundle, requests in _sessions(len(BUNDLE_NAMES) * len(PROFILES)):
        memo = CompressionMemo(BUDGET)
        for body in requests[:3]:
            compress_request(body, bundle, memo=memo)


def _feed(memo: CompressionMemo, group: list[tuple[Bundle, tuple[bytes, ...]]]) -> None:
    """The sessions of ``group`` through ``memo``, a request of each in turn."""
    for turn in range(TURNS + 1):
        for bundle, requests in group:
            compress_request(requests[turn], bundle, memo=memo)
            assert memo.bytes_held <= memo.max_bytes


def _kept(baseline: int) -> int:
    """The memory allocated since ``baseline`` and still reachable."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - baseline


def test_a_small_memo_really_keeps_about_its_bound() -> None:
    _warm_up()
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        memo = CompressionMemo(BUDGET)
        kept, sessions = [], _sessions(SESSIONS)
        while group := list(itertools.islice(sessions, AT_ONCE)):
            _feed(memo, group)
            # No request is held here, so what is still allocated is what the memo keeps,
            # the histories of the sessions just fed included.
            del group
            kept.append(_kept(baseline))
        assert memo.misses > 0 and len(memo) > 0
        held_at_end = memo.bytes_held
        del memo
        assert _kept(baseline) < BUDGET // 20  # all of it was the memo's
    finally:
        tracemalloc.stop()
    assert max(kept) < SLACK * BUDGET, [round(size / BUDGET, 2) for size in kept]
    assert held_at_end > BUDGET // 2
