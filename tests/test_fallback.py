"""The fallback engine: retries, backoff, the circuit breaker and stream peeking, all offline.

Upstreams are scripted ``send`` functions returning hand-built ``ProviderResponse`` objects;
sleeps are recorded instead of slept, and the clock is a number the test moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages_mw.context import Attempt
from messages_mw.errors import (
    GatewayError,
    InvalidRequestError,
    NoFreeConnectionError,
    OverloadedError,
    UnsupportedByProviderError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from messages_mw.fallback import (
    BreakerPolicy,
    ChainResult,
    CircuitBreaker,
    HeldStream,
    RetryPolicy,
    Target,
    backoff_delay,
    retry_after_seconds,
    run_chain,
)
from messages_mw.providers.base import ProviderResponse
from messages_mw.streaming import TokenUsage

from .servers import error_json, sse, text_stream_events

PRIMARY = Target("anthropic", "claude-sonnet-4-6")
SECONDARY = Target("backup", "claude-sonnet-4-6")
TERTIARY = Target("backup", "claude-haiku-4-5")
SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8")]
JSON_HEADERS = [("content-type", "application/json")]
OVERLOADED = error_json("overloaded_error", "Overloaded")
# Two tries per target (one retry), so that the tests see same-target retries.
NO_JITTER = RetryPolicy(attempts_per_target=2, jitter=0.0)

_Outcome = ProviderResponse | BaseException


@dataclass
class Closes:
    """A response's ``close`` that counts its calls."""

    count: int = 0

    async def __call__(self) -> None:
        self.count += 1


def reply(
    status: int, body: bytes = b"{}", headers: Sequence[tuple[str, str]] = ()
) -> ProviderResponse:
    return ProviderResponse(status, [*JSON_HEADERS, *headers], body=body, close=Closes())


class Hang:
    """A point where a scripted upstream (or sleep) waits for good: ``reached`` is set once
    something waits there, so that a test can act at that moment instead of after a guess."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()

    async def wait(self) -> None:
        self.reached.set()
        await asyncio.Event().wait()


def streamed(chunks: Sequence[bytes | BaseException | Hang | None]) -> ProviderResponse:
    """A 200 stream of ``chunks``; an exception is raised where it stands, ``None`` or a
    :class:`Hang` hangs."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            if chunk is None:
                await asyncio.Event().wait()
            elif isinstance(chunk, Hang):
                await chunk.wait()
            elif isinstance(chunk, BaseException):
                raise chunk
            else:
                yield chunk

    return ProviderResponse(200, list(SSE_HEADERS), chunks=body(), close=Closes())


def closes(response: ProviderResponse) -> int:
    assert isinstance(response.close, Closes)
    return response.close.count


def error_event(error_type: str = "overloaded_error", message: str = "Overloaded") -> bytes:
    return sse("error", {"type": "error", "error": {"type": error_type, "message": message}})


MESSAGE_START = text_stream_events([])[0]
GOOD_STREAM = text_stream_events(["Hello", " world"])


@dataclass
class Upstreams:
    """A ``send`` that plays each target's scripted outcomes in order and logs the calls."""

    script: dict[str, list[_Outcome]]
    clock: FakeClock | None = None
    seconds_per_call: float = 0.0
    calls: list[str] = field(default_factory=list)

    async def __call__(self, target: Target) -> ProviderResponse:
        self.calls.append(target.name)
        if self.clock is not None:
            self.clock.now += self.seconds_per_call
        outcome = self.script[target.name].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sleeps:
    """Records delays instead of sleeping; moves the fake clock on by each one."""

    clock: FakeClock = field(default_factory=FakeClock)
    delays: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.now += delay


async def achain(
    targets: Sequence[Target],
    send: Callable[[Target], Awaitable[ProviderResponse]],
    *,
    policy: RetryPolicy = NO_JITTER,
    breaker: CircuitBreaker | None = None,
    stream: bool = False,
    sleeps: Sleeps | None = None,
    attempts: list[Attempt] | None = None,
) -> ChainResult:
    sleeps = sleeps or Sleeps()
    return await run_chain(
        targets,
        send,
        policy=policy,
        breaker=breaker,
        stream=stream,
        sleep=sleeps,
        clock=sleeps.clock,
        random=lambda: 0.5,
        attempts=attempts,
    )


def chain(
    targets: Sequence[Target], send: Callable[[Target], Awaitable[ProviderResponse]], **options: Any
) -> ChainResult:
    """``run_chain`` in a fresh event loop, for answers that need no further reading."""
    return asyncio.run(achain(targets, send, **options))


def chain_and_read(
    targets: Sequence[Target], send: Callable[[Target], Awaitable[ProviderResponse]], **options: Any
) -> tuple[ChainResult, list[bytes]]:
    """Run the chain and read the chosen stream to its end in the same loop, then close it."""

    async def scenario() -> tuple[ChainResult, list[bytes]]:
        result = await achain(targets, send, stream=True, **options)
        try:
            assert result.response.chunks is not None
            return result, [chunk async for chunk in result.response.chunks]
        finally:
            await result.response.close()

    return asyncio.run(scenario())


def cancelled_at(
    hang: Hang,
    targets: Sequence[Target],
    send: Callable[[Target], Awaitable[ProviderResponse]],
    policy: RetryPolicy,
    **options: Any,
) -> None:
    """Run a streaming ``run_chain`` and cancel it, as a client leaving, once it waits at
    ``hang`` (failing if it never gets there)."""

    async def scenario() -> None:
        task = asyncio.ensure_future(
            run_chain(targets, send, policy=policy, breaker=None, stream=True, **options)
        )
        await asyncio.wait_for(hang.reached.wait(), 5)
        assert not task.done(), "the chain ended while waiting"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def summary(attempts: list[Attempt]) -> list[tuple[str, int | None, str | None]]:
    return [(a.target, a.status, a.error_type) for a in attempts]


def test_target_name_and_config_decoding() -> None:
    assert PRIMARY.name == "anthropic/claude-sonnet-4-6"
    assert msgspec.toml.decode(b'provider = "p"\nmodel = "m"', type=Target) == Target("p", "m")
    policy = msgspec.toml.decode(
        b"attempts_per_target = 3\nretry_statuses = [529]", type=RetryPolicy
    )
    assert policy.attempts_per_target == 3 and policy.retry_statuses == (529,)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.toml.decode(b"attempts = 3", type=RetryPolicy)
    with pytest.raises(msgspec.ValidationError, match="failure_threshold"):
        msgspec.toml.decode(b"failure_threshold = 0", type=BreakerPolicy)


@pytest.mark.parametrize(
    "options",
    [
        {"attempts_per_target": 0},
        {"base_delay": -1.0},
        {"max_delay": float("inf")},
        {"jitter": 1.5},
        {"max_retry_after": float("nan")},
        {"deadline": 0.0},
        {"retry_statuses": (200, 529)},
    ],
)
def test_bad_retry_policies_are_rejected_at_construction(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_retry_after_seconds_reads_ms_then_seconds_then_http_date() -> None:
    assert retry_after_seconds([("retry-after-ms", "1500"), ("retry-after", "9")]) == 1.5
    assert retry_after_seconds({"Retry-After": "2.5"}) == 2.5
    assert retry_after_seconds([("retry-after-ms", "soon"), ("retry-after", "3")]) == 3.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=now) == pytest.approx(42)
    for value in ("0", "-1", "nan", "inf", "tomorrow", email.utils.formatdate(now - 5)):
        assert retry_after_seconds({"retry-after": value}, now=now) is None
    assert retry_after_seconds([]) is None


