"""Fallback across upstream targets: retries with backoff, a circuit breaker, stream peeking.

:func:`run_chain` tries each :class:`Target` in order until one gives an answer worth relaying.
It knows nothing of HTTP servers: it calls a ``send`` coroutine once per attempt and returns the
:class:`~messages_mw.providers.base.ProviderResponse` to relay, with a log of the attempts. A
streamed answer is committed only once its first content event has arrived (or its opening
events have waited ``RetryPolicy.stream_hold``), so a stream that fails before that falls back
as cleanly as a 529 does; after it, the failure is the client's.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random as _random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Literal

import msgspec

from .breaker import BreakerPolicy, BreakerState, CircuitBreaker
from .context import Attempt
from .errors import (
    GatewayError,
    OverloadedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    error_class,
)
from .protocol import DECODE_ERRORS, ObservedEvent, ObservedResponse
from .providers.base import ProviderResponse
from .streaming import TokenUsage, observed_usage

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "ChainResult",
    "CircuitBreaker",
    "HeldStream",
    "RetryPolicy",
    "Target",
    "backoff_delay",
    "retry_after_seconds",
    "run_chain",
]

_event_decoder = msgspec.json.Decoder(ObservedEvent)
_body_decoder = msgspec.json.Decoder(ObservedResponse)
# The event separators the SDKs accept; a regex finds the earliest in one left-to-right pass.
_SEPARATOR = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# Events that precede the first content block; every other named event commits a stream.
_PREAMBLE_EVENTS = frozenset({b"message_start", b"ping"})
# A stream still without content after this much is committed anyway rather than buffered on.
_MAX_PEEK_BYTES = 1 << 20
_NO_USAGE = TokenUsage()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_delay(value: float) -> bool:
    return 0 <= value < math.inf


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One place to send a request: a configured provider's name and the model to ask for."""

    provider: str
    model: str

    @property
    def name(self) -> str:
        """``provider/model``, the key of the circuit breaker and of the attempts log."""
        return f"{self.provider}/{self.model}"


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How :func:`run_chain` retries; times are seconds. Invalid values raise ``ValueError``.

    ``attempts_per_target`` counts the first try. Exponential delays are shortened by up to
    ``jitter`` of themselves. An upstream ``retry-after`` replaces the delay when honoured; one
    above ``max_retry_after`` moves on to the next target instead. ``deadline`` bounds the
    whole chain, from its start until an answer is chosen (for a stream: its first content).
    A stream's opening events (``message_start``, pings) are held back while its first content
    event is awaited, since that decides whether it failed (and falls back, or becomes a typed
    error response); after ``stream_hold`` without content the stream is relayed as it is, so
    that a long-silent model still sends the client bytes before its watchdogs fire (Claude
    Code's first-byte timeout is 10 s at the least).
    """

    attempts_per_target: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    retry_statuses: tuple[int, ...] = (408, 409, 429, 500, 502, 503, 504, 529)
    honour_retry_after: bool = True
    max_retry_after: float = 30.0
    deadline: float = 600.0
    stream_hold: float = 5.0

    def __post_init__(self) -> None:
        _require(self.attempts_per_target >= 1, "attempts_per_target must be at least 1")
        for name, value in (
            ("base_delay", self.base_delay),
            ("max_delay", self.max_delay),
            ("max_retry_after", self.max_retry_after),
            ("stream_hold", self.stream_hold),
        ):
            _require(_is_delay(value), f"{name} must be a finite number >= 0")
        _require(0 <= self.jitter <= 1, "jitter must be between 0 and 1")
        _require(0 < self.deadline < math.inf, "deadline must be a finite number > 0")
        bad = [status for status in self.retry_statuses if not 400 <= status <= 599]
        _require(not bad, f"retry_statuses must be 4xx or 5xx statuses, not {bad}")


def _honours(policy: RetryPolicy, retry_after: float) -> bool:
    return policy.honour_retry_after and 0 <= retry_after <= policy.max_retry_after


def _waits_too_long(policy: RetryPolicy, retry_after: float | None) -> bool:
    return (
        policy.honour_retry_after
        and retry_after is not None
        and retry_after > policy.max_retry_after
    )


def backoff_delay(
    retry_index: int, policy: RetryPolicy, retry_after: float | None, random_value: float
) -> float:
    """Seconds to wait before retry ``retry_index`` (0 for the first retry) of one target.

    An upstream ``retry_after`` is used as it is when the policy honours it and it is at most
    ``max_retry_after``. Otherwise this is the SDKs' backoff, ``min(base_delay * 2**n,
    max_delay)`` shortened by ``jitter * random_value`` (``random_value`` in [0, 1]). Pure.
    """
    if retry_after is not None and _honours(policy, retry_after):
        return retry_after
    # Past 2**1023 a float overflows; the cap has long been reached by then anyway.
    growth = 2.0 ** min(max(retry_index, 0), 1023)
    exponential = min(policy.base_delay * growth, policy.max_delay)
    return exponential * (1.0 - policy.jitter * min(max(random_value, 0.0), 1.0))


def retry_after_seconds(
    headers: Mapping[str, str] | Iterable[tuple[str, str]], now: float | None = None
) -> float | None:
    """The wait an upstream asked for in its response headers, in seconds, or ``None``.

    Reads ``retry-after-ms`` (milliseconds), then ``retry-after`` as seconds or as an HTTP date
    (counted from ``now``, a ``time.time()`` reading, by default the current one), in the SDKs'
    order. Only positive, finite waits count; anything else is ``None``.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    values = {name.lower(): value for name, value in pairs}
    millis = _positive_float(values.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = values.get("retry-after")
    if value is None:
        return None
    seconds = _positive_float(value)
    if seconds is not None:
        return seconds
    return _seconds_until(value, time.time() if now is None else now)


def _positive_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0 < number < math.inf else None


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    wait = moment.timestamp() - now
    return wait if wait > 0 else None


class ChainResult(msgspec.Struct, frozen=True):
    """What :func:`run_chain` chose to relay, who served it, and every attempt on the way."""

    response: ProviderResponse
    target: Target
    attempts: list[Attempt]
    fallback_used: bool


@dataclass(slots=True)
class HeldStream:
    """The stream :func:`run_chain` is holding back until its first content: which target
    sent it (``None`` when none is held) and the chunks read so far. A caller cancelled
    meanwhile reads from it what the upstream bills (``message_start`` reports the input
    tokens) and whom it bills for."""

    target: Target | None = None
    chunks: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class _Failure:
    """A failed attempt: the upstream's answer (kept unread for the client) or an error.

    ``status`` is what the upstream answered (``None`` when it did not answer at all);
    ``usage`` what a failed stream reported before its error.
    """

    target: Target
    status: int | None
    error: GatewayError | None = None
    response: ProviderResponse | None = None
    retry_after: float | None = None
    usage: TokenUsage | None = None


_Verdict = GatewayError | Literal["content"] | None


def _judge_event(block: bytes) -> _Verdict:
    """``content`` for a content event, the error of an ``error`` event, else ``None``.

    Events without an ``event:`` line count for nothing: the SDKs drop them.
    """
    name: bytes | None = None
    data: list[bytes] = []
    for line in block.splitlines():
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            data.append(line[5:].strip())
    if name is None or name in _PREAMBLE_EVENTS:
        return None
    if name != b"error":
        return "content"
    try:
        error = _event_decoder.decode(b"\n".join(data)).error
    except DECODE_ERRORS:
        error = None
    kind = (error.type if error else None) or ""
    message = (error.message if error else None) or "The upstream stream failed before content."
    return error_class(kind, UpstreamUnavailableError)(message)


class _PeekScanner:
    """Splits SSE bytes into events incrementally until one decides the stream's fate."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> _Verdict:
        pending = self._pending
        pending += chunk
        start, verdict = 0, None
        while verdict is None:
            separator = _SEPARATOR.search(pending, start)
            if separator is None:
                break
            verdict = _judge_event(bytes(pending[start : separator.start()]))
            start = separator.end()
        del pending[:start]
        return verdict

    def finish(self) -> _Verdict:
        """Judge an unterminated last event, once the stream has ended."""
        return _judge_event(bytes(self._pending))


async def _peek_stream(
    chunks: AsyncIterator[bytes],
    retry_statuses: tuple[int, ...],
    hold: float,
    buffered: list[bytes],
) -> tuple[GatewayError | None, asyncio.Future[bytes] | None]:
    """Read until the first content event, or for at most ``hold`` seconds, into ``buffered``
    (which holds the chunks read even if this raises or is cancelled); return the failure if
    any, and the read still under way when the hold ran out (for the caller to await next).

    Raises a non-retryable ``GatewayError`` from the stream, and anything else it raises.
    """
    scanner, size = _PeekScanner(), 0
    hold_timer = _HoldTimer(asyncio.get_running_loop(), hold)
    read: asyncio.Future[bytes] | None = None
    try:
        while True:
            # A read of its own, so that the hold running out leaves it under way: cancelling
            # it would end the upstream's stream.
            read = asyncio.ensure_future(anext(chunks))
            if not await hold_timer.wait(read):
                pending, read = read, None
                return None, pending
            try:
                chunk = read.result()
            except StopAsyncIteration:
                verdict = scanner.finish()
                if verdict is None:
                    message = "The upstream stream ended before any content."
                    verdict = UpstreamUnavailableError(message)
                return None if verdict == "content" else verdict, None
            except GatewayError as exc:
                if exc.status not in retry_statuses:
                    raise
                return exc, None
            buffered.append(chunk)
            size += len(chunk)
            verdict = scanner.feed(chunk)
            if isinstance(verdict, GatewayError):
                return verdict, None
            if verdict == "content" or size > _MAX_PEEK_BYTES:
                return None, None
    finally:
        hold_timer.stop()
        if read is not None:
            _drop(read)


class _HoldTimer:
    """Waits for reads until ``hold`` seconds from now, on one timer for all of them (a wait
    with a timeout per read cost a stream 3% of its CPU)."""

    __slots__ = ("_timer", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, hold: float) -> None:
        self._waiter: asyncio.Future[None] | None = loop.create_future()
        self._timer = loop.call_later(hold, self._wake)

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, read: asyncio.Future[bytes]) -> bool:
        """Whether ``read`` finished before the hold ran out."""
        waiter = self._waiter
        if waiter is None or waiter.done():  # the hold is over
            return read.done()
        read.add_done_callback(self._wake)
        await waiter
        if not read.done():
            self._waiter = None
            return False
        self._waiter = read.get_loop().create_future()
        return True

    def stop(self) -> None:
        self._timer.cancel()


def _drop(read: asyncio.Future[bytes]) -> None:
    """Stop a read nobody will await: cancel it, or take its error so none is logged unseen."""
    if not read.done():
        read.cancel()
    elif not read.cancelled():
        read.exception()


async def _replay(
    buffered: list[bytes], pending: asyncio.Future[bytes] | None, rest: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    try:
        for chunk in buffered:
            yield chunk
        if pending is not None:
            try:
                chunk = await pending
            except StopAsyncIteration:
                return
            yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        if pending is not None:
            _drop(pending)


def _body_error_type(response: ProviderResponse | None) -> str | None:
    if response is None or response.status < 400:
        return None
    try:
        error = _body_decoder.decode(response.body or b"").error
    except DECODE_ERRORS:
        return None
    return error.type if error else None


@dataclass(slots=True)
class _Chain:
    """One run of :func:`run_chain`: its clock, its attempts, and the failure it holds."""

    send: Callable[[Target], Awaitable[ProviderResponse]]
    policy: RetryPolicy
    breaker: CircuitBreaker | None
    stream: bool
    sleep: Callable[[float], Awaitable[object]]
    clock: Callable[[], float]
    random: Callable[[], float]
    attempts: list[Attempt]
    # The caller's, or one made when a stream is first held (never, for JSON requests).
    held: HeldStream | None
    started: float = field(init=False)
    failure: _Failure | None = field(init=False, default=None)
    out_of_time: bool = field(init=False, default=False)
    # Seconds until the first skipped (open) target takes a trial again.
    first_trial_in: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def expired(self) -> bool:
        return self.out_of_time or self.clock() - self.started >= self.policy.deadline

    def allowed(self, target: Target) -> bool:
        breaker = self.breaker
        if breaker is None or breaker.allow(target.name):
            return True
        self.attempts.append(Attempt(target.name, None, "circuit_open", 0.0))
        wait = breaker.seconds_until_trial(target.name)
        earliest = self.first_trial_in
        self.first_trial_in = wait if earliest is None else min(earliest, wait)
        return False

    async def try_target(self, target: Target) -> ProviderResponse | None:
        """Up to ``attempts_per_target`` tries: the response to relay, or ``None`` to move on."""
        for retry in range(self.policy.attempts_per_target):
            if retry:
                delay = self._delay_before_retry(retry - 1)
                if delay is None:
                    return None
                await self.sleep(delay)
            if self.expired() or not self.allowed(target):
                return None
            response = await self.attempt(target)
            if response is not None:
                return response
        return None

    def _delay_before_retry(self, retry_index: int) -> float | None:
        retry_after = self.failure.retry_after if self.failure else None
        if _waits_too_long(self.policy, retry_after):
            return None
        delay = backoff_delay(retry_index, self.policy, retry_after, self.random())
        if self.clock() - self.started + delay > self.policy.deadline:
            return None
        return delay

    async def attempt(self, target: Target) -> ProviderResponse | None:
        """One try: the response to relay, or ``None`` after recording a failure."""
        # Whatever this try brings supersedes the failure held for the client.
        previous, self.failure = self.failure, None
        await self.discard(previous)
        began = self.clock()
        remaining = self.policy.deadline - (began - self.started)
        deadline = asyncio.timeout(remaining)
        try:
            async with deadline:
                outcome = await self._send_and_judge(target)
        except TimeoutError:
            if not deadline.expired():
                raise
            self.out_of_time = True
            message = f"No upstream answered within the {self.policy.deadline:g} s deadline."
            status, usage = self._release_held(target)
            outcome = _Failure(target, status, UpstreamTimeoutError(message), usage=usage)
        except GatewayError as exc:
            status, usage = self._release_held(target)
            if exc.status not in self.policy.retry_statuses:
                duration = self.clock() - began
                self.attempts.append(Attempt(target.name, status, exc.error_type, duration, usage))
                raise
            retry_after = retry_after_seconds(exc.headers)
            outcome = _Failure(target, status, exc, retry_after=retry_after, usage=usage)
        except asyncio.CancelledError:
            # The client left. A held stream stays in ``held`` for the caller to bill.
            status, usage = self._held_by(target)
            duration = self.clock() - began
            self.attempts.append(
                Attempt(target.name, status, "client_disconnected", duration, usage)
            )
            raise
        duration = self.clock() - began
        if isinstance(outcome, _Failure):
            self._record_failure(outcome, duration)
            return None
        self._record_answer(target, outcome, duration)
        return outcome

    async def _send_and_judge(self, target: Target) -> ProviderResponse | _Failure:
        response = await self.send(target)
        try:
            outcome = await self._judge(target, response)
        except BaseException:
            await response.close()
            raise
        if isinstance(outcome, _Failure) and outcome.response is None:
            await response.close()
        return outcome

    async def _judge(
        self, target: Target, response: ProviderResponse
    ) -> ProviderResponse | _Failure:
        if response.status in self.policy.retry_statuses and not _forbids_retry(response):
            retry_after = retry_after_seconds(response.headers)
            return _Failure(target, response.status, response=response, retry_after=retry_after)
        if not self.stream or response.chunks is None or not 200 <= response.status < 300:
            return response
        chunks = aiter(response.chunks)
        policy = self.policy
        # Kept for the caller, who reads the usage in message_start from it should the client
        # leave while the stream is held: the upstream bills those input tokens all the same.
        buffered: list[bytes] = []
        holder = self.held
        if holder is None:
            holder = self.held = HeldStream()
        holder.target, holder.chunks = target, buffered
        error, pending = await _peek_stream(
            chunks, policy.retry_statuses, policy.stream_hold, buffered
        )
        if error is not None:
            if error.status not in policy.retry_statuses:
                # A client error (a prompt too long, a bad key) is the answer another try
                # would get too. Nothing has reached the client: it gets the error's own
                # status, as Anthropic reports such errors, and its SDK the typed exception.
                error.upstream_request_id = _request_id(response)
                raise error
            status, usage = self._release_held(target)
            return _Failure(target, status, error, usage=usage)
        # Committed: from here the relay observes these chunks (replayed) for the usage.
        holder.target = None
        replayed = _replay(buffered, pending, chunks)
        close = response.close
        if pending is not None:
            # The replay drops the read once it runs, but it may never run (the client gone).
            async def close() -> None:
                _drop(pending)
                await response.close()

        return ProviderResponse(
            response.status, response.headers, chunks=replayed, close=close, ended=response.ended
        )

    def _held_by(self, target: Target) -> tuple[int | None, TokenUsage | None]:
        """For ``target``'s attempt: the status its held stream was answered with and the
        usage it reported (``None`` for either when no stream of its is held)."""
        held = self.held
        if held is None or held.target is not target:
            return None, None
        usage = observed_usage(held.chunks)
        return 200, (None if usage == _NO_USAGE else usage)

    def _release_held(self, target: Target) -> tuple[int | None, TokenUsage | None]:
        """Stop holding ``target``'s stream, which failed; what :meth:`_held_by` says."""
        outcome = self._held_by(target)
        if outcome[0] is not None:
            assert self.held is not None
            self.held.target, self.held.chunks = None, []
        return outcome

    def _record_failure(self, failure: _Failure, duration: float) -> None:
        name, error, response = failure.target.name, failure.error, failure.response
        error_type = error.error_type if error else _body_error_type(response)
        self.attempts.append(Attempt(name, failure.status, error_type, duration, failure.usage))
        status = error.status if error else failure.status
        if self.breaker is not None and _is_target_fault(status):
            self.breaker.record_failure(name)
        self.failure = failure

    def _record_answer(self, target: Target, response: ProviderResponse, duration: float) -> None:
        self.attempts.append(
            Attempt(target.name, response.status, _body_error_type(response), duration)
        )
        if self.breaker is None:
            return
        status = response.status
        if status in self.policy.retry_statuses and _is_target_fault(status):
            self.breaker.record_failure(target.name)
        else:
            self.breaker.record_success(target.name)

    async def discard(self, failure: _Failure | None) -> None:
        if failure is not None and failure.response is not None:
            await failure.response.close()


def _request_id(response: ProviderResponse) -> str | None:
    return next((value for name, value in response.headers if name == "request-id"), None)


def _is_target_fault(status: int | None) -> bool:
    """Whether a failure says the target is unwell (no answer, a 5xx, a 529), and so counts
    for its circuit breaker. A 408, 409 or 429 is about one caller's request or quota (the
    client's own key, when keys are passed through), so it must not shut the target for all."""
    return status is None or status >= 500


def _forbids_retry(response: ProviderResponse) -> bool:
    """``x-should-retry: false``: the upstream says a retry could repeat a side effect."""
    return any(
        name.lower() == "x-should-retry" and value.strip().lower() == "false"
        for name, value in response.headers
    )


async def run_chain(
    targets: Sequence[Target],
    send: Callable[[Target], Awaitable[ProviderResponse]],
    *,
    policy: RetryPolicy,
    breaker: CircuitBreaker | None,
    stream: bool,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    random: Callable[[], float] = _random.random,
    attempts: list[Attempt] | None = None,
    held: HeldStream | None = None,
) -> ChainResult:
    """Send to ``targets`` in order, retrying and falling back, and return the answer to relay.

    Called once per client request; ``send`` is called once per attempt. An answer is final
    when its status is not in ``policy.retry_statuses`` (2xx, and client errors like 400, are
    never retried) or it says ``x-should-retry: false``. When ``stream`` is true a streamed
    answer is final only once its first content event arrives, or once ``policy.stream_hold``
    has passed without one; the returned response replays the bytes read so far, then the
    rest. When every attempt fails, the last failure is the answer: an upstream error response
    is returned intact, a raised error is raised again.
    Attempts are appended to ``attempts`` (if given) as they happen, so the log survives a raise.
    ``held`` (if given) names the stream being held back and holds the chunks read from it so
    far, for a caller cancelled meanwhile to bill its usage to the right target; a cancelled
    attempt is logged as ``client_disconnected``. A stream that fails after reporting usage
    has that usage in its attempt's ``usage``.

    Tries of one target are spaced by :func:`backoff_delay`; the next target is tried at once.
    A wait that would pass ``policy.deadline``, or a ``retry-after`` above ``max_retry_after``,
    moves on to the next target; once the deadline has passed (it also bounds each ``send`` and
    each stream's wait for content) the chain stops. A stream that opens with an ``error``
    event of a type whose status is not retryable (a prompt too long, a bad key) raises that
    error at once, to be answered with its status. With a ``breaker``, open targets are
    skipped (logged as ``circuit_open``); an attempt that got no answer, a 5xx or a 529 counts
    against its target, even as a final answer (``x-should-retry: false``); a 408, 409 or 429
    is about one caller and counts for nothing; any other final answer resets it; a
    non-retryable error, raised by ``send`` or read from a stream, leaves it as it was.

    Raises a non-retryable :class:`GatewayError` from ``send`` at once, the last retryable one
    when nothing better came, and :class:`OverloadedError` when the breaker skipped every
    target (with ``retry-after``: when the first of them takes a trial). ``ValueError`` if
    ``targets`` is empty. On cancellation, whatever upstream response is open is closed before
    ``CancelledError`` propagates. The returned response must be closed by the caller, as any
    ``ProviderResponse``.
    """
    if not targets:
        raise ValueError("run_chain needs at least one target")
    log = [] if attempts is None else attempts
    chain = _Chain(send, policy, breaker, stream, sleep, clock, random, log, held)
    try:
        for target in targets:
            response = await chain.try_target(target)
            if response is not None:
                return ChainResult(response, target, chain.attempts, target != targets[0])
            if chain.expired():
                break
    except BaseException:
        await chain.discard(chain.failure)
        raise
    return _last_failure(chain, targets[0])


def _last_failure(chain: _Chain, first: Target) -> ChainResult:
    failure = chain.failure
    if failure is None:
        wait = math.ceil(chain.first_trial_in or 0.0)
        raise OverloadedError(
            "All upstream targets are temporarily unavailable (circuit open)",
            headers={"retry-after": str(max(wait, 1))},
        )
    if failure.response is None:
        assert failure.error is not None
        raise failure.error
    return ChainResult(failure.response, failure.target, chain.attempts, failure.target != first)
