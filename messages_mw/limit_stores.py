"""Where the rate limiter keeps its counters: one small interface, two implementations.

A counter is a pair of adjacent fixed windows (``previous`` and ``current``) named by a key.
:class:`MemoryCounterStore` keeps them in this process (one event loop); :class:`RedisCounterStore`
keeps them in Redis, so every worker and host pointed at the same Redis shares them. Both make
the same decisions with the same arithmetic: :func:`window_usage` and :func:`has_room` are the
reference, which the memory store writes out inline and the Redis store's Lua transcribes; the
test suite holds the memory store to them and runs the same scenarios against both stores.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "CounterStore",
    "Increment",
    "LimitStoreError",
    "MemoryCounterStore",
    "RedisCounterStore",
    "WindowCheck",
    "WindowCount",
    "WindowState",
    "has_room",
    "window_usage",
]


class LimitStoreError(Exception):
    """The counter store could not answer (unreachable, timed out, or refused the command).

    Never sent to a client: the rate limiter turns it into its ``on_store_error`` policy.
    """


@dataclass(frozen=True, slots=True)
class WindowCheck:
    """One counter to test against ``limit`` and, when every check in the call passes, to
    raise by ``cost``.

    ``cost`` 1 counts a request (it passes while ``usage + 1 <= limit``); ``cost`` 0 only
    asks whether a budget is used up (it passes while ``usage < limit``). ``sliding`` weights
    the previous window into the usage (rates); without it the usage is the current fixed
    window alone (budgets that reset at a known time).
    """

    key: str
    window: float
    limit: float
    cost: float = 0.0
    sliding: bool = True


class WindowCount(msgspec.Struct, frozen=True):
    """A counter as the store saw it: the current window's start time and both windows' totals
    (after this call's own cost, if it was admitted)."""

    # A struct rather than a frozen dataclass: the Redis store builds one per limit per
    # request, and a frozen dataclass costs six times as much to build (a named tuple three
    # times). The memory store's per-request path returns plain tuples (WindowState).
    start: float
    previous: float
    current: float


# A counter's state as a tuple: (start, previous, current), as in WindowCount. The memory
# store's per-request path returns these: a tuple costs half what a struct does to build.
WindowState = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Increment:
    """Add ``amount`` to the current window of counter ``key`` (window length ``window``)."""

    key: str
    window: float
    amount: float


@runtime_checkable
class CounterStore(Protocol):
    """Shared window counters. Each method is one atomic step (one round trip for Redis).

    Both methods raise :class:`LimitStoreError` when the store cannot answer. On cancellation
    the step may or may not have been applied.
    """

    async def consume(
        self, checks: Sequence[WindowCheck], now: float
    ) -> tuple[bool, list[WindowCount]]:
        """If every check has room at ``now``, add each check's cost; either way return
        whether it did and each counter's state, in the order of ``checks``. Checks must name
        distinct keys."""
        ...

    async def add(self, increments: Sequence[Increment], now: float) -> None:
        """Add each amount unconditionally (usage learnt after the fact may overshoot)."""
        ...

    async def aclose(self) -> None:
        """Release connections; a later call reopens them."""
        ...


def window_usage(check: WindowCheck, count: WindowCount, now: float) -> float:
    """The usage ``check`` is held to at ``now``: the current window, plus the previous one
    weighted by how much of it still lies within one window length of ``now``."""
    if not check.sliding or not count.previous:
        return count.current
    # The previous window's share, clamped to [0, 1] (a clock that lags may give more than 1).
    weight = 1.0 - (now - count.start) / check.window
    if weight <= 0.0:
        return count.current
    return count.previous * (weight if weight < 1.0 else 1.0) + count.current


def has_room(check: WindowCheck, count: WindowCount, now: float) -> bool:
    """Whether ``check`` passes at ``now`` against ``count`` (before its own cost)."""
    used = window_usage(check, count, now)
    return used < check.limit and used + check.cost <= check.limit


@dataclass(slots=True)
class _Counter:
    index: int
    previous: float
    current: float
    window: float

    def roll_to(self, index: int) -> None:
        """Move to the window ``index``: forward as time passes. Backward only when this
        process's clock stepped back by more than a window, counts kept: made in the present
        whatever the clock said, and left in a window that ends an hour ahead, say, they
        would refuse every request for that hour. A smaller step keeps counting into the
        newer window, as Redis does for a host whose clock lags (its keys' expiry ends a
        window left ahead within two); moved back to the window before, its counts would
        weigh as an older window's, and let a second burst through."""
        if index == self.index + 1:
            self.index, self.previous, self.current = index, self.current, 0.0
        elif index > self.index + 1:
            self.index, self.previous, self.current = index, 0.0, 0.0
        elif index < self.index - 1:
            self.index = index


class MemoryCounterStore:
    """Counters in this process, for one event loop (each call completes without awaiting,
    so concurrent requests cannot interleave inside a check).

    Memory stays bounded: counters idle for two windows are dropped, swept at most once per
    ``sweep_interval`` seconds of the caller's clock.
    """

    def __init__(self, *, sweep_interval: float = 60.0) -> None:
        self._counters: dict[str, _Counter] = {}
        self._sweep_interval = sweep_interval
        self._next_sweep = -math.inf

    def __len__(self) -> int:
        """How many counters are held (expired ones linger until the next sweep)."""
        return len(self._counters)

    async def consume(
        self, checks: Sequence[WindowCheck], now: float
    ) -> tuple[bool, list[WindowCount]]:
        admitted, windows, _ = self.consume_now(checks, now)
        return admitted, [WindowCount(*window) for window in windows]

    def consume_now(
        self, checks: Sequence[WindowCheck], now: float
    ) -> tuple[bool, list[WindowState], list[float]]:
        """:meth:`consume` without the coroutine (this store never waits, and the rate limiter
        calls it on every request): each counter's state as a plain tuple, and also its usage
        after the call (:func:`window_usage`), which the limiter's headers report.

        One pass with the window arithmetic written out: with a key's and its tags' limits,
        a request meets nine counters or more, and a function call (or a struct) per counter
        at each step cost more than the rest of the policy together.
        """
        if now >= self._next_sweep:
            self._sweep(now)
        get = self._counters.get
        windows: list[WindowState] = []
        usages: list[float] = []
        # The checks with a cost, to add it once all have passed: position, counter, share.
        costly: list[tuple[int, WindowCheck, _Counter | None, float]] = []
        admitted = True
        for check in checks:
            window = check.window
            index = math.floor(now / window)
            counter = get(check.key)
            if counter is None:
                # Stored only once it counts something: a refused request, or a budget only
                # asked about, stores none (a client naming new tags on every request must
                # not grow the store).
                previous = current = 0.0
            else:
                if index != counter.index:
                    counter.roll_to(index)
                index, previous, current = counter.index, counter.previous, counter.current
            start = index * window
            # window_usage(), inline: the previous window's weighted share, plus the current.
            share = 0.0
            if previous and check.sliding:
                weight = 1.0 - (now - start) / window
                if weight > 0.0:
                    share = previous * (weight if weight < 1.0 else 1.0)
            used = share + current
            # has_room(), inline.
            if admitted and not (used < check.limit and used + check.cost <= check.limit):
                admitted = False
            if check.cost:
                costly.append((len(windows), check, counter, share))
            windows.append((start, previous, current))
            usages.append(used)
        if admitted:
            for at, check, counter, share in costly:
                if counter is None:
                    counter = self._counter(check.key, check.window, now)
                counter.current += check.cost
                start, previous, _ = windows[at]
                windows[at] = (start, previous, counter.current)
                usages[at] = share + counter.current
        return admitted, windows, usages

    async def add(self, increments: Sequence[Increment], now: float) -> None:
        for increment in increments:  # the limiter itself calls add_now()
            self.add_now(((increment.key, increment.window),), increment.amount, now)

    def add_now(self, counters: Sequence[tuple[str, float]], amount: float, now: float) -> None:
        """:meth:`add` without the coroutine: ``amount`` to each counter, named by its key and
        window length."""
        if now >= self._next_sweep:
            self._sweep(now)
        for key, window in counters:
            counter = self._counter(key, window, now)
            index = math.floor(now / window)
            if index != counter.index:
                counter.roll_to(index)
            counter.current += amount

    async def aclose(self) -> None:
        """Nothing to release; the counters are kept."""

    def _counter(self, key: str, window: float, now: float) -> _Counter:
        counter = self._counters.get(key)
        if counter is None:
            counter = _Counter(math.floor(now / window), 0.0, 0.0, window)
            self._counters[key] = counter
        return counter

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_interval
        expired = [
            key
            for key, counter in self._counters.items()
            if (counter.index + 2) * counter.window <= now
        ]
        for key in expired:
            del self._counters[key]


# How long Redis remembers a call, so that redis-py's immediate resend of it changes nothing.
_CALL_MEMORY_MS = 10_000

# Loads a counter (KEYS[i], window length) and moves it forward to the window holding ``now``,
# as ``_Counter.roll_to`` does (but never backwards: a host whose clock lags counts into the
# newest window another host opened); numbers come back as strings because Redis truncates
# Lua numbers to integers in replies.
_LUA_LOAD = f"""
local now = tonumber(ARGV[1])
local CALL_MEMORY_MS = {_CALL_MEMORY_MS}
local function load(key, window)
  local index = math.floor(now / window)
  local stored = redis.call('HMGET', key, 'w', 'p', 'c')
  local w = tonumber(stored[1]) or index
  local p = tonumber(stored[2]) or 0
  local c = tonumber(stored[3]) or 0
  if index == w + 1 then
    w, p, c = index, c, 0
  elseif index > w + 1 then
    w, p, c = index, 0, 0
  end
  return w, p, c
end
-- Lua's tostring keeps 14 digits: a spend of 0.99999999999999989 would come back as 1, a
-- budget of 1 used up. 17 digits give the double back exactly.
local function exact(number)
  return string.format('%.17g', number)
end
local function save(key, window, w, p, c)
  redis.call('HSET', key, 'w', w, 'p', p, 'c', c)
  redis.call('PEXPIRE', key, math.ceil(window * 2000))
end
"""

# KEYS[1] names the call (see RedisCounterStore._run); the counters are KEYS[2] on. ARGV:
# now, then (window, limit, cost, sliding) per counter. Mirrors MemoryCounterStore.consume.
# The same call run again (redis-py resends it when the connection broke before the reply
# came) answers as the first run did and counts nothing more.
_LUA_CONSUME = (
    _LUA_LOAD
    + """
local first = redis.call('GET', KEYS[1])
local admitted = 1
local rows = {}
for i = 2, #KEYS do
  local at = 2 + (i - 2) * 4
  local window, limit = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local cost, sliding = tonumber(ARGV[at + 2]), ARGV[at + 3] == '1'
  local w, p, c = load(KEYS[i], window)
  local used = c
  if sliding then
    local weight = math.min(1, math.max(0, 1 - (now - w * window) / window))
    used = p * weight + c
  end
  if not (used < limit and used + cost <= limit) then
    admitted = 0
  end
  rows[i] = {w, p, c, window, cost}
end
if first then
  admitted = tonumber(first)
else
  redis.call('SET', KEYS[1], admitted, 'PX', CALL_MEMORY_MS)
end
local reply = {admitted}
for i = 2, #KEYS do
  local row = rows[i]
  if admitted == 1 and row[5] > 0 and not first then
    row[3] = row[3] + row[5]
    save(KEYS[i], row[4], row[1], row[2], row[3])
  end
  table.insert(reply, exact(row[1] * row[4]))
  table.insert(reply, exact(row[2]))
  table.insert(reply, exact(row[3]))
end
return reply
"""
)

# KEYS[1] names the call, the counters are KEYS[2] on; ARGV: now, then (window, amount) per
# counter. Run again, the same call adds nothing.
_LUA_ADD = (
    _LUA_LOAD
    + """
if redis.call('SET', KEYS[1], 1, 'NX', 'PX', CALL_MEMORY_MS) then
  for i = 2, #KEYS do
    local at = 2 + (i - 2) * 2
    local window, amount = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
    local w, p, c = load(KEYS[i], window)
    save(KEYS[i], window, w, p, c + amount)
  end
end
return 0
"""
)


class RedisCounterStore:
    """Counters in Redis, shared by every process using the same ``url`` and ``key_prefix``.

    Each call is one ``EVALSHA`` of a Lua script, so a check and its increment are atomic
    across workers and hosts. Redis remembers each call for 10 s (a key under the prefix,
    ``call:`` and a random name): redis-py sends a call again when its connection breaks,
    which may be after Redis ran it, and the repeat then counts nothing. Window boundaries
    come from the callers' clocks: keep hosts in sync (NTP); skew shifts a host's windows by
    that much. All of a call's keys go to one Redis, so Redis Cluster is not supported.

    Connections open at the first call; at most ``max_connections`` calls run at a time, and
    further calls queue for their turn (a burst in this process says nothing about Redis).
    When Redis does not answer within ``timeout`` seconds (connect and reply each), the call
    raises :class:`LimitStoreError`, and calls in the next ``retry_interval`` seconds (by the
    ``monotonic`` clock) fail at once instead of waiting on a dead host; the first call after
    that tries again, so the store comes back by itself with Redis (scripts are loaded again
    if Redis lost them). A call that timed out first reads one of its keys again, for at most
    a quarter of ``timeout``: if Redis answers, the timeout was this process's own (its
    event loop stalled past the deadline) and only that call fails.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: str = "messages_mw:",
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        max_connections: int = 50,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "RedisCounterStore needs redis-py: pip install 'messages-mw[redis]'"
            ) from exc
        self._url = url
        self._prefix = key_prefix
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._max_connections = max_connections
        self._monotonic = monotonic
        self._retry_at = -math.inf
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._turns: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one its connections are in
        self._name = uuid.uuid4().hex
        self._calls = itertools.count()

    async def consume(
        self, checks: Sequence[WindowCheck], now: float
    ) -> tuple[bool, list[WindowCount]]:
        args: list[str] = [repr(now)]
        for check in checks:
            sliding = "1" if check.sliding else "0"
            args += [repr(check.window), repr(check.limit), repr(check.cost), sliding]
        reply = await self._run("consume", [check.key for check in checks], args)
        values = [float(value) for value in reply[1:]]
        counts = [WindowCount(*values[i : i + 3]) for i in range(0, len(values), 3)]
        return reply[0] == 1, counts

    async def add(self, increments: Sequence[Increment], now: float) -> None:
        args: list[str] = [repr(now)]
        for increment in increments:
            args += [repr(increment.window), repr(increment.amount)]
        await self._run("add", [increment.key for increment in increments], args)

    async def aclose(self) -> None:
        client, self._client, self._scripts = self._client, None, {}
        self._turns = None
        if client is not None:
            await client.aclose()

    async def _run(self, script: str, keys: list[str], args: list[str]) -> Any:
        from redis.exceptions import RedisError, ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            scripts, turns = self._connect()
        except ValueError as exc:  # a URL redis-py refuses (checked in LimitsConfig too)
            raise LimitStoreError(f"Redis URL: {exc}") from exc
        # The turn is taken before the outage check: a call that queued behind calls which
        # found Redis down fails at once instead of waiting out a timeout of its own.
        async with turns:
            # The monotonic clock: a wall clock stepped back must not keep Redis skipped.
            wait = self._retry_at - self._monotonic()
            if wait > 0:
                raise LimitStoreError(f"Redis was unreachable; next attempt in {wait:.1f} s")
            # A name for this call, unique across processes and hosts (the process id too: a
            # host may build the gateway once and fork its workers): run twice, the scripts
            # count it once.
            call = f"{self._prefix}call:{self._name}:{os.getpid()}:{next(self._calls)}"
            try:
                return await scripts[script]([call, *(self._prefix + key for key in keys)], args)
            except RedisTimeoutError as exc:
                if await self._answers_at_once(self._prefix + keys[0]):
                    raise LimitStoreError(f"Redis answers, but {exc}") from exc
                self._retry_at = self._monotonic() + self._retry_interval
                raise LimitStoreError(f"Redis: {exc}") from exc
            except ResponseError as exc:
                # Redis answered, refusing this call (a key of another type under the
                # prefix: WRONGTYPE): the next call may well succeed, and costs no timeout.
                raise LimitStoreError(f"Redis refused the call: {exc}") from exc
            except (RedisError, OSError) as exc:
                self._retry_at = self._monotonic() + self._retry_interval
                raise LimitStoreError(f"Redis: {exc}") from exc

    async def _answers_at_once(self, key: str) -> bool:
        """Whether Redis answers a read of ``key`` within a quarter of the timeout, after a
        call timed out. The timeouts run on this process's event loop, which runs due timers
        before it reads sockets: a loop stalled past a deadline (a cold gateway starting
        thousands of requests at once) times a call out with Redis's answer already waiting.
        That is no outage, and must not skip Redis for ``retry_interval``. A read of one of
        the call's own keys, not a PING: a proxy (twemproxy, Envoy) answers PING itself,
        whatever the Redis behind it does. A Redis that does not answer now costs the call a
        quarter of the timeout more."""
        from redis.exceptions import RedisError

        if self._client is None:
            return False
        try:
            async with asyncio.timeout(self._timeout / 4):
                await self._client.exists(key)
        except (RedisError, OSError, TimeoutError):
            return False
        return True

    def _connect(self) -> tuple[dict[str, AsyncScript], asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A store may outlive its event loop (a host's test client, asyncio.run twice):
            # the old loop's connections cannot be used, nor closed, from this one.
            self._client, self._scripts, self._turns, self._loop = None, {}, None, loop
        if self._client is None or self._turns is None:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError

            # One immediate retry on a broken connection (a pooled socket Redis closed while
            # restarting), none on timeouts: an outage should cost one timeout, not several.
            # The connection may also have broken after Redis ran the script, before its
            # reply came: the scripts remember each call, so the resend counts nothing twice.
            # Calls take turns (below), so one never waits for a connection from the pool.
            pool = BlockingConnectionPool.from_url(
                self._url,
                # RESP2, which every Redis and proxy speaks: redis-py 8 opens with HELLO 3,
                # which Redis before 6 and proxies such as twemproxy refuse (every call).
                protocol=2,
                max_connections=self._max_connections,
                timeout=None,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
            )
            self._client = Redis.from_pool(pool)
            self._scripts = {
                "consume": self._client.register_script(_LUA_CONSUME),
                "add": self._client.register_script(_LUA_ADD),
            }
            self._turns = asyncio.Semaphore(self._max_connections)
        return self._scripts, self._turns


def redis_url_parses(url: str) -> bool:
    """Whether redis-py accepts ``url`` (port, database and options), so that a mistake fails
    at start-up; ``True`` when redis-py is not installed (the store reports that itself).

    A connection object is built from it, without connecting: redis-py's parser passes an
    option it does not know on as an argument, which only the connection refuses."""
    try:
        from redis.asyncio import ConnectionPool
    except ImportError:
        return True
    try:
        pool = ConnectionPool.from_url(url)
        pool.make_connection()  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return False
    return True
