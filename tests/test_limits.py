"""Rate limits and budgets on the in-memory store, with a hand-driven clock: no sleeping.

:class:`LimiterSemantics` is the contract every counter store must honour; this module runs it
on :class:`MemoryCounterStore`, ``test_limits_redis.py`` on Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from unittest.mock import Mock, create_autospec

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from messages_mw import ApiKeyConfig, AuthConfig, Gateway, GatewayConfig
from messages_mw.context import Principal, RequestContext
from messages_mw.errors import RateLimitError
from messages_mw.limit_stores import (
    CounterStore,
    Increment,
    LimitStoreError,
    MemoryCounterStore,
    WindowCheck,
    WindowCount,
    has_room,
    window_usage,
)
from messages_mw.limits import LimitRule, LimitsConfig, RateLimiter
from messages_mw.streaming import TokenUsage

StoreFactory = Callable[[], CounterStore]
Scenario = Callable[[RateLimiter], Awaitable[None]]

T0 = 1_755_779_520.0  # 2025-08-21T12:32:00Z, the start of a minute


class FakeClock:
    def __init__(self, now: float = T0 + 0.5) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(
    key_id: str | None = "alice",
    tags: Iterable[str] = (),
    *,
    tokens: int = 0,
    cost: float | None = None,
) -> RequestContext:
    context = RequestContext("req_test", "POST", "/v1/messages")
    context.principal = None if key_id is None else Principal(key_id)
    context.tags = list(tags)
    # Spread over all four counts: every one of them is charged.
    quarter, rest = divmod(tokens, 4)
    context.usage = TokenUsage(quarter + rest, quarter, quarter, quarter)
    context.cost = cost
    return context


async def outcome(limiter: RateLimiter, context: RequestContext) -> tuple[bool, dict[str, str]]:
    """(admitted, headers): the headers of the 429 when rejected."""
    try:
        return True, dict(await limiter.admit(context))
    except RateLimitError as exc:
        return False, exc.headers


async def admits(limiter: RateLimiter, context: RequestContext, count: int) -> list[bool]:
    return [(await outcome(limiter, context))[0] for _ in range(count)]


def run(
    make_store: StoreFactory,
    rules: Sequence[LimitRule],
    scenario: Scenario,
    clock: FakeClock | None = None,
    **options: Any,
) -> None:
    async def main() -> None:
        config = LimitsConfig(rules=tuple(rules), **options)
        limiter = RateLimiter(config, store=make_store(), clock=clock or FakeClock())
        try:
            await scenario(limiter)
        finally:
            await limiter.aclose()

    asyncio.run(main())


def per_key(**limits: Any) -> LimitRule:
    return LimitRule(scope="key", **limits)


def per_tag(**limits: Any) -> LimitRule:
    return LimitRule(scope="tag", **limits)


class LimiterSemantics:
    """What every store must give; a subclass provides the ``make_store`` fixture."""

    def test_requests_per_minute_count_each_key_separately(self, make_store: StoreFactory) -> None:
        async def scenario(limiter: RateLimiter) -> None:
            remaining = []
            for _ in range(3):
                headers = dict(await limiter.admit(request("alice")))
                assert headers["anthropic-ratelimit-requests-limit"] == "3"
                assert headers["anthropic-ratelimit-requests-reset"] == "2025-08-21T12:34:00Z"
                remaining.append(headers["anthropic-ratelimit-requests-remaining"])
            assert remaining == ["2", "1", "0"]
            with pytest.raises(RateLimitError) as caught:
                await limiter.admit(request("alice"))
            error = caught.value
            assert (error.status, error.error_type) == (429, "rate_limit_error")
            assert "3 requests per minute for key 'alice'" in error.message
            # the minute's three requests slide out over the next minute: room at 12:33:20
            assert error.headers["retry-after"] == "80"
            assert error.headers["anthropic-ratelimit-requests-remaining"] == "0"
            assert error.headers["anthropic-ratelimit-requests-reset"] == "2025-08-21T12:34:00Z"
            assert await admits(limiter, request("bob"), 3) == [True] * 3

        run(make_store, [per_key(requests_per_minute=3)], scenario)

    def test_retry_after_is_the_first_whole_second_with_room(
        self, make_store: StoreFactory
    ) -> None:
        clock = FakeClock(T0 + 17.25)

        async def scenario(limiter: RateLimiter) -> None:
            context = request()
            assert await admits(limiter, context, 6) == [True] * 5 + [False]
            for _ in range(3):
                ok, headers = await outcome(limiter, context)
                assert not ok
                retry_after = int(headers["retry-after"])
                assert retry_after >= 1
                clock.advance(retry_after - 1)
                assert not (await outcome(limiter, context))[0]
                clock.advance(1)
                assert (await outcome(limiter, context))[0]

        run(make_store, [per_key(requests_per_minute=5)], scenario, clock)

    def test_previous_minute_weighs_in_as_it_slides_out(self, make_store: StoreFactory) -> None:
        clock = FakeClock()

        async def scenario(limiter: RateLimiter) -> None:
            assert await admits(limiter, request(), 11) == [True] * 10 + [False]
            clock.advance(90)  # half-way through the next minute: about 5 of 10 still count
            assert await admits(limiter, request(), 6) == [True] * 5 + [False]

        run(make_store, [per_key(requests_per_minute=10)], scenario, clock)

    def test_tag_rules_count_each_tag_and_a_rejection_counts_nothing(
        self, make_store: StoreFactory
    ) -> None:
        async def scenario(limiter: RateLimiter) -> None:
            assert await admits(limiter, request(tags=["a"]), 3) == [True, True, False]
            assert await limiter.admit(request(tags=[])) == []
            # "a" is used up, so this is rejected and must not use up "b" either
            assert not (await outcome(limiter, request(tags=["a", "b"])))[0]
            assert await admits(limiter, request("bob", ["b", "b"]), 3) == [True, True, False]

        run(make_store, [per_tag(requests_per_minute=2)], scenario)

    def test_tags_from_key_counts_only_the_tags_a_key_brings(
        self, make_store: StoreFactory
    ) -> None:
        def team_a_member(key_id: str) -> RequestContext:
            context = request(key_id, ["team-a", "feature-x"])
            context.principal = Principal(key_id, tags=("team-a",))
            return context

        async def scenario(limiter: RateLimiter) -> None:
            # Another team's caller names team-a: neither counted against it nor stopped by it.
            assert await admits(limiter, request("mallory", ["team-a"]), 3) == [True] * 3
            assert await admits(limiter, team_a_member("alice"), 3) == [True, True, False]
            assert await admits(limiter, request("mallory", ["team-a"]), 1) == [True]
            # A tag the client chose ("feature-x") has no budget of its own here either.
            assert await admits(limiter, request("bob", ["feature-x"]), 3) == [True] * 3
            assert await admits(limiter, team_a_member("carol"), 1) == [False]

        run(make_store, [per_tag(requests_per_minute=2)], scenario, tags_from="key")

    def test_tags_from_request_counts_the_tags_a_client_sends(
        self, make_store: StoreFactory
    ) -> None:
        # The default: a tag sent by any caller is counted, and stops the key that owns it.
        async def scenario(limiter: RateLimiter) -> None:
            assert await admits(limiter, request("mallory", ["team-a"]), 2) == [True, True]
            member = request("alice", ["team-a"])
            member.principal = Principal("alice", tags=("team-a",))
            assert await admits(limiter, member, 1) == [False]

        run(make_store, [per_tag(requests_per_minute=2)], scenario)

    def test_a_specific_match_replaces_the_star_rule(self, make_store: StoreFactory) -> None:
        rules = [
            per_key(requests_per_minute=2),
            per_key(match="vip", requests_per_minute=5),
            per_tag(requests_per_minute=1),
            per_tag(match="batch", requests_per_minute=3),
        ]

        async def scenario(limiter: RateLimiter) -> None:
            assert await admits(limiter, request("alice"), 3) == [True, True, False]
            assert await admits(limiter, request("vip"), 6) == [True] * 5 + [False]
            assert await admits(limiter, request("bob", ["x"]), 2) == [True, False]
            assert await admits(limiter, request("carol", ["batch"]), 3) == [True, True, False]
            assert await admits(limiter, request("dave", ["batch"]), 2) == [True, False]

        run(make_store, rules, scenario)

    def test_requests_without_a_key_share_the_star_key_rule(self, make_store: StoreFactory) -> None:
        async def scenario(limiter: RateLimiter) -> None:
            assert await admits(limiter, request(None), 2) == [True, True]
            with pytest.raises(RateLimitError, match="for anonymous requests"):
                await limiter.admit(request(None))
            assert await admits(limiter, request("alice"), 1) == [True]

        run(make_store, [per_key(requests_per_minute=2)], scenario)

    def test_tokens_per_minute_count_what_was_recorded(self, make_store: StoreFactory) -> None:
        clock = FakeClock()

        async def scenario(limiter: RateLimiter) -> None:
            headers = dict(await limiter.admit(request()))
            assert headers == {
                "anthropic-ratelimit-tokens-limit": "100",
                "anthropic-ratelimit-tokens-remaining": "100",
                "anthropic-ratelimit-tokens-reset": "2025-08-21T12:32:01Z",
            }
            await limiter.record(request(tokens=60))
            headers = dict(await limiter.admit(request()))
            assert headers["anthropic-ratelimit-tokens-remaining"] == "40"
            assert headers["anthropic-ratelimit-tokens-reset"] == "2025-08-21T12:34:00Z"
            await limiter.record(request(tokens=50))  # crosses the limit: counted all the same
            with pytest.raises(RateLimitError, match="100 tokens per minute") as caught:
                await limiter.admit(request())
            assert caught.value.headers["anthropic-ratelimit-tokens-remaining"] == "0"
            # 110 tokens slide out of the next minute until under 100 remain: 12:33:05.45
            assert caught.value.headers["retry-after"] == "65"
            assert "x-should-retry" not in caught.value.headers  # a minute's wait: retry then
            assert await admits(limiter, request("bob"), 1) == [True]
            clock.advance(65)
            assert await admits(limiter, request(), 1) == [True]

        run(make_store, [per_key(tokens_per_minute=100)], scenario, clock)

    def test_a_per_minute_wait_never_says_not_to_retry(self, make_store: StoreFactory) -> None:
        # Filled at the first instant of a minute, a limit of one frees up only once that
        # minute has slid out of the next: 120 s, so retry-after says 121. The SDK should
        # sleep through that and retry, as it does for any per-minute limit.
        clock = FakeClock(T0)

        async def scenario(limiter: RateLimiter) -> None:
            assert await admits(limiter, request(), 1) == [True]
            with pytest.raises(RateLimitError) as caught:
                await limiter.admit(request())
            assert caught.value.headers["retry-after"] == "121"
            assert "x-should-retry" not in caught.value.headers

        run(make_store, [per_key(requests_per_minute=1)], scenario, clock)

    def test_spend_budget_holds_until_the_period_ends(self, make_store: StoreFactory) -> None:
        clock = FakeClock()
        period_end = (math.floor(clock.now / 3600) + 1) * 3600

        async def scenario(limiter: RateLimiter) -> None:
            assert await limiter.admit(request()) == []  # no request or token limit to report
            await limiter.record(request(cost=0.6))
            await limiter.record(request(cost=None))
            await limiter.admit(request())
            await limiter.record(request(cost=0.5))
            with pytest.raises(RateLimitError, match="spend budget of 1 per 3600 s") as caught:
                await limiter.admit(request())
            retry_after = int(caught.value.headers["retry-after"])
            assert retry_after == math.floor(period_end - clock.now) + 1
            # The SDK would sleep until the period ends before retrying on its own.
            assert caught.value.headers["x-should-retry"] == "false"
            clock.advance(retry_after - 2)
            assert not (await outcome(limiter, request()))[0]
            clock.advance(2)
            assert await admits(limiter, request(), 1) == [True]  # a fresh period, nothing kept

        run(make_store, [per_key(spend=1.0, spend_period_seconds=3600)], scenario, clock)

    def test_headers_report_the_tightest_limit(self, make_store: StoreFactory) -> None:
        rules = [
            per_key(requests_per_minute=10, tokens_per_minute=1000),
            per_tag(requests_per_minute=3, tokens_per_minute=5000),
        ]

        async def scenario(limiter: RateLimiter) -> None:
            headers = dict(await limiter.admit(request(tags=["ci"])))
            assert headers["anthropic-ratelimit-requests-limit"] == "3"
            assert headers["anthropic-ratelimit-requests-remaining"] == "2"
            assert headers["anthropic-ratelimit-tokens-limit"] == "1000"
            assert headers["anthropic-ratelimit-tokens-remaining"] == "1000"

        run(make_store, rules, scenario)

    def test_headers_report_the_limit_with_least_room_not_the_smallest(
        self, make_store: StoreFactory
    ) -> None:
        # Fresh counters make the smallest limit the tightest too; used counters tell them
        # apart: the tag's 5,000 has less room left than alice's 1,000 once bob spent 4,600.
        rules = [per_key(tokens_per_minute=1000), per_tag(tokens_per_minute=5000)]

        async def scenario(limiter: RateLimiter) -> None:
            await limiter.admit(request("bob", ["ci"]))
            await limiter.record(request("bob", ["ci"], tokens=4600))
            headers = dict(await limiter.admit(request("alice", ["ci"])))
            assert headers["anthropic-ratelimit-tokens-limit"] == "5000"
            assert headers["anthropic-ratelimit-tokens-remaining"] == "400"

        run(make_store, rules, scenario)

    def test_rules_on_one_counter_count_once_and_the_lowest_limit_holds(
        self, make_store: StoreFactory
    ) -> None:
        rules = [per_key(match="alice", requests_per_minute=limit) for limit in (5, 3, 4)]

        async def scenario(limiter: RateLimiter) -> None:
            assert await admits(limiter, request(), 4) == [True] * 3 + [False]

        run(make_store, rules, scenario)

    def test_a_host_whose_clock_lags_counts_into_the_newest_window(
        self, make_store: StoreFactory
    ) -> None:
        ahead, behind = FakeClock(T0 + 60.5), FakeClock(T0 + 59.5)
        config = LimitsConfig(rules=(per_key(requests_per_minute=3),))

        async def scenario() -> None:
            store = make_store()
            first = RateLimiter(config, store=store, clock=ahead)
            second = RateLimiter(config, store=store, clock=behind)
            assert await admits(first, request(), 2) == [True, True]
            assert await admits(second, request(), 2) == [True, False]
            assert await admits(first, request(), 1) == [False]
            await first.aclose()
            await second.aclose()

        asyncio.run(scenario())

    def test_a_clock_stepped_back_never_asks_for_a_wait_past_two_windows(
        self, make_store: StoreFactory
    ) -> None:
        # A resumed VM or an NTP step: the window counted into starts an hour ahead, and
        # room would seem an hour away.
        clock = FakeClock()

        async def scenario(limiter: RateLimiter) -> None:
            assert await admits(limiter, request(), 5) == [True] * 5
            clock.advance(-3600)
            admitted, headers = await outcome(limiter, request())
            assert not admitted and 0 < int(headers["retry-after"]) <= 121

        run(make_store, [per_key(requests_per_minute=5)], scenario, clock)

    def test_concurrent_admits_let_exactly_the_limit_through(
        self, make_store: StoreFactory
    ) -> None:
        async def scenario(limiter: RateLimiter) -> None:
            results = await asyncio.gather(*(outcome(limiter, request()) for _ in range(50)))
            assert sum(ok for ok, _ in results) == 10

        run(make_store, [per_key(requests_per_minute=10)], scenario)


class TestMemoryStore(LimiterSemantics):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        return MemoryCounterStore


def test_the_memory_store_counts_on_in_the_present_after_its_clock_stepped_back() -> None:
    # One process, one clock: the counts move back with it, so room comes as the minute
    # slides out, not when the clock is back where it was an hour ago.
    clock = FakeClock()

    async def scenario(limiter: RateLimiter) -> None:
        assert await admits(limiter, request(), 5) == [True] * 5
        clock.advance(-3600)
        assert await admits(limiter, request(), 1) == [False]
        clock.advance(121)  # two windows of the present, not an hour of the past again
        assert await admits(limiter, request(), 1) == [True]

    run(MemoryCounterStore, [per_key(requests_per_minute=5)], scenario, clock)


# Random traffic: admits, recorded usage and clock jumps, for two keys and some tags.
PROPERTY_RULES = (
    per_key(requests_per_minute=4, tokens_per_minute=100, spend=1.0, spend_period_seconds=300),
    per_tag(requests_per_minute=6),
)
_keys = st.sampled_from(["alice", "bob"])
_tags = st.sampled_from([(), ("a",), ("a", "b")])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), _keys, _tags),
        st.tuples(st.just("retry"), _keys, _tags),
        st.tuples(st.just("record"), _keys, st.integers(0, 80), st.sampled_from([None, 0.3])),
        st.tuples(st.just("advance"), st.floats(0, 100) | st.sampled_from([1.0, 30.0, 60.0])),
    ),
    max_size=60,
)
Log = list[tuple[float, str, str, Any]]


async def play(limiter: RateLimiter, clock: FakeClock, ops: Sequence[tuple[Any, ...]]) -> Log:
    """Run ``ops``; log (time, what, key, result). "retry" waits out a 429's retry-after."""
    log: Log = []
    for op in ops:
        if op[0] == "advance":
            clock.advance(op[1])
        elif op[0] == "record":
            await limiter.record(request(op[1], tokens=op[2], cost=op[3]))
            log.append((clock.now, "record", op[1], op[2]))
        else:
            result = await outcome(limiter, request(op[1], op[2]))
            log.append((clock.now, "admit", op[1], result))
            if op[0] == "retry" and not result[0]:
                clock.advance(int(result[1]["retry-after"]))
                log.append((clock.now, "retried", op[1], await outcome(limiter, request(op[1]))))
    return log


