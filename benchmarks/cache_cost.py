"""The prompt-caching cost model of the compression benchmark.

A request is cut into its cacheable units in cache order (tools, system blocks, each message's
blocks), each keyed by its JSON without ``cache_control`` (moving a marker does not change the
cached content) and weighing one token per 4 bytes. A cache entry exists for every prefix that
ended at a breakpoint in an earlier request and was at least ``MIN_CACHEABLE_TOKENS`` long; the
longest such prefix byte-identical at the start of a request, ending at or before its last
breakpoint, is a cache read, the rest up to that breakpoint a cache write, what follows plain
input. Prefixes are really compared (running SHA-256 digests), so a compressor that rewrites an
earlier turn differently from one request to the next loses those reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from messages_mw.pricing import DEFAULT_PRICES, ModelPrice

PRICED_MODEL = "claude-sonnet-4-6"
BYTES_PER_TOKEN = 4
# Sonnet's minimum cacheable prompt: shorter prefixes are not written to the cache.
MIN_CACHEABLE_TOKENS = 1024

Json = dict[str, Any]


def sonnet_price() -> ModelPrice:
    """Sonnet's list price from ``messages_mw.pricing``, or $3/MTok input if it is not there."""
    return DEFAULT_PRICES.get(PRICED_MODEL) or ModelPrice(input=3.0, output=15.0)


@dataclass(frozen=True)
class Unit:
    """One cacheable unit of a request, in cache order."""

    key: bytes
    size: int
    breakpoint: bool


def _canonical(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _block_unit(block: object) -> Unit:
    if isinstance(block, dict):
        marked = "cache_control" in block
        key = _canonical({k: v for k, v in block.items() if k != "cache_control"})
        return Unit(key, len(key), marked)
    key = _canonical(block)
    return Unit(key, len(key), False)


def cache_units(body: bytes) -> list[Unit]:
    """``body`` cut into the units prompt caching sees: tools, system, messages, in that order.

    A zero-weight unit for the top-level settings that invalidate the cache (model,
    tool_choice, thinking) comes first, and one per message for its role.
    """
    request: Json = json.loads(body)
    settings = {k: request.get(k) for k in ("model", "tool_choice", "thinking")}
    units = [Unit(_canonical(settings), 0, False)]
    units += [_block_unit(tool) for tool in request.get("tools") or []]
    system = request.get("system")
    if isinstance(system, str):
        system = [{"type": "text", "text": system}]
    units += [_block_unit(block) for block in system or []]
    for message in request.get("messages", []):
        units.append(Unit(_canonical({"role": message.get("role")}), 0, False))
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        units += [_block_unit(block) for block in blocks or []]
    return units


@dataclass(frozen=True)
class TurnCost:
    read_tokens: float
    write_tokens: float
    input_tokens: float

    def dollars(self, price: ModelPrice) -> float:
        assert price.cache_read is not None and price.cache_write is not None
        priced = (
            self.read_tokens * price.cache_read
            + self.write_tokens * price.cache_write
            + self.input_tokens * price.input
        )
        return priced / 1e6


def simulate_caching(requests: Sequence[bytes]) -> list[TurnCost]:
    """How each request of a session is billed with prompt caching (see the module doc)."""
    cached: set[bytes] = set()
    costs = []
    for body in requests:
        units = cache_units(body)
        running = hashlib.sha256()
        ends, digests, breakpoints = [], [], []
        total = 0
        for index, unit in enumerate(units):
            running.update(len(unit.key).to_bytes(8, "little") + unit.key)
            digests.append(running.digest())
            total += unit.size
            ends.append(total)
            if unit.breakpoint:
                breakpoints.append(index)
        last = breakpoints[-1] if breakpoints else -1
        read_end = max((i for i in range(last + 1) if digests[i] in cached), default=-1)
        read = ends[read_end] if read_end >= 0 else 0
        cacheable = ends[last] if last >= 0 else 0
        if cacheable / BYTES_PER_TOKEN < MIN_CACHEABLE_TOKENS:
            cacheable = read
        costs.append(
            TurnCost(
                read / BYTES_PER_TOKEN,
                (cacheable - read) / BYTES_PER_TOKEN,
                (total - cacheable) / BYTES_PER_TOKEN,
            )
        )
        for index in breakpoints:
            if ends[index] / BYTES_PER_TOKEN >= MIN_CACHEABLE_TOKENS:
                cached.add(digests[index])
    return costs


def session_dollars(requests: Sequence[bytes], price: ModelPrice) -> tuple[float, float]:
    """Total cost of the session's input, and the share of its input tokens read from cache."""
    costs = simulate_caching(requests)
    tokens = sum(c.read_tokens + c.write_tokens + c.input_tokens for c in costs)
    read = sum(c.read_tokens for c in costs)
    return sum(c.dollars(price) for c in costs), read / tokens if tokens else 0.0
