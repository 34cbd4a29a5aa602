"""Decode + validate: ``decode_messages_request`` against stdlib json + a pydantic v2 model.

Run on its own (``python -m benchmarks.decode --json``) it prints one JSON list of results, so
the CLI can measure it in a child process pinned to the gateway's core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import timeit
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from messages_mw.errors import InvalidRequestError
from messages_mw.validation import decode_messages_request

SAMPLE_FILES = ("small_chat.json", "agent_turn.json")
# The checkout's copy of ../shared/samples (the tests use them too).
DEFAULT_SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "samples"

# strict=True so pydantic rejects what msgspec rejects ("5" for an int, 1 for a str); lax mode
# would do extra coercion work and accept a different set of bodies. extra="allow" keeps
# unknown fields, like the gateway does.
_MODEL_CONFIG = ConfigDict(strict=True, extra="allow")


class PydanticBlock(BaseModel):
    model_config = _MODEL_CONFIG
    type: str


class PydanticMessage(BaseModel):
    model_config = _MODEL_CONFIG
    role: str
    content: str | list[PydanticBlock]


class PydanticMetadata(BaseModel):
    model_config = _MODEL_CONFIG
    user_id: str | None = None


class PydanticTool(BaseModel):
    model_config = _MODEL_CONFIG
    name: str | None = None


class PydanticMessagesRequest(BaseModel):
    """The same schema as ``messages_mw.validation.MessagesRequest``, in pydantic v2."""

    model_config = _MODEL_CONFIG
    model: str
    max_tokens: Annotated[int, Field(ge=0)]
    messages: Annotated[list[PydanticMessage], Field(min_length=1)]
    stream: bool = False
    system: str | list[PydanticBlock] | None = None
    metadata: PydanticMetadata | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[PydanticTool] | None = None
    tool_choice: PydanticBlock | None = None
    thinking: PydanticBlock | None = None


def decode_with_msgspec(body: bytes) -> object:
    return decode_messages_request(body)


def decode_with_stdlib_pydantic(body: bytes) -> object:
    """The baseline: what a typical FastAPI-style gateway does with a request body."""
    return PydanticMessagesRequest.model_validate(json.loads(body))


def decode_with_pydantic_json(body: bytes) -> object:
    """pydantic's own JSON parser (no dict in between): the strongest pydantic contender."""
    return PydanticMessagesRequest.model_validate_json(body)


class _NoFields(msgspec.Struct):
    """Every field unknown, so every value is skipped: only the JSON syntax is checked."""


_syntax_only = msgspec.json.Decoder(_NoFields)


def decode_syntax_only(body: bytes) -> object:
    """The floor under any validating decode: msgspec checks the JSON syntax of ``body`` (one
    object; strings are not checked for valid UTF-8 as they are skipped, as in the validating
    decode) and skips every value in it. A gateway that reads ``model`` must pay at least
    this; the difference to ``decode_with_msgspec`` is what validating the fields costs."""
    return _syntax_only.decode(body)


DECODERS: dict[str, Callable[[bytes], object]] = {
    "json.loads + pydantic": decode_with_stdlib_pydantic,
    "pydantic validate_json": decode_with_pydantic_json,
    "messages_mw (msgspec)": decode_with_msgspec,
    "floor: JSON syntax only (msgspec)": decode_syntax_only,
}
BASELINE = "json.loads + pydantic"


def accepts(decode: Callable[[bytes], object], body: bytes) -> bool:
    """Whether ``decode`` accepts ``body``; any of the decoders' rejection errors means no."""
    try:
        decode(body)
    except (InvalidRequestError, pydantic.ValidationError, msgspec.DecodeError, ValueError):
        # json.JSONDecodeError is a ValueError.
        return False
    return True


def best_seconds(call: Callable[[], object], rounds: int = 7, number: int | None = None) -> float:
    """Best-of-``rounds`` seconds per call; each round runs ``number`` calls, by default enough
    for about 0.2 s (timeit's autorange), so timer resolution never matters."""
    timer = timeit.Timer(call)
    if number is None:
        number, _ = timer.autorange()
    return min(timer.repeat(repeat=rounds, number=number)) / number


def time_per_call(
    func: Callable[[bytes], object], body: bytes, rounds: int = 7, number: int | None = None
) -> float:
    """``best_seconds`` of ``func(body)``."""
    return best_seconds(lambda: func(body), rounds, number)


def scenario_name(sample: str, size_bytes: int, decoder: str) -> str:
    return f"decode {sample.removesuffix('.json')} {size_bytes / 1000:.0f}KB · {decoder}"


def scenario_names(samples_dir: Path) -> list[str]:
    """The names the results will carry, known before running (for ``--only``)."""
    sizes = {name: (samples_dir / name).stat().st_size for name in SAMPLE_FILES}
    return [
        scenario_name(name, sizes[name], decoder) for name in SAMPLE_FILES for decoder in DECODERS
    ]


@dataclass(frozen=True)
class DecodeResult:
    sample: str
    size_bytes: int
    decoder: str
    seconds_per_call: float
    baseline_seconds_per_call: float

    @property
    def name(self) -> str:
        return scenario_name(self.sample, self.size_bytes, self.decoder)


def run_decode_benchmarks(
    samples_dir: Path,
    rounds: int = 7,
    number: int | None = None,
    sample_files: tuple[str, ...] = SAMPLE_FILES,
) -> list[DecodeResult]:
    results = []
    for name in sample_files:
        body = (samples_dir / name).read_bytes()
        timings = {
            label: time_per_call(func, body, rounds, number) for label, func in DECODERS.items()
        }
        for label, seconds in timings.items():
            results.append(DecodeResult(name, len(body), label, seconds, timings[BASELINE]))
    return results


def run_timing_child(
    doc: str | None,
    run: Callable[[Path, int], Sequence[Any]],
    line: Callable[[Any], str],
    argv: list[str] | None = None,
) -> None:
    """The command line of an in-process timing benchmark: ``--samples``, ``--rounds``,
    ``--cpu`` (pin to one core) and ``--json`` (raw results, as ``python -m benchmarks``
    reads them); otherwise one ``line`` per result."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    results = run(args.samples, args.rounds)
    if args.json:
        json.dump([asdict(result) for result in results], sys.stdout)
        return
    for result in results:
        print(line(result))


def main(argv: list[str] | None = None) -> None:
    run_timing_child(
        __doc__,
        run_decode_benchmarks,
        lambda r: f"{r.sample:18} {r.decoder:34} {r.seconds_per_call * 1e6:9.1f} µs",
        argv,
    )


if __name__ == "__main__":
    main()