@settings(max_examples=150, deadline=None)
@given(operations)
def test_no_minute_ever_admits_more_than_the_limit(ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    log: Log = []

    async def scenario(limiter: RateLimiter) -> None:
        log.extend(await play(limiter, clock, ops))

    run(MemoryCounterStore, PROPERTY_RULES, scenario, clock)
    admitted: Counter[tuple[str, int]] = Counter()
    tokens: Counter[tuple[str, int]] = Counter()
    times: dict[str, list[float]] = {"alice": [], "bob": []}
    for at, what, key, result in log:
        minute = math.floor(at / 60)
        if what == "record":
            tokens[key, minute] += result
        elif result[0]:
            admitted[key, minute] += 1
            times[key].append(at)
            assert tokens[key, minute] < 100, "admitted with this minute's tokens used up"
        assert what != "retried" or result[0], "waiting out retry-after was not enough"
    assert all(count <= 4 for count in admitted.values())
    for moments in times.values():  # any 60 s span: at most twice the limit minus one
        assert all(later - moments[i] >= 60 for i, later in enumerate(moments[7:]))


class _GeneralPathStore(MemoryCounterStore):
    """The memory store, which the limiter does not recognise: it takes the general path."""


_SINGLE_LIMITS = (
    per_key(requests_per_minute=1),
    per_key(tokens_per_minute=50),
    per_key(spend=0.5, spend_period_seconds=300),
)
_ADMIT, _SPEND = ("admit", "alice", ()), ("record", "alice", 10, 0.3)
# Traffic that ends in a 429 under each kind of limit, so each refusal is compared.
_REFUSED: list[tuple[LimitRule, list[tuple[Any, ...]]]] = [
    (_SINGLE_LIMITS[0], [_ADMIT, _ADMIT, ("retry", "alice", ())]),
    (_SINGLE_LIMITS[1], [_ADMIT, ("record", "alice", 80, None), _ADMIT]),
    (_SINGLE_LIMITS[2], [_ADMIT, _SPEND, _SPEND, _ADMIT]),
]


def _refused_examples(test: Callable[..., None]) -> Callable[..., None]:
    for rule, ops in _REFUSED:
        test = example(rules=[rule], ops=ops)(test)
    return test


# Tight limits, so that random traffic meets 429s too; alone, and as the set PROPERTY_RULES
# makes (a key's three limits and each tag's own).
_RULE_SETS = [[rule] for rule in _SINGLE_LIMITS] + [list(PROPERTY_RULES)]


@settings(max_examples=200, deadline=None)
@given(rules=st.sampled_from(_RULE_SETS), ops=operations)
@_refused_examples
def test_the_memory_store_is_answered_as_any_store_is(
    rules: list[LimitRule], ops: list[tuple[Any, ...]]
) -> None:
    # The limiter calls the memory store directly, taking its usages as they come; through a
    # store it does not know, it takes the general path. The same traffic gets the same
    # answers, headers included.
    logs = []
    for store in (MemoryCounterStore, _GeneralPathStore):
        clock = FakeClock()
        log: Log = []

        async def scenario(limiter: RateLimiter, log: Log = log, clock: FakeClock = clock) -> None:
            log.extend(await play(limiter, clock, ops))

        run(store, rules, scenario, clock)
        logs.append(log)
    assert logs[0] == logs[1]
    if len(rules) == 1 and (rules[0], ops) in _REFUSED:
        assert any(what == "admit" and not result[0] for _, what, _, result in logs[0])


def test_config_decodes_and_rejects_mistakes() -> None:
    toml = b"""
    store = "memory"
    on_store_error = "closed"
    [[rules]]
    scope = "key"
    requests_per_minute = 60
    [[rules]]
    scope = "tag"
    match = "batch"
    spend = 5
    spend_period_seconds = 3600
    """
    config = msgspec.toml.decode(toml, type=LimitsConfig)
    assert config.rules[0] == LimitRule(scope="key", match="*", requests_per_minute=60)
    assert config.rules[1].spend == 5.0
    mistakes = [
        b'[[rules]]\nscope = "key"\nrequests_per_minte = 60',
        b'[[rules]]\nscope = "team"\nrequests_per_minute = 60',
        b'[[rules]]\nscope = "key"',
        b'[[rules]]\nscope = "key"\ntokens_per_minute = 0',
        b'[[rules]]\nscope = "key"\nspend = -1.0',
        b'[[rules]]\nscope = "key"\nmatch = ""\nspend = 1.0',
        b'on_store_error = "ajar"',
        b"store_timeout = 0",
        b"store_warning_interval = -1",
        # redis-py would refuse it at the first request, as a 500 despite on_store_error.
        b'store = "redis"\nredis_url = "127.0.0.1:6379"',
        # A port or an option redis-py cannot read: every request would be a 500.
        b'store = "redis"\nredis_url = "redis://127.0.0.1:6379x/0"',
        b'store = "redis"\nredis_url = "redis://127.0.0.1:6379/0?socket_timeout=abc"',
        # An option redis-py does not know: its parser passes it on, the connection refuses.
        b'store = "redis"\nredis_url = "redis://127.0.0.1:6379/0?bogus=1"',
        b"redis_max_connections = 0",
    ]
    for raw in mistakes:
        with pytest.raises(msgspec.ValidationError):
            msgspec.toml.decode(raw, type=LimitsConfig)
    with pytest.raises(ValueError, match="requests_per_minute must be at least 1"):
        LimitRule(scope="key", requests_per_minute=0)


def test_the_default_store_is_in_memory() -> None:
    config = LimitsConfig(rules=(per_key(requests_per_minute=1),))

    async def scenario() -> list[bool]:
        limiter = RateLimiter(config)
        results = await admits(limiter, request(), 2)
        await limiter.aclose()
        return results

    assert asyncio.run(scenario()) == [True, False]


def test_a_store_without_the_interface_is_rejected_at_construction() -> None:
    with pytest.raises(TypeError, match="consume"):
        RateLimiter(LimitsConfig(), store=object())  # type: ignore[arg-type]


def test_no_rules_means_no_store_calls() -> None:
    class Untouchable(MemoryCounterStore):
        async def consume(
            self, checks: Sequence[WindowCheck], now: float
        ) -> tuple[bool, list[WindowCount]]:
            raise AssertionError("consulted")

        async def add(self, increments: Sequence[Increment], now: float) -> None:
            raise AssertionError("consulted")

    async def scenario(limiter: RateLimiter) -> None:
        assert await limiter.admit(request("alice", ["a"])) == []
        await limiter.record(request("alice", ["a"], tokens=100, cost=1.0))

    run(Untouchable, [per_tag(match="other", requests_per_minute=1)], scenario)


def test_memory_store_forgets_idle_counters() -> None:
    store = MemoryCounterStore(sweep_interval=30)
    check = WindowCheck("k", 60, limit=5, cost=1)

    async def scenario() -> None:
        for index in range(100):
            await store.consume([WindowCheck(f"k{index}", 60, limit=5, cost=1)], T0)
        await store.add([Increment("budget", 3600, 1.0)], T0)
        assert len(store) == 101
        await store.consume([check], T0 + 121)
        assert len(store) == 2  # the fresh one, and the budget whose hour is not over

    asyncio.run(scenario())


class SwitchableStore(MemoryCounterStore):
    """A memory store that can be made unreachable, as Redis can."""

    down = False

    async def consume(
        self, checks: Sequence[WindowCheck], now: float
    ) -> tuple[bool, list[WindowCount]]:
        if self.down:
            raise LimitStoreError("connection refused")
        return await super().consume(checks, now)

    async def add(self, increments: Sequence[Increment], now: float) -> None:
        if self.down:
            raise LimitStoreError("connection refused")
        await super().add(increments, now)


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_store_outage_follows_the_policy_and_warns_once_per_interval(
    policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock, store = FakeClock(), SwitchableStore()
    rule = per_key(requests_per_minute=5, tokens_per_minute=100)
    config = LimitsConfig(rules=(rule,), on_store_error=policy, store_warning_interval=60)  # type: ignore[arg-type]

    async def scenario() -> list[tuple[bool, dict[str, str]]]:
        limiter = RateLimiter(config, store=store, clock=clock)
        await limiter.admit(request())
        store.down = True
        results = [await outcome(limiter, request()) for _ in range(3)]
        await limiter.record(request(tokens=10))  # dropped, with no exception
        clock.advance(61)
        results.append(await outcome(limiter, request()))
        store.down = False
        results.append(await outcome(limiter, request()))
        await limiter.aclose()
        return results

    with caplog.at_level(logging.INFO, logger="messages_mw.limits"):
        results = asyncio.run(scenario())
    *outage, recovered = results
    if policy == "open":
        assert outage == [(True, {})] * 4
    else:
        assert outage == [(False, {"retry-after": "1"})] * 4
    assert recovered[0] and recovered[1]["anthropic-ratelimit-requests-remaining"] == "3"
    levels = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in levels] == ["WARNING", "WARNING", "INFO"]
    assert "connection refused" in levels[0][1]
    assert ("let through" if policy == "open" else "rejected with 429") in levels[0][1]


def test_closed_policy_error_says_why() -> None:
    store = SwitchableStore()
    store.down = True
    config = LimitsConfig(rules=(per_key(requests_per_minute=1),), on_store_error="closed")

    async def scenario() -> None:
        with pytest.raises(RateLimitError, match="limit store is unavailable") as caught:
            await RateLimiter(config, store=store).admit(request())
        assert isinstance(caught.value.__cause__, LimitStoreError)

    asyncio.run(scenario())


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=6),
    cost=st.sampled_from([0.0, 1.0]),
    sliding=st.booleans(),
    steps=st.lists(
        # Some steps go back in time: a host whose clock lags the one that opened a window.
        st.tuples(st.floats(min_value=-30, max_value=50), st.floats(min_value=0, max_value=3)),
        min_size=1,
        max_size=40,
    ),
)
def test_the_memory_store_decides_as_window_usage_and_has_room_say(
    limit: int, cost: float, sliding: bool, steps: list[tuple[float, float]]
) -> None:
    # consume_now() writes the window arithmetic out for speed; window_usage() and has_room()
    # are the reference (the Redis store's script transcribes them). At every step, beside a
    # check that always has room, its decision, counts and usages must be theirs.
    checks = [WindowCheck("k", 60.0, float(limit), cost, sliding), WindowCheck("roomy", 60.0, 1e12)]
    only_asking = [dataclasses.replace(check, cost=0.0) for check in checks]
    store = MemoryCounterStore()
    now = T0
    for advance, usage in steps:
        now += advance
        _, before, _ = store.consume_now(only_asking, now)
        admitted, after, usages = store.consume_now(checks, now)
        counts = [WindowCount(*state) for state in before]
        assert admitted == all(map(has_room, checks, counts, [now, now]))
        added = cost if admitted else 0.0
        (start, previous, current), roomy = before
        assert after == [(start, previous, current + added), roomy]
        counts = [WindowCount(*state) for state in after]
        assert usages == [window_usage(c, n, now) for c, n in zip(checks, counts, strict=True)]
        asyncio.run(store.add([Increment("k", 60.0, usage)], now))