def test_backoff_is_the_sdk_schedule_unless_retry_after_is_honoured() -> None:
    policy = RetryPolicy()
    assert [backoff_delay(n, policy, None, 0.0) for n in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert backoff_delay(0, policy, None, 1.0) == 0.375
    assert backoff_delay(0, policy, 12.0, 0.3) == 12.0
    assert backoff_delay(0, policy, 31.0, 0.0) == 0.5
    assert backoff_delay(0, RetryPolicy(honour_retry_after=False), 12.0, 0.0) == 0.5


def test_primary_unreachable_falls_back_to_secondary() -> None:
    served = reply(200)
    refused = UpstreamUnavailableError("connection refused")
    send = Upstreams({PRIMARY.name: [refused, refused], SECONDARY.name: [served]})
    sleeps = Sleeps()
    result = chain([PRIMARY, SECONDARY], send, sleeps=sleeps)
    assert result.response is served and result.target == SECONDARY and result.fallback_used
    assert sleeps.delays == [0.5]
    assert summary(result.attempts) == [
        (PRIMARY.name, None, "api_error"),
        (PRIMARY.name, None, "api_error"),
        (SECONDARY.name, 200, None),
    ]
    assert all(a.duration == 0 for a in result.attempts)


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (529, [("retry-after", "3")], 3.0),
        (500, [("retry-after-ms", "250")], 0.25),
        (429, [], 0.5),
    ],
)
def test_retryable_status_is_retried_after_the_upstreams_delay(
    status: int, headers: list[tuple[str, str]], expected: float
) -> None:
    failed, served = reply(status, OVERLOADED, headers), reply(200)
    sleeps = Sleeps()
    result = chain([PRIMARY], Upstreams({PRIMARY.name: [failed, served]}), sleeps=sleeps)
    assert result.response is served and not result.fallback_used
    assert sleeps.delays == [expected]
    assert closes(failed) == 1 and closes(served) == 0
    assert summary(result.attempts)[0] == (PRIMARY.name, status, "overloaded_error")


def test_retry_after_above_the_cap_moves_on_without_waiting() -> None:
    failed, served = reply(529, OVERLOADED, [("retry-after", "120")]), reply(200)
    send = Upstreams({PRIMARY.name: [failed], SECONDARY.name: [served]})
    sleeps = Sleeps()
    result = chain([PRIMARY, SECONDARY], send, sleeps=sleeps)
    assert result.response is served and sleeps.delays == []
    assert send.calls == [PRIMARY.name, SECONDARY.name]


@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_client_errors_are_final(status: int) -> None:
    answer = reply(status, error_json("invalid_request_error", "bad"))
    breaker = CircuitBreaker()
    breaker.record_failure(PRIMARY.name)
    send = Upstreams({PRIMARY.name: [answer], SECONDARY.name: [reply(200)]})
    result = chain([PRIMARY, SECONDARY], send, breaker=breaker)
    assert result.response is answer and closes(answer) == 0
    assert send.calls == [PRIMARY.name]
    assert summary(result.attempts) == [(PRIMARY.name, status, "invalid_request_error")]
    assert breaker._circuits == {}  # the success reset the failure count


def test_should_retry_false_rules_out_that_target_only_and_counts_as_a_failure() -> None:
    # No second try at the primary (NO_JITTER allows two), but the backup is another upstream:
    # a gateway chained behind another gets this with a spent budget the backup does not share.
    answer = reply(500, b"{}", [("x-should-retry", "false")])
    served = reply(200)
    send = Upstreams({PRIMARY.name: [answer, reply(200)], SECONDARY.name: [served]})
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1))
    assert chain([PRIMARY, SECONDARY], send, breaker=breaker).response is served
    assert send.calls == [PRIMARY.name, SECONDARY.name] and breaker.state(PRIMARY.name) == "open"


def test_should_retry_false_on_the_last_target_is_relayed_as_it_came() -> None:
    answer = reply(429, b"{}", [("x-should-retry", "false"), ("retry-after", "50000")])
    send = Upstreams({PRIMARY.name: [answer, reply(200)]})
    sleeps = Sleeps()
    assert chain([PRIMARY], send, sleeps=sleeps).response is answer
    assert send.calls == [PRIMARY.name] and sleeps.delays == []


def test_a_plain_text_error_body_has_no_error_type() -> None:
    failed = reply(502, b"Bad Gateway")
    result = chain([PRIMARY], Upstreams({PRIMARY.name: [failed, reply(200)]}))
    assert summary(result.attempts)[0] == (PRIMARY.name, 502, None)


def test_an_empty_chain_and_foreign_timeouts_are_errors() -> None:
    with pytest.raises(ValueError, match="at least one target"):
        chain([], Upstreams({}))
    # A TimeoutError that is not the chain's own deadline is a bug upstream of us: raised as is.
    with pytest.raises(TimeoutError):
        chain([PRIMARY, SECONDARY], Upstreams({PRIMARY.name: [TimeoutError()]}))


def test_non_retryable_raise_propagates_at_once() -> None:
    held = reply(529, OVERLOADED)
    send = Upstreams({PRIMARY.name: [held, InvalidRequestError("bad body")]})
    with pytest.raises(InvalidRequestError, match="bad body"):
        chain([PRIMARY, SECONDARY], send)
    assert send.calls == [PRIMARY.name, PRIMARY.name] and closes(held) == 1


def test_timeout_is_retried_on_the_same_target() -> None:
    served = reply(200)
    send = Upstreams({PRIMARY.name: [UpstreamTimeoutError("slow"), served]})
    result = chain([PRIMARY, SECONDARY], send)
    assert result.response is served and result.target == PRIMARY
    assert summary(result.attempts)[0] == (PRIMARY.name, None, "timeout_error")


def test_when_all_fail_the_last_upstream_error_is_returned_intact() -> None:
    first, second = reply(500, b"{}"), reply(502, b"{}")
    last = reply(529, OVERLOADED, [("retry-after", "7"), ("request-id", "req_up")])
    send = Upstreams({PRIMARY.name: [first, second], SECONDARY.name: [last]})
    policy = RetryPolicy(attempts_per_target=2, jitter=0.0, max_retry_after=5.0)
    result = chain([PRIMARY, SECONDARY], send, policy=policy)
    assert result.response is last and result.target == SECONDARY and result.fallback_used
    assert (last.status, last.body) == (529, OVERLOADED)
    assert ("retry-after", "7") in last.headers
    assert closes(last) == 0 and closes(first) == closes(second) == 1


def test_when_all_raise_the_last_error_is_raised() -> None:
    last = UpstreamTimeoutError("secondary slow")
    send = Upstreams(
        {
            PRIMARY.name: [UpstreamUnavailableError("down"), UpstreamUnavailableError("down")],
            SECONDARY.name: [OverloadedError("x"), last],
        }
    )
    log: list[Attempt] = []
    with pytest.raises(UpstreamTimeoutError) as raised:
        chain([PRIMARY, SECONDARY], send, attempts=log)
    assert raised.value is last and len(log) == 4


def test_an_upstreams_answer_beats_a_later_target_giving_none() -> None:
    # A backup unreachable must not hide the primary's 429 and its retry-after (a bare 502
    # sends the client's SDK back at once), nor a 529 it would retry.
    limited = reply(429, error_json("rate_limit_error", "Slow down"), [("retry-after", "20")])
    send = Upstreams(
        {PRIMARY.name: [limited], SECONDARY.name: [UpstreamUnavailableError("unreachable")]}
    )
    log: list[Attempt] = []
    result = chain([PRIMARY, SECONDARY], send, policy=RetryPolicy(), attempts=log)
    assert result.response.status == 429 and ("retry-after", "20") in result.response.headers
    assert result.target == PRIMARY and not result.fallback_used and len(log) == 2


