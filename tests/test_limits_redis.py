"""The Redis counter store against a real ``redis-server`` on a loopback port.

The server is required, not optional: CI installs ``redis-server``. On a machine without it
(only Python and pip), or with ``MESSAGES_MW_TEST_REDIS=fakeredis``, the same tests run
against fakeredis's server in a process of its own (:mod:`tests.fake_redis_server`), which
speaks the protocol and runs the Lua scripts. Each server runs without persistence, so a
restart empties it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings

from messages_mw.context import Principal
from messages_mw.limit_stores import (
    Increment,
    LimitStoreError,
    MemoryCounterStore,
    RedisCounterStore,
    WindowCheck,
)
from messages_mw.limits import LimitRule, LimitsConfig, RateLimiter

from .test_limits import (
    PROPERTY_RULES,
    FakeClock,
    LimiterSemantics,
    StoreFactory,
    operations,
    outcome,
    play,
    request,
    run,
)

ROOT = Path(__file__).resolve().parents[1]


class RedisServer:
    """A throw-away ``redis-server`` that can be stopped and started again on its port."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + 10
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the Redis server on port {self.port} did not answer PING in 10 s")
            time.sleep(0.01)
        # The answer must have been this server's, not another one's that holds the port.
        assert self.process.poll() is None, f"the Redis server on port {self.port} exited"

    def _command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None or os.environ.get("MESSAGES_MW_TEST_REDIS") == "fakeredis":
            return [sys.executable, "-m", "tests.fake_redis_server", str(self.port)]
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        options += ["--appendonly", "no", "--dir", str(self.directory)]
        return [binary, *options]

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        # kill() returns before the stop takes effect: a command sent at once may still be
        # answered, so wait until the kernel reports the process stopped.
        stat = Path(f"/proc/{self.process.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            assert time.monotonic() < deadline, "the Redis server did not stop within 10 s"
            time.sleep(0.001)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")  # RESP: fakeredis has no inline form
                return sock.recv(7).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def fresh_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


class TestRedisStore(LimiterSemantics):
    @pytest.fixture
    def make_store(self, shared_redis: RedisServer) -> StoreFactory:
        prefix = fresh_prefix()
        return lambda: RedisCounterStore(shared_redis.url, key_prefix=prefix)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_redis_decides_exactly_as_memory(
    shared_redis: RedisServer, ops: list[tuple[Any, ...]]
) -> None:
    logs = []
    for make_store in (
        MemoryCounterStore,
        lambda: RedisCounterStore(shared_redis.url, key_prefix=fresh_prefix()),
    ):
        clock = FakeClock()

        async def scenario(limiter: RateLimiter, clock: FakeClock = clock) -> None:
            logs.append(await play(limiter, clock, ops))

        run(make_store, PROPERTY_RULES, scenario, clock)
    assert logs[0] == logs[1]


def test_store_keys_name_only_the_metric_window_and_subject(shared_redis: RedisServer) -> None:
    prefix = fresh_prefix()
    rules = [LimitRule(scope="key", requests_per_minute=5, tokens_per_minute=100)]
    rules.append(LimitRule(scope="tag", spend=2.0, spend_period_seconds=3600))

    async def scenario(limiter: RateLimiter) -> None:
        context = request("team-a-ci", ["ci"], tokens=40, cost=0.5)
        context.principal = Principal("team-a-ci", upstream_api_key="sk-ant-secret")
        await limiter.admit(context)
        await limiter.record(context)

    run(lambda: RedisCounterStore(shared_redis.url, key_prefix=prefix), rules, scenario)
    client = redis.Redis.from_url(shared_redis.url, decode_responses=True)
    try:
        every_key = client.keys(prefix + "*")
        calls = [key for key in every_key if key.startswith(prefix + "call:")]
        keys = sorted(set(every_key) - set(calls))
        assert keys == [
            prefix + "requests:60:key:team-a-ci",
            prefix + "spend:3600:tag:ci",
            prefix + "tokens:60:key:team-a-ci",
        ]
        # Each call is remembered for 10 s by a random name (so that a resend counts once).
        assert len(calls) == 2
        for call in calls:
            assert re.fullmatch(re.escape(prefix) + r"call:[0-9a-f]{32}:\d+:\d+", call)
            assert 0 < client.pttl(call) <= 10_000
        assert 0 < client.ttl(prefix + "requests:60:key:team-a-ci") <= 120
        assert 3600 < client.ttl(prefix + "spend:3600:tag:ci") <= 7200
        assert client.hget(prefix + "tokens:60:key:team-a-ci", "c") == "40"
        for key in keys:  # the window index and two totals, nothing else
            assert set(client.hgetall(key)) == {"w", "p", "c"}
    finally:
        client.close()


_HAMMER = """
import asyncio, sys
from messages_mw.context import Principal, RequestContext
from messages_mw.errors import RateLimitError
from messages_mw.limits import LimitRule, LimitsConfig, RateLimiter

url, prefix, limit, attempts, now = sys.argv[1:]
rule = LimitRule(scope="key", requests_per_minute=int(limit))
# 240 checks at once against the pure-Python server a machine without redis-server gets took
# over the default 0.5 s once in CI, and the store's fail-open policy let that one through
# uncounted: this test is about two processes sharing counters, not about slow stores.
config = LimitsConfig(
    rules=(rule,), store="redis", redis_url=url, key_prefix=prefix, store_timeout=10.0
)

async def one(limiter):
    context = RequestContext("req", "POST", "/v1/messages", principal=Principal("shared"))
    try:
        await limiter.admit(context)
    except RateLimitError:
        return 0
    return 1

async def main():
    limiter = RateLimiter(config, clock=lambda: float(now))
    print("ready", flush=True)
    sys.stdin.readline()
    results = await asyncio.gather(*(one(limiter) for _ in range(int(attempts))))
    await limiter.aclose()
    print(sum(results), flush=True)

asyncio.run(main())
"""


def test_two_processes_share_one_limit(shared_redis: RedisServer) -> None:
    limit, attempts, prefix = 70, 120, fresh_prefix()
    # A clock frozen mid-minute: both processes count in the same window however long they take.
    argv = [sys.executable, "-c", _HAMMER, shared_redis.url, prefix, str(limit), str(attempts)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [*argv, str(time.time() // 60 * 60 + 30)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:  # release both at once
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        counts = [int(worker.communicate(timeout=30)[0]) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert [worker.returncode for worker in workers] == [0, 0]
    assert sum(counts) == limit, counts


def outage_config(server: RedisServer, policy: str, store_timeout: float = 0.3) -> LimitsConfig:
    rule = LimitRule(scope="key", requests_per_minute=5)
    return LimitsConfig(
        rules=(rule,),
        store="redis",
        redis_url=server.url,
        key_prefix=fresh_prefix(),
        on_store_error=policy,  # type: ignore[arg-type]
        store_timeout=store_timeout,
    )


def outage_limiter(
    server: RedisServer, policy: str, clock: FakeClock, store_timeout: float = 0.3
) -> RateLimiter:
    """The store the config names, with ``clock`` as its wall and its monotonic clock."""
    config = outage_config(server, policy, store_timeout)
    store = RedisCounterStore(
        config.redis_url,
        key_prefix=config.key_prefix,
        timeout=config.store_timeout,
        monotonic=clock,
    )
    return RateLimiter(config, store=store, clock=clock)


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_redis_outage_follows_the_policy_and_recovers_by_itself(
    own_redis: RedisServer, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    limiter = outage_limiter(own_redis, policy, clock)

    async def scenario() -> list[tuple[bool, dict[str, str]]]:
        results = [await outcome(limiter, request())]
        own_redis.stop()
        results.append(await outcome(limiter, request()))
        clock.advance(2)  # past the store's retry interval: it tries Redis again, still down
        results.append(await outcome(limiter, request()))
        own_redis.start()  # empty: no persistence, and the scripts must be loaded again
        results.append(await outcome(limiter, request()))  # still within the retry interval
        clock.advance(2)
        results.append(await outcome(limiter, request()))
        await limiter.aclose()
        return results

    with caplog.at_level(logging.WARNING, logger="messages_mw.limits"):
        before, *outage, after = asyncio.run(scenario())
    remaining = "anthropic-ratelimit-requests-remaining"
    assert before[0] and before[1][remaining] == "4"
    if policy == "open":
        assert outage == [(True, {})] * 3
    else:
        assert outage == [(False, {"retry-after": "1"})] * 3
    assert after[0] and after[1][remaining] == "4"
    assert len(caplog.records) == 1
    assert "rate limit store unavailable" in caplog.records[0].getMessage()


def test_a_hung_redis_costs_one_timeout_then_fails_fast(own_redis: RedisServer) -> None:
    # A long store timeout, so that each wrong outcome is slow: a second check that waited for
    # Redis again would take the store timeout, and a first check that waited twice, twice that;
    # the bounds below sit seconds away from both, not milliseconds.
    store_timeout = 2.0
    clock = FakeClock()
    limiter = outage_limiter(own_redis, "open", clock, store_timeout)

    async def scenario() -> list[float]:
        await limiter.admit(request())
        own_redis.pause()
        try:
            timings = []
            for _ in range(2):
                started = time.monotonic()
                assert await limiter.admit(request()) == []
                timings.append(time.monotonic() - started)
        finally:
            own_redis.resume()
        clock.advance(2)
        assert (await outcome(limiter, request()))[1]  # counted (and reported) again
        await limiter.aclose()
        return timings

    first, second = asyncio.run(scenario())
    assert store_timeout * 0.75 < first < store_timeout * 1.75
    assert second < store_timeout / 2


def test_a_burst_queues_for_connections_and_is_not_taken_for_an_outage(
    shared_redis: RedisServer,
) -> None:
    # Thousands of checks at once in one process wait for one of few connections: that
    # queue is no sign of a sick Redis, and must neither lift the limits (on_store_error =
    # "open") nor skip Redis for the following second.
    config = LimitsConfig(
        rules=(LimitRule(scope="key", requests_per_minute=100),),
        store="redis",
        redis_url=shared_redis.url,
        key_prefix=fresh_prefix(),
        store_timeout=0.25,
        redis_max_connections=1,
    )
    # A clock frozen mid-minute: on the wall clock, a burst that began in a minute's last
    # half second found room again 0.6 s into the next (the sliding window), so the limit's
    # own refusals said retry-after 1, as a store error does (seen once in a CI run).
    mid_minute = time.time() // 60 * 60 + 30
    limiter = RateLimiter(config, clock=lambda: mid_minute)

    async def scenario() -> list[tuple[bool, dict[str, str]]]:
        # The connection opens first: the burst is about queueing for it. Opened under the
        # burst, its connect could time out while the loop starts 4,000 tasks (seen once in
        # a full CI run), which is the loop's lag, not this queue.
        results = [await outcome(limiter, request())]
        results += await asyncio.gather(*(outcome(limiter, request()) for _ in range(3999)))
        await limiter.aclose()
        return results

    results = asyncio.run(scenario())
    assert sum(admitted for admitted, _ in results) == 100
    # Every refusal is the limit's own (a store error would admit, or say retry-after 1).
    assert all(int(headers["retry-after"]) > 1 for admitted, headers in results if not admitted)


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_a_loop_stalled_past_a_connect_deadline_is_not_taken_for_an_outage(
    shared_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    # The connection opens, then the event loop stalls past the connect timeout (a cold
    # gateway starting thousands of requests at once) before the connect can finish: the
    # loop runs the due deadline first, and redis-py reports "Timeout connecting to server"
    # with Redis up. That one check follows on_store_error; the ones after it must not.
    store_timeout = 0.25
    limiter = RateLimiter(outage_config(shared_redis, policy, store_timeout))
    real_open_connection = asyncio.open_connection
    stalls = [2 * store_timeout]

    async def open_connection_then_stall(*args: Any, **kwargs: Any) -> Any:
        opened = await real_open_connection(*args, **kwargs)
        if stalls:
            asyncio.get_running_loop().call_soon(time.sleep, stalls.pop())
            await asyncio.sleep(0.001)  # due with the deadline, after the stall: it loses
        return opened

    monkeypatch.setattr(asyncio, "open_connection", open_connection_then_stall)

    async def scenario() -> list[tuple[bool, dict[str, str]]]:
        results = [await outcome(limiter, request()) for _ in range(3)]
        await limiter.aclose()
        return results

    stalled, *after = asyncio.run(scenario())
    assert not stalls, "the connect never stalled"
    assert stalled == ((True, {}) if policy == "open" else (False, {"retry-after": "1"}))
    remaining = "anthropic-ratelimit-requests-remaining"
    # Counted in Redis at once, not skipped for the store's retry interval.
    assert [(admitted, headers[remaining]) for admitted, headers in after] == [
        (True, "4"),
        (True, "3"),
    ]


def test_a_redis_that_does_not_know_hello_is_served_in_resp2(shared_redis: RedisServer) -> None:
    # Redis before 6 and proxies such as twemproxy answer HELLO (redis-py 8's opening for
    # RESP3) with an error: every call failed, the limits off (open) or every request refused.
    async def scenario() -> list[bool]:
        proxy = await asyncio.start_server(
            functools.partial(_proxy_refusing_hello, shared_redis.port), "127.0.0.1", 0
        )
        port = proxy.sockets[0].getsockname()[1]
        # 10 s: the pure-Python Redis of machines without redis-server is slow to load a script.
        url = f"redis://127.0.0.1:{port}/0"
        store = RedisCounterStore(url, key_prefix=fresh_prefix(), timeout=10.0)
        check = WindowCheck("requests:60:key:k", 60.0, 2.0, 1.0, True)
        admitted = [(await store.consume([check], 1000.0))[0] for _ in range(3)]
        await store.aclose()
        proxy.close()
        return admitted

    assert asyncio.run(scenario()) == [True, True, False]


async def _proxy_refusing_hello(
    redis_port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """RESP: refuses a connection's opening HELLO as an old Redis does; passes everything
    else through to the Redis on ``redis_port`` and back."""
    upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", redis_port)

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
        header = await reader.readline()
        command = [header]
        for _ in range(int(header[1:])):
            length_line = await reader.readline()
            command += [length_line, await reader.readexactly(int(length_line[1:]) + 2)]
        if command[2][:-2].upper() == b"HELLO":
            writer.write(b"-ERR unknown command 'HELLO'\r\n")
        else:
            upstream_writer.write(b"".join(command))
        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))
    upstream_writer.close()


def test_counts_come_back_from_redis_exactly(shared_redis: RedisServer) -> None:
    # Lua's tostring keeps 14 digits: ten spends of 0.1 (0.9999999999999999) came back as 1,
    # and a 429 for another limit then said the budget of 1 was used up, for hours.
    store = RedisCounterStore(shared_redis.url, key_prefix=fresh_prefix(), timeout=10.0)
    budget = WindowCheck("spend:86400:key:k", 86400.0, 1.0, 0.0, False)

    async def scenario() -> float:
        for _ in range(10):
            await store.add([Increment(budget.key, budget.window, 0.1)], 1000.0)
        admitted, (count,) = await store.consume([budget], 1000.0)
        await store.aclose()
        assert admitted
        return count.current

    spent = 0.0
    for _ in range(10):
        spent += 0.1
    assert asyncio.run(scenario()) == spent == 0.9999999999999999


def test_a_key_of_another_type_fails_its_own_calls_only(shared_redis: RedisServer) -> None:
    # Someone resets a counter with SET: Redis refuses the script on that key (WRONGTYPE).
    # That says nothing of Redis itself: other keys' calls must not be skipped meanwhile.
    prefix = fresh_prefix()
    redis.Redis.from_url(shared_redis.url).set(f"{prefix}requests:60:key:bob", 5)
    store = RedisCounterStore(shared_redis.url, key_prefix=prefix, timeout=10.0)

    def check(key: str) -> WindowCheck:
        return WindowCheck(f"requests:60:key:{key}", 60.0, 5.0, 1.0, True)

    async def scenario() -> bool:
        with pytest.raises(LimitStoreError, match="WRONGTYPE"):
            await store.consume([check("bob")], 1000.0)
        admitted, _ = await store.consume([check("alice")], 1000.0)
        await store.aclose()
        return admitted

    assert asyncio.run(scenario())


def test_a_proxy_answering_ping_over_a_hung_redis_is_an_outage() -> None:
    # twemproxy and Envoy answer PING themselves: a proxy over a hung Redis answers it at
    # once, and must not make every call wait out the timeout instead of failing fast.
    timeout = 0.4

    async def scenario() -> list[float]:
        proxy = await asyncio.start_server(_proxy_over_a_hung_redis, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        store = RedisCounterStore(f"redis://127.0.0.1:{port}/0", timeout=timeout)
        timings = []
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(LimitStoreError):
                await store.add([Increment("k", 60.0, 1.0)], time.time())
            timings.append(time.monotonic() - started)
        await store.aclose()
        proxy.close()
        return timings

    first, *rest = asyncio.run(scenario())
    assert first < timeout * 1.75
    assert all(timing < timeout / 2 for timing in rest), (first, rest)


async def _proxy_over_a_hung_redis(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """RESP: answers PING and connection set-up itself; commands on keys go to a Redis that
    never answers."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while header := await reader.readline():
            args = []
            for _ in range(int(header[1:])):
                length = int((await reader.readline())[1:])
                args.append((await reader.readexactly(length + 2))[:-2].upper())
            if args[0] in (b"PING", b"CLIENT", b"HELLO", b"SELECT", b"AUTH"):
                writer.write(b"+PONG\r\n" if args[0] == b"PING" else b"+OK\r\n")
                await writer.drain()


def test_a_wall_clock_stepped_back_does_not_keep_redis_skipped(own_redis: RedisServer) -> None:
    # After an outage the store waits its retry interval by the monotonic clock: an NTP step
    # or a resumed VM moving the wall clock back an hour must not skip Redis for that hour.
    wall, monotonic = FakeClock(), FakeClock()
    config = outage_config(own_redis, "open")
    store = RedisCounterStore(
        config.redis_url, key_prefix=config.key_prefix, timeout=0.3, monotonic=monotonic
    )
    limiter = RateLimiter(config, store=store, clock=wall)

    async def scenario() -> list[tuple[bool, dict[str, str]]]:
        own_redis.stop()
        down = await outcome(limiter, request())  # let through (open), and Redis skipped 1 s
        own_redis.start()
        wall.advance(-3600)
        monotonic.advance(2)
        results = [down] + [await outcome(limiter, request()) for _ in range(6)]
        await limiter.aclose()
        return results

    down, *after = asyncio.run(scenario())
    assert down == (True, {})
    assert [admitted for admitted, _ in after] == [True] * 5 + [False]


def test_a_redis_url_redis_py_refuses_is_a_store_error_not_a_crash() -> None:
    # LimitsConfig refuses such a URL; a store built directly reports it as unreachable.
    store = RedisCounterStore("redis://127.0.0.1:6379x/0")
    check = WindowCheck("requests:60:key:k", 60.0, 1.0, 1.0, True)

    async def scenario() -> None:
        with pytest.raises(LimitStoreError, match="Redis URL"):
            await store.consume([check], 1000.0)
        await store.aclose()

    asyncio.run(scenario())


def test_an_unreachable_redis_is_not_contacted_at_construction() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = LimitsConfig(
        rules=(LimitRule(scope="key", requests_per_minute=1),),
        store="redis",
        redis_url=f"redis://127.0.0.1:{port}/0",
    )
    limiter = RateLimiter(config)

    async def scenario() -> list[tuple[str, str]]:
        headers = await limiter.admit(request())
        await limiter.aclose()
        return headers

    assert asyncio.run(scenario()) == []


class _ReplyLostProxy:
    """A TCP proxy to Redis. Armed, it lets the next EVALSHA through and, once Redis has run
    it and begun its reply, closes the client's connection instead of relaying the reply (a
    network blip, a proxy failing over, CLIENT KILL)."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.armed = False
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        upstream, to_upstream = await asyncio.open_connection("127.0.0.1", self.redis_port)
        lose_reply = asyncio.Event()

        async def requests() -> None:
            while data := await client.read(65536):
                if self.armed and b"EVALSHA" in data.upper():
                    self.armed = False
                    lose_reply.set()
                to_upstream.write(data)
                await to_upstream.drain()

        async def replies() -> None:
            while data := await upstream.read(65536):
                if lose_reply.is_set():
                    return  # Redis has run the script; its reply goes nowhere
                to_client.write(data)
                await to_client.drain()

        pumps = [asyncio.ensure_future(requests()), asyncio.ensure_future(replies())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            to_client.close()
            to_upstream.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


def test_a_reply_lost_after_redis_counted_is_not_counted_again(shared_redis: RedisServer) -> None:
    # redis-py sends a call again when its connection breaks, which may be after Redis ran
    # it: one request took two of three units, and one response's tokens were added twice.
    prefix = fresh_prefix()
    clock = FakeClock()

    async def scenario() -> list[bool]:
        proxy = _ReplyLostProxy(shared_redis.port)
        store = RedisCounterStore(await proxy.start(), key_prefix=prefix, monotonic=clock)
        rules = (LimitRule(scope="key", requests_per_minute=3),)
        limiter = RateLimiter(
            LimitsConfig(rules=rules, on_store_error="closed"), store=store, clock=clock
        )
        try:
            admitted = [(await outcome(limiter, request()))[0]]
            proxy.armed = True  # Redis counts the second request; its answer is lost
            admitted.append((await outcome(limiter, request()))[0])
            admitted.append((await outcome(limiter, request()))[0])
            await store.add([Increment("tokens:60:key:k", 60.0, 1.0)], clock())
            proxy.armed = True
            await store.add([Increment("tokens:60:key:k", 60.0, 1000.0)], clock())
        finally:
            await limiter.aclose()
            proxy.close()
        return admitted

    # Sent again on a new connection, the second call gets the first run's answer: the
    # third of three allowed requests still gets in, and no call fails.
    assert asyncio.run(scenario()) == [True, True, True]
    stored = redis.Redis(port=shared_redis.port).hget(prefix + "tokens:60:key:k", "c")
    assert stored is not None and float(stored) == 1001.0


def test_a_restart_between_requests_costs_no_request(own_redis: RedisServer) -> None:
    # The pooled socket died with the old server: the call is sent again on a new one.
    clock = FakeClock()
    limiter = outage_limiter(own_redis, "closed", clock)

    async def scenario() -> list[bool]:
        admitted = [(await outcome(limiter, request()))[0]]
        own_redis.stop()
        own_redis.start()
        admitted.append((await outcome(limiter, request()))[0])
        await limiter.aclose()
        return admitted

    assert asyncio.run(scenario()) == [True, True]


def test_a_store_built_before_a_fork_counts_each_workers_calls(shared_redis: RedisServer) -> None:
    # A host may build the gateway once and fork its workers (gunicorn --preload): their
    # calls must not pass for resends of one another's, which count nothing.
    prefix = fresh_prefix()
    store = RedisCounterStore(shared_redis.url, key_prefix=prefix)
    check = [WindowCheck("requests:60:key:k", 60.0, 1.0, 1.0, False)]

    async def one_request() -> bool:
        admitted, _ = await store.consume(check, FakeClock()())
        await store.add([Increment("tokens:60:key:k", 60.0, 100.0)], FakeClock()())
        await store.aclose()
        return admitted

    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status
        os._exit(0 if asyncio.run(one_request()) else 1)
    _, status = os.waitpid(child, 0)
    admitted = [os.waitstatus_to_exitcode(status) == 0, asyncio.run(one_request())]
    assert sorted(admitted) == [False, True]  # a limit of one request
    stored = redis.Redis(port=shared_redis.port).hget(prefix + "tokens:60:key:k", "c")
    assert stored is not None and float(stored) == 200.0


def test_the_redis_store_keeps_working_on_a_second_event_loop(shared_redis: RedisServer) -> None:
    # A gateway outlives one loop when a host's test client opens twice, or asyncio.run runs
    # twice: its Redis connections belong to the first loop and cannot serve the second.
    store = RedisCounterStore(shared_redis.url, key_prefix=fresh_prefix())
    check = WindowCheck("requests:60:key:a", 60.0, 3.0, 1.0)

    async def session() -> list[bool]:
        return [(await store.consume([check], 1_000_000.0))[0] for _ in range(2)]

    first = asyncio.run(session())
    second = asyncio.run(session())  # on a new event loop, the first one closed
    assert (first, second) == ([True, True], [True, False])