def _gateway_with_tag_rule(auth: AuthConfig, **options: Any) -> Gateway:
    limits = LimitsConfig(rules=(per_tag(requests_per_minute=1),), **options)
    return Gateway(GatewayConfig(provider="mock", auth=auth, limits=limits, usage_log=False))


def test_tag_rules_that_no_key_could_meet_are_refused_at_start_up() -> None:
    # tags_from = "key" with no key bringing a tag: the tag rules would silently never apply.
    untagged = AuthConfig(mode="static", keys=(ApiKeyConfig(id="a", key="k"),))
    for auth in (AuthConfig(), AuthConfig(mode="passthrough"), untagged):
        with pytest.raises(ValueError, match="no key has tags: the tag rules would never apply"):
            _gateway_with_tag_rule(auth, tags_from="key")
    # Fine: a key with tags, the default tags_from, or an auth hook, which may give tags.
    tagged = AuthConfig(mode="static", keys=(ApiKeyConfig(id="a", key="k", tags=("team-a",)),))
    _gateway_with_tag_rule(tagged, tags_from="key")
    _gateway_with_tag_rule(AuthConfig())
    limits = LimitsConfig(rules=(per_tag(requests_per_minute=1),), tags_from="key")
    config = GatewayConfig(provider="mock", limits=limits, usage_log=False)
    Gateway(config, auth=lambda request: Principal("hooked", tags=("team-a",)))