def test_stream_failing_before_content_falls_back_invisibly() -> None:
    broken = streamed([MESSAGE_START, error_event()])
    good = streamed(GOOD_STREAM)
    send = Upstreams({PRIMARY.name: [broken], SECONDARY.name: [good]})
    policy = RetryPolicy(attempts_per_target=1)
    result, received = chain_and_read([PRIMARY, SECONDARY], send, policy=policy)
    assert result.fallback_used and closes(broken) == 1 and closes(good) == 1
    assert received == GOOD_STREAM
    assert summary(result.attempts) == [
        (PRIMARY.name, 200, "overloaded_error"),
        (SECONDARY.name, 200, None),
    ]


@pytest.mark.parametrize(
    "chunks",
    [
        [MESSAGE_START],
        [MESSAGE_START, UpstreamUnavailableError("connection reset")],
        [MESSAGE_START, b": keep-alive\n\n", sse("ping", {"type": "ping"})],
        [b'data: {"type":"content_block_start"}\n\n'],
    ],
    ids=["ends", "breaks", "only-pings", "unnamed-events"],
)
def test_stream_without_content_is_a_failure(chunks: list[bytes | BaseException]) -> None:
    broken, good = streamed(chunks), streamed(GOOD_STREAM)
    send = Upstreams({PRIMARY.name: [broken], SECONDARY.name: [good]})
    policy = RetryPolicy(attempts_per_target=1)
    result, received = chain_and_read([PRIMARY, SECONDARY], send, policy=policy)
    assert result.target == SECONDARY and closes(broken) == 1 and received == GOOD_STREAM


def test_stream_error_after_content_is_the_clients() -> None:
    failure = UpstreamUnavailableError("connection reset")
    started = streamed([*GOOD_STREAM[:3], failure])
    send = Upstreams({PRIMARY.name: [started], SECONDARY.name: [streamed(GOOD_STREAM)]})
    with pytest.raises(UpstreamUnavailableError) as raised:
        chain_and_read([PRIMARY, SECONDARY], send)
    assert raised.value is failure
    assert send.calls == [PRIMARY.name] and closes(started) == 1


def test_stream_after_content_replays_the_peeked_chunks_then_the_rest() -> None:
    send = Upstreams({PRIMARY.name: [streamed(GOOD_STREAM)]})
    result, received = chain_and_read([PRIMARY], send)
    assert received == GOOD_STREAM and not result.fallback_used


def _gated(chunks: Sequence[bytes], gate: asyncio.Event, at: int) -> ProviderResponse:
    """A 200 stream of ``chunks`` that waits for ``gate`` before chunk ``at``."""

    async def body() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(chunks):
            if index == at:
                await gate.wait()
            yield chunk

    return ProviderResponse(200, SSE_HEADERS, chunks=body(), close=Closes())


def test_a_stream_silent_past_the_hold_is_relayed_as_it_comes() -> None:
    # A model that thinks long before its first content: its opening events must reach the
    # client before the client's watchdogs give up on it.
    async def scenario() -> None:
        gate = asyncio.Event()
        silent = _gated(GOOD_STREAM, gate, at=1)
        send = Upstreams({PRIMARY.name: [silent], SECONDARY.name: [streamed(GOOD_STREAM)]})
        policy = RetryPolicy(attempts_per_target=1, stream_hold=0.05)
        result = await achain([PRIMARY, SECONDARY], send, stream=True, policy=policy)
        assert result.target == PRIMARY and not result.fallback_used
        assert result.response.chunks is not None
        chunks = aiter(result.response.chunks)
        assert await asyncio.wait_for(anext(chunks), 5) == GOOD_STREAM[0]
        gate.set()
        assert [chunk async for chunk in chunks] == GOOD_STREAM[1:]
        await result.response.close()
        assert send.calls == [PRIMARY.name] and closes(silent) == 1

    asyncio.run(scenario())


def test_an_error_after_the_hold_is_the_clients() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        late = _gated([MESSAGE_START, error_event()], gate, at=1)
        send = Upstreams({PRIMARY.name: [late], SECONDARY.name: [streamed(GOOD_STREAM)]})
        policy = RetryPolicy(attempts_per_target=1, stream_hold=0.05)
        result = await achain([PRIMARY, SECONDARY], send, stream=True, policy=policy)
        gate.set()
        assert result.response.chunks is not None
        assert [chunk async for chunk in result.response.chunks] == [MESSAGE_START, error_event()]
        assert result.target == PRIMARY and send.calls == [PRIMARY.name]

    asyncio.run(scenario())


def test_closing_a_held_stream_unread_stops_its_read() -> None:
    # The client may leave before the relay reads anything: the read still under way when
    # the hold ran out must end with the response, not linger (or log an unseen error).
    async def scenario() -> None:
        silent = streamed([MESSAGE_START, None])
        send = Upstreams({PRIMARY.name: [silent]})
        policy = RetryPolicy(attempts_per_target=1, stream_hold=0.01)
        result = await achain([PRIMARY], send, stream=True, policy=policy)
        before = asyncio.all_tasks()
        await result.response.close()
        await asyncio.sleep(0)
        assert closes(silent) == 1
        assert all(task.done() for task in before - {asyncio.current_task()})

    asyncio.run(scenario())


def test_a_stream_silent_since_its_head_is_relayed_without_a_first_byte_timeout() -> None:
    # The default: nothing is known of the model's silence, so the stream is the answer.
    silent = streamed([None])
    send = Upstreams({PRIMARY.name: [silent], SECONDARY.name: [streamed(GOOD_STREAM)]})
    policy = RetryPolicy(attempts_per_target=1, stream_hold=0.01)
    result = chain([PRIMARY, SECONDARY], send, stream=True, policy=policy)
    assert result.target == PRIMARY and send.calls == [PRIMARY.name]


def test_a_stream_silent_past_its_first_byte_timeout_falls_back() -> None:
    # An upstream that sent its head and hung: it must not hold the client until the deadline.
    silent = streamed([None])
    send = Upstreams({PRIMARY.name: [silent], SECONDARY.name: [streamed(GOOD_STREAM)]})
    policy = RetryPolicy(attempts_per_target=1, stream_hold=0.01, first_byte_timeout=0.05)
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1))
    result, chunks = chain_and_read([PRIMARY, SECONDARY], send, policy=policy, breaker=breaker)
    assert (result.target, result.fallback_used, chunks) == (SECONDARY, True, GOOD_STREAM)
    assert summary(result.attempts)[0] == (PRIMARY.name, 200, "timeout_error")
    assert closes(silent) == 1 and breaker.state(PRIMARY.name) == "open"


def test_a_first_byte_within_the_timeout_is_held_to_the_first_content_as_usual() -> None:
    # The first byte (message_start) came in time: past the hold the stream is the answer.
    async def scenario() -> None:
        gate = asyncio.Event()
        late = _gated([MESSAGE_START, *GOOD_STREAM[1:]], gate, at=1)
        send = Upstreams({PRIMARY.name: [late], SECONDARY.name: [streamed(GOOD_STREAM)]})
        policy = RetryPolicy(attempts_per_target=1, stream_hold=0.02, first_byte_timeout=5)
        result = await achain([PRIMARY, SECONDARY], send, stream=True, policy=policy)
        gate.set()
        assert result.response.chunks is not None
        relayed = [chunk async for chunk in result.response.chunks]
        assert relayed == [MESSAGE_START, *GOOD_STREAM[1:]]
        assert result.target == PRIMARY and send.calls == [PRIMARY.name]

    asyncio.run(scenario())


def test_stream_hold_is_validated() -> None:
    with pytest.raises(ValueError, match="stream_hold"):
        RetryPolicy(stream_hold=-1.0)
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="first_byte_timeout"):
            RetryPolicy(first_byte_timeout=bad)


