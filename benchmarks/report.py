"""The printed report: a header with machine and versions, one aligned table, then notes."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import compression
from .decode import BASELINE as DECODE_BASELINE
from .decode import DecodeResult
from .e2e import (
    BASELINE,
    CORE,
    POLICY,
    POLICY_CPU_TARGET,
    TRANSLATED,
    E2EResult,
    RssResult,
)
from .policy_cost import SCENARIO_PREFIX as POLICY_PREFIX
from .policy_cost import PolicyCostResult
from .translation import BASELINE as TRANSLATE_BASELINE
from .translation import TranslateResult

COLUMNS = (
    "scenario",
    "target",
    "µs/op",
    "req/s",
    "p50 ms",
    "p99 ms",
    "CPU ms/req",
    "RSS MB",
    "load core %",
    "errors",
    "vs base",
)
_LEFT_ALIGNED = {"scenario", "target"}
DECODE_TARGET_US = 100.0
DECODE_TARGET_SAMPLE = "agent_turn.json"
LOADGEN_FLOOR_RPS = 5000.0
RSS_GROWTH_LIMIT_MB = 5.0
# Above this the upstream + load generator core, not the gateway, may be what limits a row.
LOAD_CORE_BUSY_LIMIT = 0.9
_VERSIONED = ("starlette", "httpx", "msgspec", "uvicorn", "uvloop", "httptools", "aiohttp")

RSS_LABEL = "rss d:messages_mw json+sse 57KB c=32"

Row = dict[str, str]


@dataclass
class Report:
    sections: list[list[Row]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Tables with their own columns, printed after the main one (compression).
    tables: list[str] = field(default_factory=list)


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _ratio(value: float, baseline: float | None) -> str:
    return f"{value / baseline:.2f}x" if baseline else ""


def add_decode(report: Report, results: list[DecodeResult]) -> None:
    if not results:
        return
    rows = []
    for r in results:
        micros = r.seconds_per_call * 1e6
        target = "baseline" if r.decoder == DECODE_BASELINE else ""
        if r.sample == DECODE_TARGET_SAMPLE and r.decoder.startswith("messages_mw"):
            target = f"≤ {DECODE_TARGET_US:.0f} µs {_mark(micros <= DECODE_TARGET_US)}"
        rows.append(
            {
                "scenario": r.name,
                "target": target,
                "µs/op": f"{micros:.1f}",
                # Time per decode: the baseline's time over ours is how many times faster we are.
                "vs base": _ratio(r.baseline_seconds_per_call, r.seconds_per_call),
            }
        )
    report.sections.append(rows)


def add_translation(report: Report, results: list[TranslateResult]) -> None:
    """µs per request (the request and response translations) or per streamed chunk."""
    if not results:
        return
    rows = []
    for r in results:
        rows.append(
            {
                "scenario": r.name,
                "target": "baseline" if r.implementation == TRANSLATE_BASELINE else "",
                "µs/op": f"{r.seconds_per_unit * 1e6:.1f}",
                "vs base": _ratio(r.baseline_seconds_per_unit, r.seconds_per_unit),
            }
        )
    report.sections.append(rows)


def _e2e_target(result: E2EResult) -> str:
    scenario = result.scenario
    if scenario.gateway == BASELINE:
        return "baseline"
    if scenario.gateway != "a":
        return ""
    if scenario.workload.stream:
        return "ceiling"
    # The direct runs double as the load generator's own check: it must not be the limit.
    return f"≥ {LOADGEN_FLOOR_RPS:,.0f} req/s {_mark(result.rps >= LOADGEN_FLOOR_RPS)}"


def _e2e_row(result: E2EResult, baseline_rps: float | None) -> Row:
    row = {"scenario": result.scenario.name, "target": _e2e_target(result)}
    if result.status != "ok":
        row["req/s"] = result.status.split(":")[0]
        return row
    row["req/s"] = f"{result.rps:,.0f}"
    if result.p50_ms is not None and result.p99_ms is not None:
        row["p50 ms"], row["p99 ms"] = f"{result.p50_ms:.2f}", f"{result.p99_ms:.2f}"
    if result.cpu_ms_per_request is not None:
        row["CPU ms/req"] = f"{result.cpu_ms_per_request:.3f}"
    if result.rss_mb is not None:
        row["RSS MB"] = f"{result.rss_mb:.1f}"
    if result.load_core_busy is not None:
        row["load core %"] = f"{result.load_core_busy * 100:.0f}"
    row["errors"] = str(result.errors)
    row["vs base"] = _ratio(result.rps, baseline_rps)
    return row


def _e2e_notes(result: E2EResult) -> list[str]:
    name, notes = result.scenario.name, []
    if result.status != "ok":
        notes.append(f"{name}: {result.status}")
    notes.extend(f"{name}: a round {status}" for status in result.failed_rounds)
    if result.errors:
        notes.append(f"{name}: {result.errors} errors, first: {result.first_error}")
    busy = result.load_core_busy or 0.0
    if result.scenario.gateway != "a" and busy >= LOAD_CORE_BUSY_LIMIT:
        notes.append(
            f"{name}: the upstream + load generator core was {busy:.0%} busy;"
            " the gateway may not be the only limit"
        )
    direct_json = result.scenario.gateway == "a" and not result.scenario.workload.stream
    if direct_json and result.status == "ok" and result.rps < LOADGEN_FLOOR_RPS:
        notes.append(f"{name}: load generator + upstream below {LOADGEN_FLOOR_RPS:,.0f} req/s")
    return notes


def add_e2e(report: Report, results: list[E2EResult]) -> None:
    groups: dict[str, list[E2EResult]] = {}
    for result in results:
        groups.setdefault(result.scenario.group, []).append(result)
    policy_parts = []
    for members in groups.values():
        baseline_rps = next(
            (r.rps for r in members if r.scenario.gateway == BASELINE and r.status == "ok"), None
        )
        rows = [_e2e_row(r, baseline_rps) for r in members]
        part = _mark_policy_cost(members, rows)
        if part is not None:
            policy_parts.append(part)
        report.sections.append(rows)
        for result in members:
            report.notes.extend(_e2e_notes(result))
    if policy_parts:
        report.notes.append(_policy_note(policy_parts))


def _cpu_ratio_to_core(members: list[E2EResult], gateway: str) -> tuple[float, float] | None:
    """``gateway``'s CPU per request as a ratio to the bare core's (d) in the same group, and
    its RSS minus d's; ``None`` when either has no result."""
    ok = {r.scenario.gateway: r for r in members if r.status == "ok"}
    core, other = ok.get(CORE), ok.get(gateway)
    if core is None or other is None or not core.cpu_ms_per_request:
        return None
    ratio = (other.cpu_ms_per_request or 0.0) / core.cpu_ms_per_request
    return ratio, (other.rss_mb or 0.0) - (core.rss_mb or 0.0)