def test_key_rules_that_no_key_could_meet_are_refused_at_start_up() -> None:
    # A mistyped key id would leave that key under the "*" limits without a word.
    static = AuthConfig(mode="static", keys=(ApiKeyConfig(id="team-a", key="sk-a"),))

    def gateway(auth_config: AuthConfig, match: str, **hooks: Any) -> Gateway:
        rules = (
            LimitRule(scope="key", requests_per_minute=1000),
            LimitRule(scope="key", match=match, requests_per_minute=1),
        )
        limits = LimitsConfig(rules=rules)
        config = GatewayConfig(provider="mock", auth=auth_config, limits=limits)
        return Gateway(config, **hooks)

    for auth, match in (
        (static, "team_a"),
        (AuthConfig(), "team-a"),
        (AuthConfig(mode="passthrough"), "team-a"),
    ):
        with pytest.raises(ValueError, match=r"limits.rules\[1\].match: no key has the id"):
            gateway(auth, match)
    # Fine: a configured id, a client key's id under passthrough, or an auth hook's ids.
    gateway(static, "team-a")
    gateway(AuthConfig(mode="passthrough"), "client:0123456789ab")
    gateway(AuthConfig(), "hooked", auth=lambda request: Principal("hooked"))


class _HostLimiter:
    """A host's own limiter: what the policy calls, and no LimitsConfig."""

    checks_prices = False
    counts_usage = False

    async def admit(self, context: RequestContext) -> list[tuple[str, str]]:
        return []

    def needs_price(self, context: RequestContext) -> bool:
        return False

    async def record(self, context: RequestContext) -> None:
        return None

    async def aclose(self) -> None:
        return None