def test_content_is_found_across_odd_chunking_and_crlf() -> None:
    whole = b"".join(GOOD_STREAM).replace(b"\n", b"\r\n")
    pieces = [whole[i : i + 7] for i in range(0, len(whole), 7)]
    _, received = chain_and_read([PRIMARY], Upstreams({PRIMARY.name: [streamed(pieces)]}))
    assert received == pieces


@pytest.mark.parametrize(
    ("tail", "served_by"),
    [
        (b'event: content_block_start\ndata: {"type":"content_block_start"}', PRIMARY),
        (b"event: error\ndata: {}", SECONDARY),
        (b": keep-alive\n\n" * 100_000, PRIMARY),
    ],
    ids=["unterminated-content", "unterminated-error", "a-megabyte-of-comments"],
)
def test_the_stream_tail_decides(tail: bytes, served_by: Target) -> None:
    send = Upstreams({PRIMARY.name: [streamed([MESSAGE_START, tail])], SECONDARY.name: []})
    send.script[SECONDARY.name].append(streamed(GOOD_STREAM))
    policy = RetryPolicy(attempts_per_target=1)
    result, _ = chain_and_read([PRIMARY, SECONDARY], send, policy=policy)
    assert result.target == served_by


def test_a_non_retryable_error_while_peeking_propagates() -> None:
    stream = streamed([MESSAGE_START, InvalidRequestError("prompt is too long")])
    send = Upstreams({PRIMARY.name: [stream], SECONDARY.name: []})
    with pytest.raises(InvalidRequestError):
        chain([PRIMARY, SECONDARY], send, stream=True)
    assert closes(stream) == 1 and send.calls == [PRIMARY.name]


def test_error_event_type_decides_the_raised_error() -> None:
    only = streamed([MESSAGE_START, error_event("overloaded_error", "busy")])
    policy = RetryPolicy(attempts_per_target=1)
    with pytest.raises(OverloadedError, match="busy"):
        chain([PRIMARY], Upstreams({PRIMARY.name: [only]}), policy=policy, stream=True)
    for data in (b"{}", b"not json"):
        unknown = streamed([b"event: error\ndata: " + data + b"\n\n"])
        with pytest.raises(UpstreamUnavailableError, match="failed before content"):
            chain([PRIMARY], Upstreams({PRIMARY.name: [unknown]}), policy=policy, stream=True)


def test_a_stream_is_not_peeked_when_the_request_was_not_streaming() -> None:
    odd = streamed([MESSAGE_START])
    result = chain([PRIMARY], Upstreams({PRIMARY.name: [odd]}), stream=False)
    assert result.response is odd


@pytest.mark.parametrize("status", [501, 520, 522, 524])
def test_every_5xx_falls_back_and_counts_for_the_breaker(status: int) -> None:
    # The SDKs retry every status >= 500; a CDN in front of an upstream answers 52x for it.
    failed = reply(status, b"<html>origin error</html>", [("content-type", "text/html")])
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1))
    send = Upstreams({PRIMARY.name: [failed], SECONDARY.name: [reply(200)]})
    result = chain([PRIMARY, SECONDARY], send, breaker=breaker)
    assert result.target == SECONDARY and result.fallback_used
    assert breaker.state(PRIMARY.name) == "open"


def test_breaker_opens_skips_during_cooldown_then_a_trial_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=2, cooldown=30), clock=clock)
    policy = RetryPolicy(attempts_per_target=2, jitter=0.0)
    sleeps = Sleeps(clock)

    def run(send: Upstreams) -> ChainResult:
        return chain([PRIMARY, SECONDARY], send, policy=policy, breaker=breaker, sleeps=sleeps)

    failing = Upstreams({PRIMARY.name: [reply(529), reply(529)], SECONDARY.name: [reply(200)]})
    assert run(failing).target == SECONDARY
    assert breaker.state(PRIMARY.name) == "open"

    skipping = Upstreams({PRIMARY.name: [], SECONDARY.name: [reply(200)]})
    result = run(skipping)
    assert skipping.calls == [SECONDARY.name]
    assert summary(result.attempts)[0] == (PRIMARY.name, None, "circuit_open")

    clock.now += 30
    assert breaker.state(PRIMARY.name) == "half_open"
    trial = Upstreams({PRIMARY.name: [reply(200)], SECONDARY.name: []})
    assert run(trial).target == PRIMARY
    assert breaker.state(PRIMARY.name) == "closed"


def test_a_trial_cut_short_by_the_gateways_own_full_pool_leaves_the_trial_to_the_next() -> None:
    # A half-open target whose trial found no free pooled connection has said nothing about
    # its health: the next request takes the trial, not one a whole cooldown later.
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=clock)
    breaker.record_failure(PRIMARY.name)
    clock.now += 30
    crowded = Upstreams(
        {PRIMARY.name: [NoFreeConnectionError("no free connection")], SECONDARY.name: [reply(200)]}
    )
    once = RetryPolicy(jitter=0.0)  # one try per target
    assert chain([PRIMARY, SECONDARY], crowded, breaker=breaker, policy=once).target == SECONDARY
    assert breaker.state(PRIMARY.name) == "half_open"
    trial = Upstreams({PRIMARY.name: [reply(200)], SECONDARY.name: []})
    assert chain([PRIMARY, SECONDARY], trial, breaker=breaker, policy=once).target == PRIMARY
    assert breaker.state(PRIMARY.name) == "closed"


def test_releasing_a_trial_leaves_another_requests_trial_alone() -> None:
    # A request that began while the circuit was closed and ends saying nothing of the
    # target must not free the trial a later request took: two trials would run at once.
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=clock)
    earlier = breaker.trial_started_at(PRIMARY.name)  # none: the circuit is closed
    breaker.record_failure(PRIMARY.name)
    clock.now += 30
    assert breaker.allow(PRIMARY.name)
    taken = breaker.trial_started_at(PRIMARY.name)
    breaker.release_trial(PRIMARY.name, earlier)
    assert not breaker.allow(PRIMARY.name)  # the trial is still the later request's
    breaker.release_trial(PRIMARY.name, taken)
    assert breaker.allow(PRIMARY.name)


def test_a_non_retryable_failure_of_a_trial_leaves_the_trial_to_the_next() -> None:
    # With 529 not retried, no free connection is raised at once: the trial it held must not
    # stay taken for another cooldown.
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=clock)
    breaker.record_failure(PRIMARY.name)
    clock.now += 30
    policy = RetryPolicy(jitter=0.0, retry_statuses=(500,))
    crowded = Upstreams({PRIMARY.name: [NoFreeConnectionError("no free connection")]})
    with pytest.raises(NoFreeConnectionError):
        chain([PRIMARY], crowded, breaker=breaker, policy=policy)
    assert breaker.allow(PRIMARY.name)


@pytest.mark.parametrize(
    "raised",
    # A provider's own TimeoutError (asyncio.wait_for inside it, a socket timeout) is not
    # the chain's deadline, and once slipped past the bookkeeping through that door.
    [KeyError("a provider's bug"), TimeoutError("a provider's own timeout")],
    ids=["bug", "timeout"],
)
def test_a_providers_own_error_during_a_trial_is_on_record_and_frees_the_trial(
    raised: Exception,
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=clock)
    breaker.record_failure(PRIMARY.name)
    clock.now += 30
    attempts: list[Attempt] = []
    buggy = Upstreams({PRIMARY.name: [raised]})
    with pytest.raises(type(raised)):
        asyncio.run(achain([PRIMARY], buggy, breaker=breaker, attempts=attempts))
    assert breaker.allow(PRIMARY.name)
    assert [(a.target, a.error_type) for a in attempts] == [(PRIMARY.name, "api_error")]