def _ratio_text(ratio: float) -> str:
    """Two decimals, or three where two would round a miss onto the target ("1.10x ✗")."""
    text = f"{ratio:.2f}x"
    if ratio > POLICY_CPU_TARGET and float(text[:-1]) <= POLICY_CPU_TARGET:
        text = f"{ratio:.3f}x"
    return text


def _mark_policy_cost(members: list[E2EResult], rows: list[Row]) -> str | None:
    """Put the policy layer's (e) and the translation's (f) CPU per request, as ratios to the
    bare core's, in their target cells; return the group's part of the end-to-end note."""
    part = None
    for result, row in zip(members, rows, strict=True):
        gateway = result.scenario.gateway
        if gateway not in (POLICY, TRANSLATED):
            continue
        compared = _cpu_ratio_to_core(members, gateway)
        if compared is None:
            row["target"] = "CPU vs d: no result"
            continue
        ratio, rss_difference = compared
        # e's target is judged in process (add_policy_cost): here d and e run seconds apart
        # in separate processes, and that drift alone moves CPU per request by up to 30%.
        row["target"] = f"CPU vs d: {ratio:.2f}x"
        if gateway == POLICY:
            part = f"{result.scenario.group} CPU {ratio:.2f}x, RSS {rss_difference:+.1f} MB"
    return part


def _policy_note(parts: list[str]) -> str:
    return (
        "e vs d end to end (policy built-ins on vs the bare core, each in a fresh process; CPU"
        " per request, and RSS after its run; the ≤"
        f" {POLICY_CPU_TARGET:.2f}x target is judged on the policy-in-process rows, where d and e"
        " take turns in one process): " + "; ".join(parts)
    )


