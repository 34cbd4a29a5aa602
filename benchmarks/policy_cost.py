"""The policy layer's added cost, in one process: the bare core (d) and every built-in on (e).

End to end, d and e each run in a fresh process, seconds apart, and this machine moves the CPU
per request of one and the same gateway by up to 30% between runs, so a 5% difference drowns
in the noise. Here both gateways live in one process pinned to the gateway's core, forward to
the same mock upstream (on the other core) over loopback, and take turns in short batches, the
order alternating and each batch on a freshly built gateway, so drift hits both alike.
Requests enter as the bytes a client sends, through the HTTP protocol ``messages-mw serve``
runs (:mod:`messages_mw.server`), into a transport that stands in for the socket, with the
garbage collector set up as that command sets it: the core's cost includes serving the
request, as it does end to end, while the load generator and the sockets stay out.
``--entry asgi`` calls the app directly instead, leaving the protocol's share out of both d
and e (a stricter ratio: smaller denominator, same difference).

Run on its own (``python -m benchmarks.policy_cost --json``) it prints one JSON list of
results, so the CLI can measure it in a child process pinned to the gateway's core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

from .decode import DEFAULT_SAMPLES
from .e2e import CONNECTION_COUNTS, WORKLOADS, Workload, matches
from .loadgen import SESSION_ID, TAG_HEADER, with_stream
from .processes import running_server
from .proxies import build_gateway, build_gateway_with_policy
from .serving import pin_to_core

VARIANTS: dict[str, Callable[[str], Any]] = {
    "d": build_gateway,
    "e": build_gateway_with_policy,
}
WARMUP_REQUESTS = 64
SCENARIO_PREFIX = "policy in process "


@dataclass(frozen=True)
class PolicyCostResult:
    """CPU per request of d and e (medians over their batches) for one workload."""

    name: str
    core_us: float
    policy_us: float
    batches: int
    requests_per_batch: int

    @property
    def ratio(self) -> float:
        return self.policy_us / self.core_us

    @property
    def added_us(self) -> float:
        return self.policy_us - self.core_us


def scenario_name(workload: Workload, connections: int) -> str:
    return f"{SCENARIO_PREFIX}{workload.label} c={connections}"


def scenario_names() -> list[str]:
    return [scenario_name(w, c) for w in WORKLOADS for c in CONNECTION_COUNTS]


def _scope(body: bytes) -> dict[str, Any]:
    """What uvicorn hands the app for the load generator's request."""
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"anthropic-version", b"2023-06-01"),
        (b"x-api-key", b"client-key"),
        (TAG_HEADER.encode(), b"ci,nightly"),
        (b"x-claude-code-session-id", SESSION_ID.encode()),
        (b"content-length", b"%d" % len(body)),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/messages",
        "raw_path": b"/v1/messages",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _one_request(gateway: Any, scope: dict[str, Any], body: bytes) -> None:
    """One request through the ASGI interface; raises unless the answer is a complete 200."""
    answered = asyncio.Event()
    status = 0
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            answered.set()

    await gateway(scope, receive, send)
    if status != 200 or not answered.is_set():
        raise RuntimeError(f"the gateway answered {status} instead of a complete 200")


class _LoopbackTransport(asyncio.Transport):
    """What the served protocol writes to instead of a socket: it keeps the response's first
    line, to check the status, and drops the rest."""

    def __init__(self, client_port: int) -> None:
        super().__init__()
        self._extra = {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", client_port)}
        self._closing = False
        self.status_line = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.status_line:
            self.status_line = bytes(data[: bytes(data).find(b"\r\n")])

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return 0  # every write is taken at once

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _ServerEntry:
    """Requests enter through the HTTP protocol the gateway is served with, in this process:
    each connection is a protocol instance fed the request's bytes, as a socket would feed it,
    and writing to a :class:`_LoopbackTransport`.
    So the core's cost includes what serving a request costs, as it does end to end, while
    the client and the sockets stay out of the measurement."""

    def __init__(self, gateway: Any, body: bytes, connections: int) -> None:
        import uvicorn
        from uvicorn.server import ServerState

        from messages_mw.cli import serving_options

        self._answered = {port: asyncio.Event() for port in _client_ports(connections)}

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await gateway(scope, receive, send)
            self._answered[scope["client"][1]].set()

        config = uvicorn.Config(app, lifespan="off", log_level="warning", **serving_options())
        config.load()
        state = ServerState()
        self._request = _raw_request(body)
        self._links = []
        for port in self._answered:
            protocol = config.http_protocol_class(config=config, server_state=state, app_state={})
            transport = _LoopbackTransport(port)
            protocol.connection_made(transport)
            self._links.append((port, protocol, transport))

    async def client(self, link: int, count: int) -> None:
        port, protocol, transport = self._links[link]
        answered = self._answered[port]
        for _ in range(count):
            answered.clear()
            transport.status_line = b""
            protocol.data_received(self._request)
            await answered.wait()
            if not transport.status_line.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"the gateway answered {transport.status_line!r}")

    def close(self) -> None:
        for _, protocol, transport in self._links:
            transport.close()
            protocol.connection_lost(None)


