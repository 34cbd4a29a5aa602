"""``python -m benchmarks``: run every scenario once and print one table.

Decode + validate (messages_mw vs json.loads + pydantic), the cost of translating to and from
OpenAI Chat Completions (messages_mw.translate, per request and per streamed chunk), end to end
through six targets (the mock upstream itself, a Starlette + httpx pass-through baseline, an
aiohttp pass-through, messages_mw, messages_mw with every policy built-in on, messages_mw
serving from the mock's OpenAI-compatible route) at 1 and 32 connections, the policy layer's
added cost with d and e taking turns in one process (``policy_cost.py``: where the ≤ 1.10x
target is judged), messages_mw's RSS after 1,000 and 10,000 requests, and the compression
bundles on generated agent sessions (``--only compression``). Progress goes to stderr; stdout
gets only the report.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import compression, decode, e2e, policy_cost, report, translation
from .processes import REPO_ROOT, ChildFailed, run_json_child


@dataclass(frozen=True)
class Settings:
    timing: e2e.Timing
    decode_rounds: int
    rss_checkpoints: tuple[int, int]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--samples", type=Path, default=decode.DEFAULT_SAMPLES, help="directory of sample bodies"
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per scenario (3; --quick 1.5)"
    )
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds per scenario (1.5; --quick 0.5)"
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--rounds", type=int, help="end-to-end rounds per scenario, best kept (3; --quick 1)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run scenarios whose name contains PATTERN (shell wildcards; repeatable),"
        " e.g. 'decode', 'sse*c=32', 'messages_mw'",
    )
    return parser.parse_args(argv)


def _settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        warmup, duration, rounds, checkpoints = 0.5, 1.5, 3, (100, 1000)
    else:
        warmup, duration, rounds, checkpoints = 1.5, 3.0, 7, (1000, 10000)
    timing = e2e.Timing(
        warmup=args.warmup if args.warmup is not None else warmup,
        duration=args.duration if args.duration is not None else duration,
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else 3),
    )
    return Settings(timing, rounds, checkpoints)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_in_process(
    module: str, names: list[str], samples: Path, rounds: int, patterns: list[str]
) -> list[dict[str, Any]]:
    """Run ``python -m benchmarks.<module> --json`` pinned to the gateway's core, if any of
    ``names`` is wanted; its raw results."""
    if not any(e2e.matches(name, patterns) for name in names):
        return []
    _progress(f"{module} benchmarks")
    args = ["--samples", str(samples), "--rounds", str(rounds), "--json"]
    raw = run_json_child(module, *args, cpu=e2e.choose_cores().gateway, timeout=600)
    assert isinstance(raw, list)
    return raw


def _run_decode(samples: Path, rounds: int, patterns: list[str]) -> list[decode.DecodeResult]:
    names = decode.scenario_names(samples)
    raw = _run_in_process("decode", names, samples, rounds, patterns)
    results = [decode.DecodeResult(**item) for item in raw]
    return [r for r in results if e2e.matches(r.name, patterns)]


def _run_translation(
    samples: Path, rounds: int, patterns: list[str]
) -> list[translation.TranslateResult]:
    names = translation.scenario_names(samples)
    raw = _run_in_process("translation", names, samples, rounds, patterns)
    results = [translation.TranslateResult(**item) for item in raw]
    return [r for r in results if e2e.matches(r.name, patterns)]


def _run_compression(quick: bool, patterns: list[str]) -> list[compression.CompressionRow]:
    """The compression table's rows, from ``python -m benchmarks.compression --json`` pinned
    to the gateway's core, if any of them is wanted."""
    names = compression.scenario_names()
    if not any(e2e.matches(name, patterns) for name in names):
        return []
    _progress("compression benchmarks")
    args = ["--json", *(["--quick"] if quick else []), *(f"--only={p}" for p in patterns)]
    raw = run_json_child("compression", *args, cpu=e2e.choose_cores().gateway, timeout=1800)
    assert isinstance(raw, list)
    return [compression.CompressionRow(**item) for item in raw]


def _run_policy_cost(
    samples: Path, quick: bool, patterns: list[str]
) -> list[policy_cost.PolicyCostResult]:
    """d and e taking turns in one process pinned to the gateway's core (policy_cost.py)."""
    if not any(e2e.matches(name, patterns) for name in policy_cost.scenario_names()):
        return []
    _progress("policy cost in process")
    cores = e2e.choose_cores()
    args = ["--samples", str(samples), "--upstream-cpu", str(cores.load), "--json"]
    args += [
        *(["--rounds", "5", "--batch", "64"] if quick else []),
        *(f"--only={p}" for p in patterns),
    ]
    raw = run_json_child("policy_cost", *args, cpu=cores.gateway, timeout=900)
    assert isinstance(raw, list)
    return [policy_cost.PolicyCostResult(**item) for item in raw]


def _timing_text(settings: Settings) -> str:
    timing = settings.timing
    return (
        f"end to end: fresh gateway process per scenario, {timing.warmup:g} s warm-up +"
        f" {timing.duration:g} s measured, best of {timing.rounds} interleaved rounds"
        f" (highest req/s; lowest CPU per request); decode and translate: best of"
        f" {settings.decode_rounds} timeit rounds, each in its own process"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    settings = _settings(args)
    samples: Path = args.samples
    # The parent only waits on children; keep it off the gateway's core all the same.
    os.sched_setaffinity(0, {e2e.choose_cores().load})
    result = report.Report()
    try:
        decode_results = _run_decode(samples, settings.decode_rounds, args.only)
    except ChildFailed as exc:
        decode_results = []
        result.notes.append(f"decode: {exc}")
    report.add_decode(result, decode_results)
    try:
        translation_results = _run_translation(samples, settings.decode_rounds, args.only)
    except ChildFailed as exc:
        translation_results = []
        result.notes.append(f"translation: {exc}")
    report.add_translation(result, translation_results)
    try:
        report.add_compression(result, _run_compression(args.quick, args.only))
    except ChildFailed as exc:
        result.notes.append(f"compression: {exc}")
    try:
        report.add_policy_cost(result, _run_policy_cost(samples, args.quick, args.only))
    except ChildFailed as exc:
        result.notes.append(f"policy cost: {exc}")
    scenarios = [s for s in e2e.all_scenarios() if e2e.matches(s.name, args.only)]
    wants_rss = e2e.matches(report.RSS_LABEL, args.only)
    checkpoints = settings.rss_checkpoints if wants_rss else None
    if scenarios or wants_rss:
        e2e_results, rss = e2e.run_all(scenarios, samples, settings.timing, checkpoints, _progress)
        report.add_e2e(result, e2e_results)
        if rss is not None:
            report.add_rss(result, rss)
    print(report.render(result, report.header(REPO_ROOT, _timing_text(settings))))
    failed = any(
        note
        for note in result.notes
        if ": failed:" in note
        or note.startswith(("decode:", "translation:", "compression:", "policy cost:"))
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
