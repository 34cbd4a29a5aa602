"""Process settings for serving: glibc's malloc keeps request-sized buffers between requests."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from messages_mw import tuning

_ON_GLIBC = platform.libc_ver()[0] == "glibc"

# Eight bodies in flight at a time, freed and allocated again twenty times, as requests come
# and go; prints the page faults that took.
_CHURN = """
import resource, sys
from messages_mw.tuning import tune_malloc_for_serving
if sys.argv[1] == "tuned":
    assert tune_malloc_for_serving()

def churn(size):
    bodies = [b"x" * size for _ in range(8)]
    del bodies

churn({size})
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn({size})
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, size: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _CHURN.format(size=size), mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(result.stdout)


@pytest.mark.skipif(not _ON_GLIBC, reason="mallopt is glibc's")
def test_freed_request_bodies_are_reused_without_page_faults() -> None:
    # The long-context sample's size: by default glibc maps each such buffer afresh or hands
    # the heap's top back, so every request faults its pages in again.
    size = 500_000
    assert _faults("default", size) > 1_000, "the default no longer faults: the check is moot"
    assert _faults("tuned", size) < 50


def test_the_settings_are_applied_where_the_c_library_is_glibc() -> None:
    assert tuning.tune_malloc_for_serving() is _ON_GLIBC


def test_both_thresholds_are_set_and_a_refusal_is_reported() -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(parameter: int, value: int) -> int:
        calls.append((parameter, value))
        return 0 if parameter == -1 and refuse_trim else 1

    refuse_trim = False
    assert tuning.tune_malloc_for_serving(mallopt) is True
    # M_MMAP_THRESHOLD (-3) and M_TRIM_THRESHOLD (-1), from glibc's malloc.h.
    assert calls == [
        (-3, tuning.SERVING_MMAP_THRESHOLD),
        (-1, tuning.SERVING_TRIM_THRESHOLD),
    ]
    refuse_trim = True
    assert tuning.tune_malloc_for_serving(mallopt) is False