def add_policy_cost(report: Report, results: list[PolicyCostResult]) -> None:
    """The policy target's rows: d and e in one process, taking turns (see policy_cost.py)."""
    if not results:
        return
    rows = []
    for r in results:
        ok = r.ratio <= POLICY_CPU_TARGET
        rows += [
            {"scenario": f"{r.name} d:messages_mw", "µs/op": f"{r.core_us:.1f}"},
            {
                "scenario": f"{r.name} e:messages_mw+policy",
                "target": f"CPU ≤ {POLICY_CPU_TARGET:.2f}x d: {_ratio_text(r.ratio)} {_mark(ok)}",
                "µs/op": f"{r.policy_us:.1f}",
            },
        ]
    report.sections.append(rows)
    added = ", ".join(f"{r.name.removeprefix(POLICY_PREFIX)} +{r.added_us:.0f}" for r in results)
    batches = results[0]
    report.notes.append(
        "policy in process: the hooks' added CPU per request (µs), d and e in one process pinned"
        " to the gateway's core, median of"
        f" {batches.batches} alternating batches of {batches.requests_per_batch} requests each,"
        " each request fed as bytes through the HTTP protocol and garbage-collector settings"
        f" of messages-mw serve, client and sockets left out: {added}"
    )


def add_rss(report: Report, result: RssResult) -> None:
    label = RSS_LABEL
    if result.status != "ok":
        report.sections.append([{"scenario": label, "RSS MB": result.status.split(":")[0]}])
        report.notes.append(f"{label}: {result.status}")
        return
    rows = [
        {"scenario": f"{label} after {count:,} req", "RSS MB": f"{rss:.1f}"}
        for count, rss in zip(result.checkpoints, result.rss_mb, strict=True)
    ]
    growth = result.rss_mb[-1] - result.rss_mb[0]
    rows[-1]["target"] = (
        f"growth < {RSS_GROWTH_LIMIT_MB:.0f} MB {_mark(growth < RSS_GROWTH_LIMIT_MB)}"
    )
    rows[-1]["errors"] = str(result.errors)
    report.sections.append(rows)
    if result.errors:
        report.notes.append(f"{label}: {result.errors} errors during the RSS check")


def add_compression(report: Report, rows: list[compression.CompressionRow]) -> None:
    if rows:
        report.tables.append(compression.format_rows(rows))


def format_table(sections: list[list[Row]]) -> str:
    widths = {
        column: max([len(column)] + [len(row.get(column, "")) for rows in sections for row in rows])
        for column in COLUMNS
    }

    def line(row: Row) -> str:
        cells = []
        for column in COLUMNS:
            text = row.get(column, "")
            fit = text.ljust if column in _LEFT_ALIGNED else text.rjust
            cells.append(fit(widths[column]))
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * widths[column] for column in COLUMNS)
    lines = [line({column: column for column in COLUMNS}), rule]
    for index, rows in enumerate(sections):
        if index:
            lines.append("")
        lines.extend(line(row) for row in rows)
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for text in cpuinfo:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _messages_mw_version(repo_root: Path) -> str:
    installed = _version("messages-mw")
    if installed != "not installed":
        return installed
    # Run from a checkout that was never pip-installed: say which source version it is.
    with open(repo_root / "pyproject.toml", "rb") as pyproject:
        return f"{tomllib.load(pyproject)['project']['version']} (source tree)"


def header(repo_root: Path, timing_text: str) -> list[str]:
    versions = [f"{name} {_version(name)}" for name in (*_VERSIONED, "pydantic")]
    return [
        "messages_mw benchmarks",
        f"machine: {_cpu_model()}, {os.cpu_count()} cores; {platform.system()} "
        f"{platform.release()}; gateway pinned to one core, upstream + load generator to another",
        f"python {platform.python_version()} · {' · '.join(versions)}"
        f" · messages_mw {_messages_mw_version(repo_root)}",
        timing_text,
    ]


def render(report: Report, header_lines: list[str]) -> str:
    parts = ["\n".join(header_lines)]
    legend = (
        "vs base: times faster than the baseline row of its group (json.loads + pydantic for"
        " decode, the stdlib JSON round trip of the same input for translate, b:starlette+httpx"
        " for end to end). decode floor: msgspec checking only the JSON syntax of the body,"
        " every value skipped, the least any gateway that reads a field pays. translate: request"
        " = to_chat_completions, response = to_anthropic_message (µs per request); stream ="
        " StreamTranslator.feed + finish (µs per chunk). e: every policy built-in on; f: the"
        " core answering from the mock's OpenAI-compatible route, translating both ways (its"
        " target: CPU per request vs d). load core %: CPU of upstream + load generator on their"
        " shared core. CPU ms/req and RSS: the gateway process."
    )
    if report.sections:
        parts += [format_table(report.sections), legend]
    parts += report.tables
    if report.notes:
        parts.append("notes:\n" + "\n".join(f"- {note}" for note in report.notes))
    return "\n\n".join(parts)