def test_the_breaker_stays_bounded_whatever_names_clients_send() -> None:
    # Model names are the client's: during an outage every made-up name fails, and would
    # otherwise be held for good, megabytes each.
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=2, cooldown=30))
    for _ in range(2):
        breaker.record_failure(PRIMARY.name)
    for index in range(5000):
        breaker.record_failure(f"anthropic/made-up-{index}")
    assert len(breaker) <= 1024
    assert breaker.state(PRIMARY.name) == "open"  # junk makes room by leaving first
    for _ in range(3):
        breaker.record_failure("anthropic/" + "m" * 100_000)
    assert breaker.state("anthropic/" + "m" * 100_000) == "closed"
    assert len(breaker) <= 1024


def test_breaker_half_open_lets_one_trial_through_and_a_failure_reopens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=10), clock=clock)
    breaker.record_failure("t")
    assert not breaker.allow("t")
    clock.now += 10
    assert breaker.allow("t") and not breaker.allow("t")
    breaker.record_failure("t")
    assert breaker.state("t") == "open"
    clock.now += 10
    assert breaker.allow("t")
    clock.now += 10  # the trial never reported back; after a cooldown another may go
    assert breaker.allow("t")
    breaker.record_success("t")
    assert breaker.state("t") == "closed" and breaker.allow("t")


def test_every_target_skipped_is_overloaded_until_the_first_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=clock)
    breaker.record_failure(PRIMARY.name)
    clock.now += 10.5
    breaker.record_failure(SECONDARY.name)
    send = Upstreams({})
    with pytest.raises(OverloadedError, match="circuit open") as caught:
        chain([PRIMARY, SECONDARY], send, breaker=breaker, sleeps=Sleeps(clock))
    assert send.calls == []
    # The primary's trial comes first, in 19.5 s; the SDKs honour a whole-second retry-after.
    assert caught.value.headers == {"retry-after": "20"}


def test_a_sole_target_is_sent_to_while_its_circuit_is_open() -> None:
    # With nowhere else to go, a skip would only turn the upstream's answer into a 529 of
    # the gateway's: the request goes, and what happens to it tells the breaker.
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=clock)
    breaker.record_failure(PRIMARY.name)
    down = reply(500, b'{"type":"error","error":{"type":"api_error","message":"down"}}')
    failing = Upstreams({PRIMARY.name: [down]})
    once = RetryPolicy(attempts_per_target=1)
    result = chain([PRIMARY], failing, policy=once, breaker=breaker, sleeps=Sleeps(clock))
    assert (failing.calls, result.response.status) == ([PRIMARY.name], 500)
    assert summary(result.attempts) == [(PRIMARY.name, 500, "api_error")]
    assert breaker.state(PRIMARY.name) == "open"
    clock.now += 20  # a fresh failure restarted the cooldown: chains with a backup skip on
    assert breaker.state(PRIMARY.name) == "open"
    # The same target named twice is still the only one.
    healthy = Upstreams({PRIMARY.name: [reply(200)]})
    result = chain([PRIMARY, PRIMARY], healthy, policy=once, breaker=breaker, sleeps=Sleeps(clock))
    assert (healthy.calls, result.response.status) == ([PRIMARY.name], 200)
    assert breaker.state(PRIMARY.name) == "closed"


def test_a_sole_target_behind_an_open_circuit_is_refused_when_so_configured() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(failure_threshold=1, cooldown=30, sole_target="refuse")
    breaker = CircuitBreaker(policy, clock=clock)
    breaker.record_failure(PRIMARY.name)
    send = Upstreams({PRIMARY.name: [reply(200)]})
    with pytest.raises(OverloadedError, match="circuit open") as caught:
        chain([PRIMARY], send, breaker=breaker, sleeps=Sleeps(clock))
    assert send.calls == [] and caught.value.headers == {"retry-after": "30"}


def test_a_sole_target_policy_is_validated() -> None:
    assert msgspec.convert({"sole_target": "refuse"}, BreakerPolicy).sole_target == "refuse"
    with pytest.raises(msgspec.ValidationError, match=r"Invalid enum value 'skip'.*sole_target"):
        msgspec.convert({"sole_target": "skip"}, BreakerPolicy)


@pytest.mark.parametrize("status", [408, 409, 429])
def test_a_per_request_failure_does_not_count_for_the_breaker(status: int) -> None:
    # With keys passed through, one client's 429s say nothing of the target's health: they
    # must not shut it for every other client.
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1))
    policy = RetryPolicy(attempts_per_target=1)
    for final in (reply(status), reply(status, headers=[("x-should-retry", "false")])):
        send = Upstreams({PRIMARY.name: [final, reply(200)], SECONDARY.name: [reply(200)]})
        chain([PRIMARY, SECONDARY], send, policy=policy, breaker=breaker)
        assert breaker.state(PRIMARY.name) == "closed"
    limited = streamed([MESSAGE_START, error_event("rate_limit_error", "slow down")])
    send = Upstreams({PRIMARY.name: [limited], SECONDARY.name: [streamed(GOOD_STREAM)]})
    assert (
        chain_and_read([PRIMARY, SECONDARY], send, policy=policy, breaker=breaker)[0].target
        == SECONDARY
    )
    assert breaker.state(PRIMARY.name) == "closed"


@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        ("invalid_request_error", 400),
        ("authentication_error", 401),
        ("billing_error", 402),
        ("permission_error", 403),
        ("not_found_error", 404),
        ("request_too_large", 413),
    ],
)
def test_a_stream_opening_with_a_client_error_is_that_error_at_once(
    error_type: str, status: int
) -> None:
    # Another try (or target) would get the same answer, and nothing has reached the client:
    # it gets the error's own status, as Anthropic reports such errors, and the target stays
    # healthy. Unknown to the chain, these used to be 502s (which the SDKs retry).
    opening = streamed([MESSAGE_START, error_event(error_type, "prompt is too long: 210000")])
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1))
    send = Upstreams({PRIMARY.name: [opening], SECONDARY.name: []})
    with pytest.raises(GatewayError, match="prompt is too long") as caught:
        chain([PRIMARY, SECONDARY], send, breaker=breaker, stream=True)
    assert (caught.value.status, caught.value.error_type) == (status, error_type)
    assert send.calls == [PRIMARY.name] and closes(opening) == 1
    assert breaker.state(PRIMARY.name) == "closed"


@pytest.mark.parametrize("error_type", ["invalid_request_error", "overloaded_error"])
def test_an_error_event_answered_to_the_client_keeps_the_upstream_request_id(
    error_type: str,
) -> None:
    # The request-id is what a user quotes to the provider's support, so the error the
    # client gets carries the upstream's, retryable (the last target's) or not.
    opening = streamed([MESSAGE_START, error_event(error_type, "no")])
    opening.headers.append(("request-id", "req_up"))
    send = Upstreams({PRIMARY.name: [opening]})
    with pytest.raises(GatewayError) as caught:
        chain([PRIMARY], send, policy=RetryPolicy(attempts_per_target=1), stream=True)
    assert caught.value.error_type == error_type
    assert caught.value.upstream_request_id == "req_up"


@pytest.mark.parametrize("error_type", ["invalid_request_error", "overloaded_error"])
def test_an_error_event_answered_to_the_client_keeps_the_upstreams_headers(
    error_type: str,
) -> None:
    # An error status would have relayed them; the rate-limit state matters most to a client.
    opening = streamed([MESSAGE_START, error_event(error_type, "no")])
    opening.headers += [("request-id", "req_up"), ("anthropic-ratelimit-unified-status", "ok")]
    send = Upstreams({PRIMARY.name: [opening]})
    with pytest.raises(GatewayError) as caught:
        chain([PRIMARY], send, policy=RetryPolicy(attempts_per_target=1), stream=True)
    headers = caught.value.headers
    assert headers["anthropic-ratelimit-unified-status"] == "ok"
    # Set on the error answer by the gateway: its own JSON type, the id from upstream_request_id.
    assert "content-type" not in headers and "request-id" not in headers


