"""Process settings for serving: glibc's malloc keeps request-sized buffers between requests."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from messages_mw import tuning

_ON_GLIBC = platform.libc_ver()[0] == "glibc"

# Bodies in flight together (eight of 495 KB's size, then four of 5 MB), freed and allocated
# again twenty times as requests come and go; prints, for each size, whether the settings
# took and how many page faults the twenty rounds cost.
_CHURN = """
import resource, sys
from messages_mw.tuning import tune_malloc_for_serving
took = tune_malloc_for_serving() if sys.argv[1] == "tuned" else None

def churn(size, count):
    bodies = [b"x" * size for _ in range(count)]
    del bodies

for size, count in [(500_000, 8), (5_000_000, 4)]:
    churn(size, count)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        churn(size, count)
    print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _child_environment(**extra: str) -> dict[str, str]:
    """This environment without anything that changes the allocator, plus ``extra``."""
    changes_malloc = ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_")
    kept = {k: v for k, v in os.environ.items() if not k.startswith(changes_malloc)}
    return {**kept, **extra}


def _churn(mode: str, **environment: str) -> list[tuple[str, int]]:
    result = subprocess.run(
        [sys.executable, "-c", _CHURN, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=_child_environment(**environment),
    )
    return [(took, int(faults)) for took, faults in map(str.split, result.stdout.splitlines())]


@pytest.mark.skipif(not _ON_GLIBC, reason="mallopt is glibc's")
def test_freed_request_bodies_are_reused_without_page_faults() -> None:
    # The long-context sample's size, and a body with images in it: by default glibc maps
    # such buffers afresh or hands the heap's top back, so every request faults its pages in.
    default = _churn("default")
    if min(faults for _, faults in default) < 1_000:
        pytest.skip(f"glibc's defaults did not fault here ({default}): nothing to compare")
    tuned = _churn("tuned")
    assert [took for took, _ in tuned] == ["True", "True"]
    assert all(faults < 50 for _, faults in tuned), tuned


@pytest.mark.skipif(not _ON_GLIBC, reason="mallopt is glibc's")
def test_an_operators_own_malloc_settings_are_left_in_place() -> None:
    # MALLOC_TRIM_THRESHOLD_ at glibc's 128 KB default: the operator's choice, faults and all.
    chosen = _churn("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert [took for took, _ in chosen] == ["False", "False"]
    tunables = _churn("tuned", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert [took for took, _ in tunables] == ["False", "False"]


def test_the_settings_apply_only_where_the_c_library_is_glibc() -> None:
    # In a child: the settings are the whole process's.
    assert [took for took, _ in _churn("tuned")] == [str(_ON_GLIBC)] * 2


def test_both_thresholds_are_set_and_a_refusal_is_reported() -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(parameter: int, value: int) -> int:
        calls.append((parameter, value))
        return 0 if parameter == -1 and refuse_trim else 1

    refuse_trim = False
    assert tuning.tune_malloc_for_serving(mallopt, environ={}) is True
    # M_MMAP_THRESHOLD (-3) and M_TRIM_THRESHOLD (-1), from glibc's malloc.h.
    assert calls == [
        (-3, tuning.SERVING_MMAP_THRESHOLD),
        (-1, tuning.SERVING_TRIM_THRESHOLD),
    ]
    refuse_trim = True
    assert tuning.tune_malloc_for_serving(mallopt, environ={}) is False


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_MMAP_THRESHOLD_": "1048576"},
        {"MALLOC_TOP_PAD_": "0"},
        {"GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.mmap_threshold=1048576"},
    ],
)
def test_any_operator_malloc_setting_means_no_call(environ: dict[str, str]) -> None:
    calls: list[tuple[int, int]] = []
    assert tuning.tune_malloc_for_serving(lambda *a: calls.append(a) or 1, environ) is False
    assert calls == []
    # Tunables of other parts of glibc are no such choice.
    other = {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
    assert tuning.tune_malloc_for_serving(lambda *a: calls.append(a) or 1, other) is True


def test_without_confstr_as_on_windows_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "confstr", raising=False)
    assert tuning._glibc_mallopt() is None
    assert tuning.tune_malloc_for_serving(environ={}) is False
