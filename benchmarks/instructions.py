"""Instructions per request under callgrind: the policy layer's added cost without the noise.

CPU time on these machines moves by up to 30% between runs of the same code, and e/d (every
policy built-in on, against the bare core) by up to 0.07 between two runs an hour apart. A
change worth a few microseconds cannot be seen that way. valgrind's callgrind counts the
instructions the gateway's process executes, in user space, the same count for the same
code and inputs whatever else the machine does (the same total twice here, once with the
other core loaded), so it can.

For each workload and gateway (d, e, as in :mod:`benchmarks.policy_cost`), a child process
builds the gateway, warms it up and sends ``n`` requests, through the served HTTP protocol
in process, to the mock upstream running natively in another process; it runs once with
``n`` requests and once with ``2n``, and the difference over ``n`` is the count per request
(start-up and warm-up cancel out). Every child hashes strings with the same seed
(``--hash-seed``, 0): with Python's random one, dict lookups probe more or less often from
one process to the next, and the count per request moved by up to 3.5 K with no change to
the code. Instructions are not time: Python's interpreter loop has
a lower instruction rate than, say, a 256-entry table fill, and the kernel's share of a
request is not counted. It is the measure to see whether a change made the path shorter.

    python -m benchmarks.instructions [--only PATTERN] [--requests N] [--hash-seed S]

Needs valgrind; each child runs some 40 times slower under it (about two minutes for the
default workloads).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import uvloop

from .decode import DEFAULT_SAMPLES
from .e2e import WORKLOADS, Workload, matches
from .loadgen import with_stream
from .processes import running_server

# 32 connections, as the rows the policy target is judged on; c=1 runs the same code.
CONNECTIONS = 32
WARMUP_REQUESTS = 128
DEFAULT_REQUESTS = 640
_COLLECTED = re.compile(rb"Collected : (\d+)")


@dataclass(frozen=True)
class InstructionCount:
    """Instructions per request of d and e for one workload."""

    name: str
    core: float
    policy: float

    @property
    def ratio(self) -> float:
        return self.policy / self.core


def _count(
    variant: str, workload: Workload, requests: int, upstream_url: str, hash_seed: int
) -> int:
    """The instructions callgrind counts in a child sending ``requests`` requests."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        variant,
        workload.sample,
        "1" if workload.stream else "0",
        str(requests),
        upstream_url,
    ]
    completed = subprocess.run(
        command,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
        capture_output=True,
        timeout=900,
    )
    found = _COLLECTED.search(completed.stderr)
    if completed.returncode != 0 or found is None:
        tail = completed.stderr.decode(errors="replace")[-2000:]
        raise SystemExit(f"the {variant} child failed under callgrind: {tail}")
    return int(found.group(1))


def per_request(
    variant: str, workload: Workload, requests: int, upstream_url: str, hash_seed: int = 0
) -> float:
    once = _count(variant, workload, requests, upstream_url, hash_seed)
    twice = _count(variant, workload, 2 * requests, upstream_url, hash_seed)
    return (twice - once) / requests


def _child(variant: str, sample: str, stream: bool, requests: int, upstream_url: str) -> None:
    from messages_mw.tuning import tune_for_serving

    from .policy_cost import VARIANTS, _batch

    body = with_stream((DEFAULT_SAMPLES / sample).read_bytes(), stream)

    async def run() -> None:
        gateway = VARIANTS[variant](upstream_url)
        try:
            await _batch(gateway, body, CONNECTIONS, WARMUP_REQUESTS)
            await _batch(gateway, body, CONNECTIONS, requests)
        finally:
            await gateway.aclose()

    tune_for_serving()
    uvloop.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN")
    parser.add_argument(
        "--requests", type=int, default=DEFAULT_REQUESTS, help="n (640): runs of n and 2n"
    )
    parser.add_argument(
        "--hash-seed", type=int, default=0, help="PYTHONHASHSEED of every child (0)"
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, sample, stream, requests, url = args.child
        _child(variant, sample, stream == "1", int(requests), url)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with running_server("upstream", cpu=0) as upstream:
        for workload in WORKLOADS:
            name = f"instructions {workload.label} c={CONNECTIONS}"
            if not matches(name, args.only):
                continue
            core = per_request("d", workload, args.requests, upstream.url, args.hash_seed)
            policy = per_request("e", workload, args.requests, upstream.url, args.hash_seed)
            result = InstructionCount(name, core, policy)
            print(
                f"{result.name:32s} d {result.core / 1000:7.1f} K  e {result.policy / 1000:7.1f} K"
                f"  e/d {result.ratio:.3f}  (+{(result.policy - result.core) / 1000:.1f} K)",
                flush=True,
            )


if __name__ == "__main__":
    main()