def _refusal() -> UnsupportedByProviderError:
    return UnsupportedByProviderError(
        "messages.0.content.1: images are not supported by this provider"
    )


def test_a_target_that_cannot_express_the_request_is_skipped_without_retries() -> None:
    # An OpenAI-compatible target refusing an image: the request is fine for the others.
    send = Upstreams(
        {
            PRIMARY.name: [reply(529, OVERLOADED)] * 2,
            SECONDARY.name: [_refusal()] * 2,
            TERTIARY.name: [reply(200)],
        }
    )
    sleeps, attempts = Sleeps(), list[Attempt]()
    result = asyncio.run(
        achain([PRIMARY, SECONDARY, TERTIARY], send, sleeps=sleeps, attempts=attempts)
    )
    assert (result.response.status, result.target, result.fallback_used) == (200, TERTIARY, True)
    assert send.calls == [PRIMARY.name, PRIMARY.name, SECONDARY.name, TERTIARY.name]
    assert [(a.target, a.error_type) for a in attempts][2] == (
        SECONDARY.name,
        "invalid_request_error",
    )
    assert len(sleeps.delays) == 1  # the primary's one retry; none for the refusal


def test_a_refusal_at_the_end_of_the_chain_leaves_the_earlier_failure_as_the_answer() -> None:
    # A 529 the SDK retries, rather than a 400 about what one fallback target cannot express.
    send = Upstreams({PRIMARY.name: [reply(529, OVERLOADED)] * 2, SECONDARY.name: [_refusal()]})
    result = chain([PRIMARY, SECONDARY], send)
    assert (result.response.status, result.response.body) == (529, OVERLOADED)
    assert result.target == PRIMARY


def test_a_refusal_behind_an_open_circuit_is_overloaded_until_its_trial() -> None:
    # The skipped primary may serve the request once its circuit half-opens: a 529 the SDK
    # retries then, not a final 400 about what the backup cannot express.
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=clock)
    breaker.record_failure(PRIMARY.name)
    clock.now += 10
    send = Upstreams({PRIMARY.name: [], SECONDARY.name: [_refusal()]})
    with pytest.raises(OverloadedError) as raised:
        chain([PRIMARY, SECONDARY], send, breaker=breaker)
    assert raised.value.headers == {"retry-after": "20"}
    assert send.calls == [SECONDARY.name]


def test_a_refusal_with_nothing_before_it_is_the_answer() -> None:
    send = Upstreams({PRIMARY.name: [_refusal()], SECONDARY.name: [_refusal()]})
    with pytest.raises(UnsupportedByProviderError, match="images are not supported"):
        chain([PRIMARY, SECONDARY], send)
    assert send.calls == [PRIMARY.name, SECONDARY.name]


def test_deadline_stops_retries() -> None:
    sleeps = Sleeps()
    send = Upstreams({PRIMARY.name: [reply(500)] * 10}, clock=sleeps.clock, seconds_per_call=4)
    policy = RetryPolicy(attempts_per_target=10, base_delay=1, jitter=0, deadline=10)
    result = chain([PRIMARY], send, policy=policy, sleeps=sleeps)
    # 4 s, sleep 1, 4 s (9 s); sleeping 2 more would pass 10 s.
    assert len(send.calls) == 2 and sleeps.delays == [1]
    assert result.response.status == 500


def test_a_passed_deadline_ends_the_chain_before_the_next_target() -> None:
    sleeps = Sleeps()
    send = Upstreams({PRIMARY.name: [reply(500)], SECONDARY.name: []}, sleeps.clock, 11)
    policy = RetryPolicy(attempts_per_target=3, deadline=10)
    result = chain([PRIMARY, SECONDARY], send, policy=policy, sleeps=sleeps)
    assert send.calls == [PRIMARY.name] and result.response.status == 500


def test_deadline_passing_while_peeking_is_a_failure() -> None:
    hung = streamed([MESSAGE_START, None])
    send = Upstreams({PRIMARY.name: [hung], SECONDARY.name: [streamed(GOOD_STREAM)]})
    sleeps = Sleeps()
    sleeps.clock.now = 0.0
    policy = RetryPolicy(deadline=0.05)
    with pytest.raises(UpstreamTimeoutError, match="deadline"):
        chain([PRIMARY, SECONDARY], send, policy=policy, stream=True, sleeps=sleeps)
    assert closes(hung) == 1 and send.calls == [PRIMARY.name]


def test_cancellation_closes_the_held_failure_and_the_peeked_stream() -> None:
    held = reply(529, OVERLOADED, [("retry-after", "5")])
    backoff = Hang()

    async def sleep(delay: float) -> None:
        await backoff.wait()

    # Cancelled while sleeping before the retry...
    send = Upstreams({PRIMARY.name: [held]})
    cancelled_at(backoff, [PRIMARY], send, NO_JITTER, sleep=sleep)
    # ...then while waiting for the first content.
    silence = Hang()
    hung = streamed([MESSAGE_START, silence])
    cancelled_at(silence, [PRIMARY], Upstreams({PRIMARY.name: [hung]}), NO_JITTER)
    assert closes(held) == 1 and closes(hung) == 1


def test_a_failed_stream_keeps_the_usage_it_reported_on_its_attempt() -> None:
    # message_start reported the input before the error event: whether or not the upstream
    # bills it, the attempt log must not lose it. The answer's own usage is the backup's.
    failing = streamed([MESSAGE_START, error_event()])
    refused = streamed([MESSAGE_START, InvalidRequestError("prompt is too long")])
    send = Upstreams({PRIMARY.name: [failing], SECONDARY.name: [streamed(GOOD_STREAM)]})
    attempts: list[Attempt] = []
    policy = RetryPolicy(attempts_per_target=1)
    chain_and_read([PRIMARY, SECONDARY], send, policy=policy, attempts=attempts)
    reported = TokenUsage(input_tokens=12, output_tokens=1)
    assert [(a.target, a.status, a.error_type, a.usage) for a in attempts] == [
        (PRIMARY.name, 200, "overloaded_error", reported),
        (SECONDARY.name, 200, None, None),
    ]
    attempts.clear()
    with pytest.raises(InvalidRequestError):
        chain([PRIMARY], Upstreams({PRIMARY.name: [refused]}), stream=True, attempts=attempts)
    assert [(a.status, a.error_type, a.usage) for a in attempts] == [
        (200, "invalid_request_error", reported)
    ]


def test_a_cancelled_chain_names_the_stream_it_held_and_only_that_one() -> None:
    # The caller bills a client that left to the target whose stream was held, not to an
    # earlier target whose stream failed (whose usage stays on its own attempt).
    def cancelled(
        send: Callable[[Target], Awaitable[ProviderResponse]], hang: Hang
    ) -> tuple[HeldStream, list[Attempt]]:
        held, attempts = HeldStream(), []
        policy = RetryPolicy(attempts_per_target=1)
        cancelled_at(hang, [PRIMARY, SECONDARY], send, policy, attempts=attempts, held=held)
        return held, attempts

    backup_start = text_stream_events([], model="claude-haiku-4-5", input_tokens=40)[0]
    failing = streamed([MESSAGE_START, error_event()])
    silence = Hang()
    held, attempts = cancelled(
        Upstreams({PRIMARY.name: [failing], SECONDARY.name: [streamed([backup_start, silence])]}),
        silence,
    )
    assert held.target == SECONDARY and held.chunks == [backup_start]
    assert summary(attempts) == [
        (PRIMARY.name, 200, "overloaded_error"),
        (SECONDARY.name, 200, "client_disconnected"),
    ]
    assert attempts[1].usage == TokenUsage(input_tokens=40, output_tokens=1)

    primary_only = Upstreams({PRIMARY.name: [streamed([MESSAGE_START, error_event()])]})

    no_answer = Hang()

    async def backup_never_answers(target: Target) -> ProviderResponse:
        if target == SECONDARY:
            await no_answer.wait()
        return await primary_only(target)

    held, attempts = cancelled(backup_never_answers, no_answer)
    assert held.target is None
    assert summary(attempts) == [
        (PRIMARY.name, 200, "overloaded_error"),
        (SECONDARY.name, None, "client_disconnected"),
    ]
    assert attempts[1].usage is None