def _client_ports(connections: int) -> range:
    return range(50000, 50000 + connections)


def _raw_request(body: bytes) -> bytes:
    head = [b"POST /v1/messages HTTP/1.1"]
    head += [name + b": " + value for name, value in _scope(body)["headers"]]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _AsgiEntry:
    """Requests enter through the ASGI interface directly, as uvicorn would call it: what
    serving costs is left out (``--entry asgi``)."""

    def __init__(self, gateway: Any, body: bytes, connections: int) -> None:
        self._gateway, self._body, self._scope = gateway, body, _scope(body)

    async def client(self, link: int, count: int) -> None:
        for _ in range(count):
            await _one_request(self._gateway, self._scope, self._body)

    def close(self) -> None:
        pass


ENTRIES = {"server": _ServerEntry, "asgi": _AsgiEntry}


async def _batch(
    gateway: Any, body: bytes, connections: int, requests: int, entry: str = "server"
) -> float:
    """CPU seconds per request for ``requests`` requests, ``connections`` at a time."""
    door = ENTRIES[entry](gateway, body, connections)
    per_client = max(1, requests // connections)
    try:
        started = time.process_time()
        await asyncio.gather(*(door.client(link, per_client) for link in range(connections)))
        return (time.process_time() - started) / (per_client * connections)
    finally:
        door.close()


async def _fresh_batch(
    build: Callable[[str], Any],
    upstream_url: str,
    body: bytes,
    connections: int,
    size: int,
    entry: str,
) -> float:
    """One batch through a gateway built for it, after a short warm-up.

    A gateway instance kept for the whole run carries a bias of its own: three identical cores
    built side by side measured 218, 219 and 233 µs per request, batch after batch. Building
    each batch's gateway afresh turns that bias into noise the median removes (they then agreed
    within 2 µs).
    """
    gateway = build(upstream_url)
    try:
        await _batch(gateway, body, connections, WARMUP_REQUESTS, entry)
        return await _batch(gateway, body, connections, size, entry)
    finally:
        await gateway.aclose()


async def _measure(
    upstream_url: str,
    workload: Workload,
    body: bytes,
    connections: int,
    rounds: int,
    size: int,
    entry: str,
) -> PolicyCostResult:
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_index in range(rounds):
        # Alternate which goes first, so neither always runs right after the other's garbage.
        order = list(VARIANTS) if round_index % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            batch = await _fresh_batch(VARIANTS[name], upstream_url, body, connections, size, entry)
            samples[name].append(batch)
    return PolicyCostResult(
        scenario_name(workload, connections),
        core_us=statistics.median(samples["d"]) * 1e6,
        policy_us=statistics.median(samples["e"]) * 1e6,
        batches=rounds,
        requests_per_batch=size,
    )


async def run_all(
    upstream_url: str,
    samples: Path,
    rounds: int,
    size: int,
    patterns: list[str],
    entry: str = "server",
) -> list[PolicyCostResult]:
    results = []
    for workload in WORKLOADS:
        body = with_stream((samples / workload.sample).read_bytes(), workload.stream)
        for connections in CONNECTION_COUNTS:
            if matches(scenario_name(workload, connections), patterns):
                results.append(
                    await _measure(upstream_url, workload, body, connections, rounds, size, entry)
                )
    return results


def _other_core(cpu: int | None) -> int:
    """A core other than ``cpu`` (a child inherits its parent's affinity, so ask the system)."""
    online = range(os.cpu_count() or 1)
    return next((core for core in online if core != cpu), online[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.policy_cost", description=__doc__)
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    parser.add_argument("--rounds", type=int, default=15, help="batches per gateway (15)")
    parser.add_argument("--batch", type=int, default=256, help="requests per batch (256)")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    parser.add_argument(
        "--upstream-cpu", type=int, default=None, help="the mock upstream's core (another one)"
    )
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN")
    parser.add_argument(
        "--entry",
        choices=sorted(ENTRIES),
        default="server",
        help="server: through the served HTTP protocol in process (default); asgi: the app alone",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    upstream_cpu = args.upstream_cpu if args.upstream_cpu is not None else _other_core(args.cpu)
    pin_to_core(args.cpu)
    # As in the gateway process: the end-to-end runs serve d and e the way the CLI does.
    from messages_mw.tuning import tune_for_serving

    tune_for_serving()
    with running_server("upstream", cpu=upstream_cpu) as upstream:
        results = uvloop.run(
            run_all(upstream.url, args.samples, args.rounds, args.batch, args.only, args.entry)
        )
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
        return
    for r in results:
        print(
            f"{r.name:40s} d {r.core_us:7.1f} µs  e {r.policy_us:7.1f} µs"
            f"  e/d {r.ratio:.3f}  (+{r.added_us:.1f} µs)",
            file=sys.stdout,
        )


if __name__ == "__main__":
    main()
