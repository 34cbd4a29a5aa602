"""Load generator: N keep-alive HTTP/1.1 connections, each sending requests back to back.

A raw asyncio Protocol on uvloop with httptools parsing responses, so it costs a few
microseconds per request and is never what limits a Python gateway. Runs either for
``--warmup`` + ``--duration`` seconds (latency and throughput counted only in the measured
window) or for a fixed ``--requests`` count (the RSS check). It also samples the CPU time of
the processes named by ``--watch-pid`` at the window's edges, where it knows them exactly.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import httptools
import uvloop

from .procstat import cpu_seconds

# Generous: a response slower than this is a hung gateway, counted as an error.
_DRAIN_SECONDS = 10.0


def with_stream(body: bytes, stream: bool) -> bytes:
    """``body`` with its top-level ``stream`` set, keeping the sample's bytes otherwise intact."""
    document = json.loads(body)
    if document.get("stream") == stream:
        return body
    old = b'"stream": ' + json.dumps(document.get("stream")).encode()
    if "stream" in document and body.count(old) == 1:
        candidate = body.replace(old, b'"stream": ' + json.dumps(stream).encode())
        if json.loads(candidate) == {**document, "stream": stream}:
            return candidate
    return json.dumps({**document, "stream": stream}, indent=1).encode()


# Sent to every gateway (b, c and d ignore them): what lets e's tagging and session built-ins
# work on each request, as they do for Claude Code and a client that tags its calls.
TAG_HEADER = "x-mw-tags"
SESSION_ID = "5f0c3a9e-8d1b-4a7e-9c2f-1b6e0d4a7c33"


def build_request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /v1/messages HTTP/1.1\r\n"
        f"host: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\n"
        f"x-api-key: client-key\r\n"
        f"anthropic-version: 2023-06-01\r\n"
        f"{TAG_HEADER}: ci,nightly\r\n"
        f"x-claude-code-session-id: {SESSION_ID}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def looks_complete(body: bytes, stream: bool) -> bool:
    """Cheap check that the answer is the one the mock sends, not an error or a cut stream."""
    if stream:
        return b"message_stop" in body[-120:]
    return body.startswith(b"{") and b'"stop_reason"' in body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``request()`` resolves to (status, body) of the next answer."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._body: list[bytes] = []
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so cast rather than check.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer, self._answer = self._answer, None
        body, self._body = b"".join(self._body), []
        if answer is not None and not answer.done():
            answer.set_result((self._parser.get_status_code(), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def request(self) -> tuple[int, bytes]:
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(self._request)
        return await self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    # pid -> CPU seconds used during the measured window.
    cpu_seconds: dict[int, float] = field(default_factory=dict)
    first_error: str | None = None

    def summary(self) -> dict[str, object]:
        ordered = sorted(self.latencies_ms)
        result = asdict(self)
        del result["latencies_ms"]
        result["rps"] = self.requests / self.seconds if self.seconds else 0.0
        result["p50_ms"] = _percentile(ordered, 0.50)
        result["p99_ms"] = _percentile(ordered, 0.99)
        return result


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class _Plan:
    """When to count and when to stop; shared by all connections of one run."""

    stream: bool
    measure_from: float
    stop_at: float
    max_requests: int | None = None
    issued: int = 0

    def may_send(self, now: float) -> bool:
        if self.max_requests is not None:
            self.issued += 1
            return self.issued <= self.max_requests
        return now < self.stop_at


async def _run_connection(port: int, request: bytes, plan: _Plan, result: LoadResult) -> None:
    loop = asyncio.get_running_loop()
    conn: _Connection | None = None
    while plan.may_send(time.perf_counter()):
        if conn is None or not conn.usable:
            _, conn = await loop.create_connection(lambda: _Connection(request), "127.0.0.1", port)
        started = time.perf_counter()
        try:
            status, body = await conn.request()
            ok = status == 200 and looks_complete(body, plan.stream)
            problem = f"status {status}: {body[:200]!r}"
        except (OSError, httptools.HttpParserError) as exc:
            ok, problem = False, repr(exc)
        finished = time.perf_counter()
        if not ok:
            result.errors += 1
            result.first_error = result.first_error or problem
        elif plan.measure_from <= finished <= plan.stop_at:
            # Counted by completion time: throughput is completions per second of the window.
            result.requests += 1
            result.latencies_ms.append((finished - started) * 1000)
    if conn is not None:
        conn.close()


def _sample_cpu(pids: list[int], into: dict[int, float], sign: float) -> None:
    for pid in pids:
        into[pid] = into.get(pid, 0.0) + sign * cpu_seconds(pid)


async def generate_load(
    port: int,
    request: bytes,
    *,
    stream: bool,
    connections: int,
    warmup: float = 0.0,
    duration: float = 0.0,
    max_requests: int | None = None,
    watch_pids: list[int] | None = None,
) -> LoadResult:
    """Drive ``connections`` connections; see the module docstring for the two modes."""
    loop = asyncio.get_running_loop()
    result = LoadResult()
    start = time.perf_counter()
    if max_requests is not None:
        plan = _Plan(stream, start, float("inf"), max_requests)
    else:
        plan = _Plan(stream, start + warmup, start + warmup + duration)
    sample = functools.partial(_sample_cpu, watch_pids or [], result.cpu_seconds)
    loop.call_at(loop.time() + (plan.measure_from - start), sample, -1.0)
    tasks = [
        asyncio.create_task(_run_connection(port, request, plan, result))
        for _ in range(connections)
    ]
    if max_requests is None:
        await asyncio.sleep(plan.stop_at - time.perf_counter())
        sample(1.0)
    done, pending = await asyncio.wait(tasks, timeout=None if max_requests else _DRAIN_SECONDS)
    for task in pending:
        task.cancel()
        result.errors += 1
        result.first_error = result.first_error or "request still unanswered after the run"
    for task in done:
        if task.exception() is not None:
            result.errors += 1
            result.first_error = result.first_error or repr(task.exception())
    if max_requests is not None:
        sample(1.0)
    result.seconds = (
        plan.stop_at if max_requests is None else time.perf_counter()
    ) - plan.measure_from
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="a request body (JSON file)")
    parser.add_argument("--stream", action="store_true", help='send "stream": true')
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=None, help="send this many, then stop")
    parser.add_argument("--watch-pid", type=int, action="append", default=[])
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    request = build_request(args.port, with_stream(args.body.read_bytes(), args.stream))
    result = uvloop.run(
        generate_load(
            args.port,
            request,
            stream=args.stream,
            connections=args.connections,
            warmup=args.warmup,
            duration=args.duration,
            max_requests=args.requests,
            watch_pids=[*args.watch_pid, os.getpid()],
        )
    )
    print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()