@given(
    st.integers(min_value=0, max_value=2000),
    st.integers(min_value=0, max_value=2000),
    st.floats(min_value=0, max_value=1),
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=1),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_backoff_is_bounded_and_monotone(
    first: int,
    second: int,
    random_value: float,
    base: float,
    cap: float,
    jitter: float,
    retry_after: float | None,
) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=cap, jitter=jitter, max_retry_after=30)
    low, high = sorted((first, second))
    bound = max(policy.max_delay, policy.max_retry_after)
    delay = backoff_delay(low, policy, retry_after, random_value)
    assert 0 <= delay <= bound
    if retry_after is None:
        assert delay <= backoff_delay(high, policy, None, random_value)


_OUTCOMES = [
    "ok",
    "bad_request",
    "server_error",
    "overloaded",
    "refused",
    "timeout",
    "invalid",
    "stream_ok",
    "stream_broken",
]
_RETRYABLE = {"server_error", "overloaded", "refused", "timeout", "stream_broken"}
_UNANSWERED = {"refused", "timeout"}  # failures of the gateway's own: no upstream answered


def _make(kind: str) -> _Outcome:
    made: dict[str, Callable[[], _Outcome]] = {
        "ok": lambda: reply(200),
        "bad_request": lambda: reply(400),
        "server_error": lambda: reply(500),
        "overloaded": lambda: reply(529, OVERLOADED, [("retry-after", "2")]),
        "refused": lambda: UpstreamUnavailableError("refused"),
        "timeout": lambda: UpstreamTimeoutError("slow"),
        "invalid": lambda: InvalidRequestError("bad"),
        "stream_ok": lambda: streamed(GOOD_STREAM),
        "stream_broken": lambda: streamed([MESSAGE_START, error_event()]),
    }
    return made[kind]()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=1, max_value=3),
    st.lists(st.sampled_from(_OUTCOMES), min_size=9, max_size=9),
)
def test_result_is_the_first_final_answer_or_the_last_failure(
    n_targets: int, per_target: int, kinds: list[str]
) -> None:
    targets = [Target("p", f"m{i}") for i in range(n_targets)]
    outcomes = [_make(kind) for kind in kinds]
    feed = iter(outcomes)
    calls: list[Target] = []

    async def send(target: Target) -> ProviderResponse:
        calls.append(target)
        outcome = next(feed)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    policy = RetryPolicy(attempts_per_target=per_target)
    budget = n_targets * per_target
    final = next((i for i, kind in enumerate(kinds[:budget]) if kind not in _RETRYABLE), None)
    used = budget if final is None else final + 1
    answer = used - 1
    if final is None and kinds[answer] in _UNANSWERED:
        # The last target gave no answer: the latest upstream answer before it, if any, is
        # the one the client gets.
        answered = [i for i in range(answer) if kinds[i] in _RETRYABLE - _UNANSWERED]
        answer = answered[-1] if answered else answer
    expected, expected_kind = outcomes[answer], kinds[answer]
    try:
        result: ChainResult | GatewayError = chain(targets, send, policy=policy, stream=True)
    except GatewayError as exc:
        result = exc
    assert len(calls) == used <= budget
    assert calls == [targets[i // per_target] for i in range(used)]
    if isinstance(expected, BaseException):
        assert result is expected
    elif expected_kind == "stream_broken":
        assert isinstance(result, OverloadedError)
    else:
        assert isinstance(result, ChainResult)
        # Closed only if a later attempt followed it (its body was read whole: still there).
        assert result.response.close is expected.close
        assert closes(expected) == (answer != used - 1)
        assert result.fallback_used == (calls[answer] != targets[0])
    failed = [o for o in outcomes[: used - 1] if isinstance(o, ProviderResponse)]
    assert all(closes(o) == 1 for o in failed)


@given(st.lists(st.integers(min_value=1, max_value=len(b"".join(GOOD_STREAM)) - 1), max_size=20))
def test_any_chunking_commits_a_good_stream_and_fails_a_broken_one(cuts: list[int]) -> None:
    def split(whole: bytes) -> list[bytes]:
        points = sorted({c for c in cuts if c < len(whole)})
        return [whole[a:b] for a, b in zip([0, *points], [*points, len(whole)], strict=True)]

    good = b"".join(GOOD_STREAM)
    broken = MESSAGE_START + sse("ping", {"type": "ping"}) + error_event()
    send = Upstreams({PRIMARY.name: [streamed(split(broken)), streamed(split(good))]})
    result, received = chain_and_read([PRIMARY], send)
    assert received == split(good) and len(result.attempts) == 2


def _half_open_breaker(clock: FakeClock) -> CircuitBreaker:
    """A breaker whose circuit for PRIMARY failed and whose cooldown just ended."""
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=clock)
    breaker.record_failure(PRIMARY.name)
    clock.now += 30
    return breaker


async def _held_briefly(send: Upstreams, breaker: CircuitBreaker, clock: FakeClock) -> ChainResult:
    """A streamed request to PRIMARY then SECONDARY, its stream held for 50 ms at most."""
    return await run_chain(
        [PRIMARY, SECONDARY],
        send,
        policy=RetryPolicy(stream_hold=0.05),
        breaker=breaker,
        stream=True,
        clock=clock,
    )


def test_a_trial_stream_handed_over_before_any_content_does_not_close_the_circuit() -> None:
    # The hold ran out with only message_start read; the stream then failed at the client.
    async def scenario() -> tuple[list[bytes], str]:
        clock = FakeClock()
        breaker = _half_open_breaker(clock)
        gate = asyncio.Event()
        trial = _gated([MESSAGE_START, error_event("overloaded_error")], gate, at=1)
        send = Upstreams({PRIMARY.name: [trial], SECONDARY.name: [streamed(GOOD_STREAM)]})
        result = await _held_briefly(send, breaker, clock)
        gate.set()
        assert result.response.chunks is not None
        relayed = [chunk async for chunk in result.response.chunks]
        await result.response.close()
        return relayed, breaker.state(PRIMARY.name)

    relayed, state = asyncio.run(scenario())
    assert relayed[-1] == error_event("overloaded_error")
    assert state != "closed"


def test_a_target_silent_after_its_head_is_not_taken_for_healthy() -> None:
    async def scenario() -> tuple[Target, str, bool]:
        clock = FakeClock()
        breaker = _half_open_breaker(clock)
        send = Upstreams({PRIMARY.name: [streamed([None])], SECONDARY.name: []})
        result = await _held_briefly(send, breaker, clock)
        await result.response.close()
        # The trial is released: the next request may try the target again at once.
        return result.target, breaker.state(PRIMARY.name), breaker.allow(PRIMARY.name)

    target, state, allowed = asyncio.run(scenario())
    assert target == PRIMARY and state != "closed" and allowed


@pytest.mark.parametrize(
    ("first_breaker_state", "failures_before"),
    [("half-open", 1), ("closed with a failure counted", 1)],
)
def test_a_stream_handed_over_before_content_counts_once_its_content_comes(
    first_breaker_state: str, failures_before: int
) -> None:
    # Slower than the hold but good: its content closes a half-open circuit, and resets
    # the count of consecutive failures, as an answer in time would.
    async def scenario() -> str:
        clock = FakeClock()
        threshold = 1 if first_breaker_state == "half-open" else 2
        breaker = CircuitBreaker(
            BreakerPolicy(failure_threshold=threshold, cooldown=30), clock=clock
        )
        for _ in range(failures_before):
            breaker.record_failure(PRIMARY.name)
        if first_breaker_state == "half-open":
            clock.now += 30
        gate = asyncio.Event()
        send = Upstreams({PRIMARY.name: [_gated(GOOD_STREAM, gate, at=1)], SECONDARY.name: []})
        policy = RetryPolicy(attempts_per_target=1, stream_hold=0.05)
        result = await run_chain(
            [PRIMARY, SECONDARY], send, policy=policy, breaker=breaker, stream=True, clock=clock
        )
        gate.set()
        assert result.response.chunks is not None
        relayed = [chunk async for chunk in result.response.chunks]
        await result.response.close()
        assert relayed == list(GOOD_STREAM)
        if first_breaker_state != "half-open":
            breaker.record_failure(PRIMARY.name)  # another, no longer consecutive
        return breaker.state(PRIMARY.name)

    assert asyncio.run(scenario()) == "closed"


def _head_then(gate: asyncio.Event, then: list[bytes | BaseException]) -> ProviderResponse:
    """A stream that sends message_start, waits for ``gate``, then goes on with ``then``."""

    async def body() -> AsyncIterator[bytes]:
        yield MESSAGE_START
        await gate.wait()
        for item in then:
            if isinstance(item, BaseException):
                raise item
            yield item

    return ProviderResponse(200, list(SSE_HEADERS), chunks=body(), close=Closes())


@pytest.mark.parametrize("ending", ["breaks", "ends"])
@pytest.mark.parametrize("handed_over", [False, True], ids=["held", "handed over"])
def test_a_stream_failing_after_its_head_counts_however_long_it_took(
    ending: str, handed_over: bool
) -> None:
    # Failing inside the hold opened the circuit; failing just after it, never.
    async def scenario() -> str:
        breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=FakeClock())
        gate = asyncio.Event()
        if not handed_over:
            gate.set()
        then: list[bytes | BaseException] = (
            [UpstreamUnavailableError("connection lost")] if ending == "breaks" else []
        )
        send = Upstreams({PRIMARY.name: [_head_then(gate, then)]})
        policy = RetryPolicy(attempts_per_target=1, stream_hold=0.05)
        try:
            result = await run_chain([PRIMARY], send, policy=policy, breaker=breaker, stream=True)
        except UpstreamUnavailableError:
            return breaker.state(PRIMARY.name)
        gate.set()
        assert result.response.chunks is not None
        with contextlib.suppress(UpstreamUnavailableError):
            async for _ in result.response.chunks:
                pass
        await result.response.close()
        return breaker.state(PRIMARY.name)

    assert asyncio.run(scenario()) == "open"


