"""Translation cost: ``messages_mw.translate`` per request and per streamed chunk, in-process.

What the OpenAI-compatible provider adds to a request, in three rows of the table:
``request``: ``to_chat_completions`` on the way up (the 1 KB chat and the 57 KB agent turn);
``response``: ``to_anthropic_message`` on a ~1 KB completion on the way back; ``... stream``:
``StreamTranslator`` on realistic chunk streams (see ``openai_payloads.py``), reported per
chunk: a fresh translator fed the whole stream one network chunk at a time with ``feed``, plus
``finish()``, divided by the number of chunks.

The baseline is the stdlib JSON round trip of the same input (``json.dumps(json.loads(x))``,
per chunk for streams): the least a dict-based translator does before any mapping at all.

Run on its own (``python -m benchmarks.translation --json``) it prints one JSON list of
results, so the CLI can measure it in a child process pinned to the gateway's core.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from messages_mw.translate import (
    OpenAIQuirks,
    StreamTranslator,
    to_anthropic_message,
    to_chat_completions,
)

from . import openai_payloads
from .decode import SAMPLE_FILES, best_seconds, run_timing_child

BASELINE = "json round trip"
OURS = "messages_mw"
IMPLEMENTATIONS = (BASELINE, OURS)
UPSTREAM_MODEL = "gpt-4o"
CLIENT_MODEL = "claude-sonnet-4-6"
MESSAGE_ID = "msg_01BenchTranslated0000001"
_QUIRKS = OpenAIQuirks()


@dataclass(frozen=True)
class Case:
    """One thing to translate: ``inputs`` is one body, or a stream's chunks in arrival order;
    ``translate`` runs messages_mw over all of them once."""

    label: str
    unit: str
    inputs: list[bytes]
    translate: Callable[[], object]

    @property
    def units(self) -> int:
        return len(self.inputs) if self.unit == "chunk" else 1


def _size_label(size_bytes: int) -> str:
    return f"{max(size_bytes / 1000, 1):.0f}KB"


def translate_stream(chunks: list[bytes]) -> bytes:
    """A fresh translator fed ``chunks`` one at a time, then finished: the Anthropic SSE."""
    translator = StreamTranslator(model=CLIENT_MODEL, message_id=MESSAGE_ID, input_tokens=1843)
    events = [translator.feed(chunk) for chunk in chunks]
    events.append(translator.finish())
    return b"".join(events)


def _request_case(samples_dir: Path, name: str) -> Case:
    body = (samples_dir / name).read_bytes()
    label = f"request {name.removesuffix('.json')} {_size_label(len(body))}"

    def translate() -> bytes:
        return to_chat_completions(body, model=UPSTREAM_MODEL, quirks=_QUIRKS, stream=True)

    return Case(label, "request", [body], translate)


def _response_case() -> Case:
    body = openai_payloads.completion_body()

    def translate() -> bytes:
        return to_anthropic_message(body, model=CLIENT_MODEL, message_id=MESSAGE_ID)

    label = f"response {_size_label(len(body))}"
    return Case(label, "request", [body], translate)


def _stream_case(kind: str, chunks: list[bytes]) -> Case:
    label = f"{kind} stream {len(chunks)} chunks, per chunk"
    return Case(label, "chunk", chunks, lambda: translate_stream(chunks))


def build_cases(samples_dir: Path, sample_files: tuple[str, ...] = SAMPLE_FILES) -> list[Case]:
    return [
        *(_request_case(samples_dir, name) for name in sample_files),
        _response_case(),
        _stream_case("text", openai_payloads.text_stream()),
        _stream_case("tool-call", openai_payloads.tool_call_stream()),
    ]


def json_round_trip(inputs: list[bytes]) -> None:
    """The baseline: parse and re-serialize every JSON payload (an SSE chunk's ``data:``)."""
    for raw in inputs:
        payload = raw.removeprefix(b"data: ").strip()
        if payload != b"[DONE]":
            json.dumps(json.loads(payload))


def scenario_name(label: str, implementation: str) -> str:
    return f"translate {label} · {implementation}"


def scenario_names(samples_dir: Path, sample_files: tuple[str, ...] = SAMPLE_FILES) -> list[str]:
    """The names the results will carry, known before running (for ``--only``)."""
    cases = build_cases(samples_dir, sample_files)
    return [scenario_name(case.label, impl) for case in cases for impl in IMPLEMENTATIONS]


@dataclass(frozen=True)
class TranslateResult:
    label: str
    unit: str
    implementation: str
    seconds_per_unit: float
    baseline_seconds_per_unit: float

    @property
    def name(self) -> str:
        return scenario_name(self.label, self.implementation)


def run_translation_benchmarks(
    samples_dir: Path,
    rounds: int = 7,
    number: int | None = None,
    sample_files: tuple[str, ...] = SAMPLE_FILES,
) -> list[TranslateResult]:
    results = []
    for case in build_cases(samples_dir, sample_files):
        round_trip = functools.partial(json_round_trip, case.inputs)
        baseline = best_seconds(round_trip, rounds, number) / case.units
        ours = best_seconds(case.translate, rounds, number) / case.units
        results += [
            TranslateResult(case.label, case.unit, BASELINE, baseline, baseline),
            TranslateResult(case.label, case.unit, OURS, ours, baseline),
        ]
    return results


def main(argv: list[str] | None = None) -> None:
    run_timing_child(
        __doc__,
        run_translation_benchmarks,
        lambda r: f"{r.label:62} {r.implementation:22} {r.seconds_per_unit * 1e6:9.2f} µs/{r.unit}",
        argv,
    )


if __name__ == "__main__":
    main()
