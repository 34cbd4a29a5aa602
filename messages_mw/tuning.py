"""Process settings for a server's entry point: the garbage collector and glibc's malloc.

``messages-mw serve`` applies them once the gateway is built, in each worker. A host that runs
uvicorn itself calls :func:`tune_for_serving` just before ``uvicorn.run``, or, with several
workers (uvicorn spawns them, so they inherit nothing), in its app factory. Only a server's
entry point should: both settings are the whole process's, not the gateway's.
"""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Callable, Mapping

__all__ = [
    "SERVING_GC_THRESHOLD",
    "SERVING_MMAP_THRESHOLD",
    "SERVING_TRIM_THRESHOLD",
    "tune_for_serving",
    "tune_gc_for_serving",
    "tune_malloc_for_serving",
]

# Young-generation threshold while serving: ten times the default (see tune_gc_for_serving).
SERVING_GC_THRESHOLD = 7_000

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The most glibc's own adaptive rule would reach (its mmap ceiling on 64-bit, and twice that):
# buffers up to 32 MB, the default body limit, come from the heap and are reused, and up to
# 64 MB of free heap is kept for the next requests rather than handed back.
SERVING_MMAP_THRESHOLD = 32 * 1024 * 1024
SERVING_TRIM_THRESHOLD = 64 * 1024 * 1024
# An operator's own malloc settings, which tune_malloc_for_serving leaves in place.
_OPERATOR_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

Mallopt = Callable[[int, int], int]


def tune_for_serving() -> None:
    """Both settings below: what ``messages-mw serve`` does once its gateway is built."""
    tune_gc_for_serving()
    tune_malloc_for_serving()


def tune_gc_for_serving() -> None:
    """Set the garbage collector up for a server process, once start-up is over.

    Two costs show under concurrency, measured at 32 connections with the 57 KB agent turn:

    - Full collections walked the whole start-up heap (modules, configuration, the app): 4
      per 3,000 requests took 93 ms, 31 µs per request. Every object alive now is frozen, so
      they are never walked again; that took them to 3 ms.
    - Young collections ran every few requests, because 32 requests in flight keep a few
      thousand tracked objects alive and the default threshold is 700 allocations: 179 per
      3,000 requests, 19 µs per request with what survived into the older generations. A
      request here creates no reference cycles, so those collections found nothing. At ten
      times the threshold none ran in 3,000 requests; cycles that do form, on error paths,
      are still found after at most 7,000 more allocations, a few hundred KB.

    A frozen object is never collected, so only a server's entry point should call this.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(SERVING_GC_THRESHOLD, older, oldest)


def tune_malloc_for_serving(
    mallopt: Mallopt | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Stop glibc handing request-sized buffers back to the system after every request.

    glibc returns free memory at the top of its heap once more than 128 KB of it is free, and
    maps buffers over 128 KB afresh; it raises both thresholds only after a large mapped
    buffer is freed, and in patterns like a server's it keeps faulting. A server whose
    requests carry bodies of tens or hundreds of KB then gives each body's pages back when
    the request ends and faults them in again for the next one. Measured with a bare app
    under the served uvicorn protocol at 32 connections: 12 page faults per 57 KB request and
    43.3 µs of CPU, against none and 21.9 µs with these settings; 55 faults and 163.7 µs per
    495 KB request, against none and 87.9 µs. The gateway itself took 21-26 faults per 495 KB
    request, none with these settings. Buffers up to ``SERVING_MMAP_THRESHOLD`` then come from
    the heap and up to ``SERVING_TRIM_THRESHOLD`` of free heap is kept: the values glibc's
    own rule adapts to at most, fixed from the start. The cost is memory a process keeps
    after a burst of large requests, up to 64 MB per worker.

    Nothing is changed where the operator has chosen already (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or a ``glibc.malloc`` tunable in
    ``GLIBC_TUNABLES``; setting one is also how to opt out), or where the C library is not
    glibc (musl, macOS, Windows), which has no such knobs. An allocator put in with
    ``LD_PRELOAD`` (jemalloc, tcmalloc) ignores glibc's settings, though the call succeeds.

    Returns whether both settings took. ``mallopt`` and ``environ`` are for tests.
    """
    environ = os.environ if environ is None else environ
    if _operator_chose_malloc_settings(environ):
        return False
    if mallopt is None:
        mallopt = _glibc_mallopt()
        if mallopt is None:
            return False
    mmap_set = mallopt(_M_MMAP_THRESHOLD, SERVING_MMAP_THRESHOLD)
    trim_set = mallopt(_M_TRIM_THRESHOLD, SERVING_TRIM_THRESHOLD)
    return bool(mmap_set and trim_set)


def _operator_chose_malloc_settings(environ: Mapping[str, str]) -> bool:
    if any(name in environ for name in _OPERATOR_MALLOC_SETTINGS):
        return True
    return "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def _glibc_mallopt() -> Mallopt | None:
    confstr = getattr(os, "confstr", None)  # not on Windows
    if confstr is None:
        return None
    try:
        version = confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # not a glibc system: no such name
        return None
    if not version or not version.startswith("glibc"):
        return None
    try:
        # The symbols the interpreter itself is linked with: its C library's mallopt.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