def test_a_host_limiter_without_a_config_is_accepted() -> None:
    config = GatewayConfig(provider="mock", usage_log=False)
    gateway = Gateway(config, limiter=_HostLimiter())  # type: ignore[arg-type]
    assert gateway.config is config


def test_a_host_limiter_missing_what_the_policy_uses_is_refused_at_start_up() -> None:
    class Partial:
        async def admit(self, context: RequestContext) -> list[tuple[str, str]]:
            return []

    config = GatewayConfig(provider="mock", usage_log=False)
    with pytest.raises(
        TypeError, match="limiter has no record, needs_price, aclose, checks_prices"
    ):
        Gateway(config, limiter=Partial())  # type: ignore[arg-type]


def test_a_host_limiter_with_plain_methods_is_refused_at_start_up() -> None:
    # admit, record and aclose are awaited: plain defs would fail every request with a 500.
    class Plain(_HostLimiter):
        def admit(self, context: RequestContext) -> list[tuple[str, str]]:  # type: ignore[override]
            return []

        def aclose(self) -> None:  # type: ignore[override]
            return None

    config = GatewayConfig(provider="mock", usage_log=False)
    with pytest.raises(TypeError, match=r"limiter\.admit, limiter\.aclose must be async def"):
        Gateway(config, limiter=Plain())  # type: ignore[arg-type]