def test_a_backup_silent_after_its_head_does_not_hide_the_primarys_429() -> None:
    async def scenario() -> ChainResult:
        limited = reply(429, error_json("rate_limit_error", "Slow down"), [("retry-after", "20")])
        send = Upstreams(
            {PRIMARY.name: [limited], SECONDARY.name: [streamed([MESSAGE_START, Hang()])]}
        )
        policy = RetryPolicy(attempts_per_target=1, stream_hold=5, deadline=0.3)
        return await run_chain([PRIMARY, SECONDARY], send, policy=policy, breaker=None, stream=True)

    result = asyncio.run(scenario())
    assert result.response.status == 429 and result.target == PRIMARY


def test_a_stream_opening_with_an_unknown_error_type_still_falls_back() -> None:
    # protocol.md 5.4: an error known before the first byte must be an HTTP error, never
    # 200 plus an error event (no SDK retries one, and here no fallback follows either).
    # Before b130bff an opening error event of a type the gateway does not know (an
    # Anthropic-compatible proxy's "server_error", say) was a 502 that fell back to the
    # backup; now the primary's failed stream is committed and relayed as a 200.
    send = Upstreams(
        {
            PRIMARY.name: [
                streamed([MESSAGE_START, error_event("server_error", "upstream broke")])
            ],
            SECONDARY.name: [streamed(GOOD_STREAM)],
        }
    )
    once = RetryPolicy(attempts_per_target=1, jitter=0.0)
    result, _ = chain_and_read([PRIMARY, SECONDARY], send, policy=once)
    assert send.calls == [PRIMARY.name, SECONDARY.name]
    assert result.target == SECONDARY


def test_a_half_open_trial_stays_taken_while_its_unproven_stream_is_relayed() -> None:
    # A trial stream handed over before its content released the trial at once: each request
    # behind it, one per stream_hold, was committed to the still-failing target as a new
    # trial (5 of 10 in the reviewer's run) and got a mid-stream error.
    async def scenario() -> None:
        clock = FakeClock()
        breaker = _half_open_breaker(clock)
        gate = asyncio.Event()
        send = Upstreams({PRIMARY.name: [_gated(GOOD_STREAM, gate, at=1)], SECONDARY.name: []})
        result = await _held_briefly(send, breaker, clock)
        assert result.target == PRIMARY
        assert not breaker.allow(PRIMARY.name)  # the next request goes elsewhere
        gate.set()
        assert result.response.chunks is not None
        assert [chunk async for chunk in result.response.chunks] == list(GOOD_STREAM)
        await result.response.close()
        assert breaker.state(PRIMARY.name) == "closed"  # its content proved it well

    asyncio.run(scenario())


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_fallbacks_own_key_or_model_error_leaves_the_earlier_failure_answered(
    status: int,
) -> None:
    # A stale key or a retired model on a rarely used backup turned a 529 the SDK retries
    # into a 401 (Claude Code then asks for a login) or a 404, never retried.
    overloaded = reply(529, OVERLOADED)
    refused = reply(status, error_json("authentication_error", "invalid x-api-key"))
    send = Upstreams({PRIMARY.name: [overloaded], SECONDARY.name: [refused]})
    policy = RetryPolicy(attempts_per_target=1, jitter=0.0)
    result = chain([PRIMARY, SECONDARY], send, policy=policy)
    assert result.response is overloaded and result.response.status == 529
    assert closes(refused) == 1
    assert summary(result.attempts) == [
        (PRIMARY.name, 529, "overloaded_error"),
        (SECONDARY.name, status, "authentication_error"),
    ]


def test_a_first_targets_own_401_is_still_the_answer() -> None:
    refused = reply(401, error_json("authentication_error", "invalid x-api-key"))
    send = Upstreams({PRIMARY.name: [refused], SECONDARY.name: [reply(200)]})
    result = chain([PRIMARY, SECONDARY], send)
    assert result.response is refused and send.calls == [PRIMARY.name]


def test_a_read_only_breaker_skips_open_targets_and_moves_no_circuit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=1, cooldown=30), clock=clock)
    breaker.record_failure(PRIMARY.name)
    view = breaker.read_only()
    send = Upstreams({PRIMARY.name: [], SECONDARY.name: [reply(200), reply(529, OVERLOADED)]})
    result = chain([PRIMARY, SECONDARY], send, breaker=view)
    assert result.target == SECONDARY and send.calls == [SECONDARY.name]
    clock.now += 30  # half-open: the view lets it through without taking the trial
    assert view.allow(PRIMARY.name) and breaker.allow(PRIMARY.name)
    for _ in range(3):
        view.record_failure(SECONDARY.name)
    view.record_success(PRIMARY.name)
    assert breaker.state(SECONDARY.name) == "closed" and breaker.state(PRIMARY.name) != "closed"