def test_limiter_mocks_and_late_failing_properties_pass_the_start_up_check() -> None:
    class LateFlag(_HostLimiter):
        @property
        def checks_prices(self) -> bool:  # type: ignore[override]
            raise RuntimeError("not connected yet")

    config = GatewayConfig(provider="mock", usage_log=False)
    for limiter in (
        Mock(spec=RateLimiter),
        create_autospec(RateLimiter, instance=True),
        LateFlag(),
    ):
        Gateway(config, limiter=limiter)


def test_refused_requests_and_budgets_only_asked_about_store_no_counters() -> None:
    # Every tag a client names gets counters under tag rules: a refused request, or a spend
    # budget only asked about, must not keep them (for up to two budget periods) in memory.
    store = MemoryCounterStore()
    rules = (per_key(requests_per_minute=1), per_tag(spend=10.0))
    limiter = RateLimiter(LimitsConfig(rules=rules), store=store, clock=FakeClock(T0))

    async def scenario() -> list[bool]:
        answers = []
        for i in range(50):
            tags = [f"t{i}-{j}" for j in range(16)]
            answers += await admits(limiter, request("tenant", tags), 1)
        return answers

    assert asyncio.run(scenario()) == [True] + [False] * 49
    assert len(store) == 1  # the key's request counter, which the one admitted request raised
