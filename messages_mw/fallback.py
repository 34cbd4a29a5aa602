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
import functools
import logging
import math
import random as _random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from .breaker import BreakerPolicy, BreakerState, CircuitBreaker
from .context import Attempt
from .errors import (
    GatewayError,
    OverloadedError,
    UnsupportedByProviderError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from .protocol import DECODE_ERRORS, ObservedResponse
from .providers.base import ProviderResponse, UpstreamReport, nothing_reported
from .retry import RetryPolicy, backoff_delay, retry_after_seconds, waits_too_long
from .shared_timer import SharedTimer
from .stream_peek import peek_stream, replay_stream, stop_read, telling_first_verdict
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
    "deadline_passed",
    "retry_after_seconds",
    "run_chain",
]

_body_decoder = msgspec.json.Decoder(ObservedResponse)
_NO_USAGE = TokenUsage()
# What a fallback target answers when its own configuration is wrong: its key (401, 403) or
# its model (404).
_BACKUP_MISCONFIGURED = frozenset({401, 403, 404})

logger = logging.getLogger("messages_mw")


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One place to send a request: a configured provider's name and the model to ask for."""

    provider: str
    model: str

    @property
    def name(self) -> str:
        """``provider/model``, the key of the circuit breaker and of the attempts log."""
        return f"{self.provider}/{self.model}"


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
    # The held response's provider report: whether the usage in its chunks is the
    # upstream's (a translating provider's message_start carries its own estimate).
    reported: Callable[[], UpstreamReport] = nothing_reported


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


def deadline_passed(seconds: float) -> UpstreamTimeoutError:
    """The 504 for a request whose overall deadline (:attr:`RetryPolicy.deadline`) passed."""
    return UpstreamTimeoutError(f"No upstream answered within the {seconds:g} s deadline.")


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
    timer: SharedTimer
    # Whether an open circuit lets the request through: it has no other target to move to,
    # and the breaker's policy says to try it then (BreakerPolicy.sole_target).
    open_circuit_tried: bool
    started: float = field(init=False)
    failure: _Failure | None = field(init=False, default=None)
    out_of_time: bool = field(init=False, default=False)
    # Seconds until the first skipped (open) target takes a trial again.
    first_trial_in: float | None = field(init=False, default=None)
    # When the circuit trial the current attempt holds began (None: it holds none).
    trial: float | None = field(init=False, default=None)
    # Set when the last attempt's target may not be tried again for this request: it refused
    # the request (UnsupportedByProviderError) or said x-should-retry: false.
    done_with_target: bool = field(init=False, default=False)
    # Set when the answer is a stream handed over once the hold ran out, before any content:
    # it proves the target neither well nor unwell.
    unproven: bool = field(init=False, default=False)
    # The latest failure that was an upstream's answer (its status, its retry-after), kept
    # whole: should the chain end on a failure with no answer of its own (see _is_answer),
    # it tells the client more.
    answered: _Failure | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def expired(self) -> bool:
        return self.out_of_time or self.clock() - self.started >= self.policy.deadline

    def allowed(self, target: Target) -> bool:
        breaker = self.breaker
        if breaker is None:
            return True
        if breaker.allow(target.name):
            self.trial = breaker.trial_started_at(target.name)  # ours, if one is under way
            return True
        if self.open_circuit_tried:
            # No trial of ours: a success closes the circuit all the same, a failure
            # restarts its cooldown.
            self.trial = None
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
            if self.done_with_target:  # another try at it would not do better (see its setters)
                self.done_with_target = False
                return None
        return None

    def _delay_before_retry(self, retry_index: int) -> float | None:
        retry_after = self.failure.retry_after if self.failure else None
        if waits_too_long(self.policy, retry_after):
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
        if previous is not None and _is_answer(previous):
            self.answered = previous  # read whole: closing it left its body to relay
        began = self.clock()
        remaining = self.policy.deadline - (began - self.started)
        deadline = self.timer.timeout(remaining)
        try:
            async with deadline:
                outcome = await self._send_and_judge(target)
        except UnsupportedByProviderError as exc:
            self._record_refusal(target, exc, previous, self.clock() - began)
            return None
        except TimeoutError:
            if not deadline.expired():  # a provider's own, not the chain's deadline
                self._record_provider_bug(target, began)
                raise
            self.out_of_time = True
            status, usage = self._release_held(target)
            outcome = _Failure(target, status, deadline_passed(self.policy.deadline), usage=usage)
        except GatewayError as exc:
            status, usage = self._release_held(target)
            status, usage = status or exc.upstream_status, usage or exc.usage
            if exc.status not in self.policy.retry_statuses:
                duration = self.clock() - began
                self.attempts.append(Attempt(target.name, status, exc.error_type, duration, usage))
                exc.usage = usage  # the attempt's own object: the answer bills it, once
                if self.breaker is not None:
                    self.breaker.release_trial(target.name, self.trial)
                exc.target_name = target.name
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
            if self.breaker is not None:
                # Says nothing of the target: the next request may take the trial at once.
                self.breaker.release_trial(target.name, self.trial)
            raise
        except Exception:
            self._record_provider_bug(target, began)
            raise
        duration = self.clock() - began
        if isinstance(outcome, _Failure):
            self._record_failure(outcome, duration)
            return None
        if (
            outcome.status in _BACKUP_MISCONFIGURED
            and previous is not None
            and previous.target is not target
        ):
            await self._pass_over_misconfigured(target, outcome, previous, duration)
            return None
        self._record_answer(target, outcome, duration)
        return outcome

    async def _pass_over_misconfigured(
        self, target: Target, response: ProviderResponse, previous: _Failure, duration: float
    ) -> None:
        """A fallback ``target`` answered 401, 403 or 404 after an earlier target failed: its
        key or model is wrong (a stale key, a retired model on a rarely used backup), which
        says nothing of the client's request. The chain moves on, and the failure the client
        gets stays the earlier one, which its SDK retries, rather than an error that looks
        like the client's own credentials failing and is never retried."""
        self.attempts.append(
            Attempt(target.name, response.status, _body_error_type(response), duration)
        )
        if self.breaker is not None:
            self.breaker.release_trial(target.name, self.trial)
        logger.warning(
            "fallback target %s answered %d: check its key and model; the client gets the "
            "failure of %s instead",
            target.name,
            response.status,
            previous.target.name,
        )
        if previous.response is None or previous.response.body is not None:
            self.failure = previous
            await response.close()
        else:
            self.failure = _Failure(target, response.status, response=response)
        self.done_with_target = True

    def _record_provider_bug(self, target: Target, began: float) -> None:
        """A provider's own error (not a GatewayError): a 500 for the client, logged by the
        app. The attempt goes on record, and a trial it held is free for the next request
        rather than blocked for a cooldown."""
        status, usage = self._release_held(target)
        duration = self.clock() - began
        self.attempts.append(Attempt(target.name, status, "api_error", duration, usage))
        if self.breaker is not None:
            self.breaker.release_trial(target.name, self.trial)

    def _record_refusal(
        self,
        target: Target,
        refusal: UnsupportedByProviderError,
        previous: _Failure | None,
        duration: float,
    ) -> None:
        """``target`` refused the request before sending it: the chain moves on, and the
        failure the client would get stays the one before, if any (a 529 the SDK retries,
        rather than a 400 about what one target cannot express). A failure's upstream answer
        was read whole, so closing it left its body to relay."""
        self.attempts.append(Attempt(target.name, None, refusal.error_type, duration))
        if self.breaker is not None:
            self.breaker.release_trial(target.name, self.trial)
        keep = previous is not None and (
            previous.response is None or previous.response.body is not None
        )
        self.failure = previous if keep else _Failure(target, None, refusal)
        self.done_with_target = True

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
        self.unproven = False
        # Only an error status can be one (400-599): a 2xx skips the scan of the tuple.
        if response.status >= 400 and response.status in self.policy.retry_statuses:
            # x-should-retry: false rules out this target again, not the next one: a gateway
            # chained behind another gets it with a spent budget, which a backup does not share.
            self.done_with_target = _forbids_retry(response)
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
        holder.target, holder.chunks, holder.reported = target, buffered, response.reported
        error, pending = await peek_stream(
            chunks,
            policy.retry_statuses,
            policy.stream_hold,
            buffered,
            policy.first_byte_timeout,
            timer=self.timer,
            ready=response.ready,
        )
        if error is not None:
            # Should it be the answer the client gets, its request-id is the upstream's, as
            # for an error status.
            error.upstream_request_id = _request_id(response)
            # And the upstream's other headers (its rate-limit state above all), as an error
            # status would have had them; the stream's own content-type is not the error's.
            error.headers = {**_headers_for_error(response), **error.headers}
            if error.status not in policy.retry_statuses:
                # A client error (a prompt too long, a bad key) is the answer another try
                # would get too. Nothing has reached the client: it gets the error's own
                # status, as Anthropic reports such errors, and its SDK the typed exception.
                raise error
            status, usage = self._release_held(target)
            return _Failure(target, status, error, usage=usage)
        # Committed: from here the relay observes these chunks (replayed) for the usage.
        holder.target = None
        self.unproven = pending is not None
        replayed = replay_stream(buffered, pending, chunks)
        close = response.close
        if pending is not None:
            # The replay drops the read once it runs, but it may never run (the client gone).
            async def close() -> None:
                try:
                    await stop_read(pending)
                finally:
                    await response.close()

        if self.unproven and self.breaker is not None:
            # Handed over before any content: what it sends next tells the breaker, and a
            # trial stays taken until then. Closed with no verdict (its client gone), it
            # frees the trial for the next request; after one, releasing changes nothing.
            replayed = telling_first_verdict(replayed, self._later_verdict(target))
            release = functools.partial(self.breaker.release_trial, target.name, self.trial)
            close = _then(close, release)

        return ProviderResponse(
            response.status,
            response.headers,
            chunks=replayed,
            close=close,
            ended=response.ended,
            reported=response.reported,
        )

    def _later_verdict(self, target: Target) -> Callable[[GatewayError | None], None]:
        """What a stream handed over before its content later proves, told to the breaker: a
        content event, success; a retryable error the target is at fault for, a failure."""
        breaker, retry_statuses, trial = self.breaker, self.policy.retry_statuses, self.trial
        assert breaker is not None

        def tell(error: GatewayError | None) -> None:
            if error is None:
                breaker.record_success(target.name)
            elif (
                error.status in retry_statuses
                and error.blames_target
                and _is_target_fault(error.status)
            ):
                breaker.record_failure(target.name)
            else:  # says nothing of the target's health: the next request may take the trial
                breaker.release_trial(target.name, trial)

        return tell

    def _held_by(self, target: Target) -> tuple[int | None, TokenUsage | None]:
        """For ``target``'s attempt: the status its held stream was answered with and the
        usage it reported (``None`` for either when no stream of its is held)."""
        held = self.held
        if held is None or held.target is not target:
            return None, None
        usage = observed_usage(held.chunks)
        return 200, (None if usage == _NO_USAGE else usage)

    def _release_held(self, target: Target) -> tuple[int | None, TokenUsage | None]:
        """Stop holding ``target``'s stream, which failed; what :meth:`_held_by` says, but
        no usage when the upstream reported none: a translating provider's estimate is not
        what a failed upstream bills (a refusal bills nothing)."""
        status, usage = self._held_by(target)
        if status is not None:
            held = self.held
            assert held is not None
            if usage is not None and not held.reported().usage_seen:
                usage = None
            held.target, held.chunks = None, []
        return status, usage

    def _record_failure(self, failure: _Failure, duration: float) -> None:
        name, error, response = failure.target.name, failure.error, failure.response
        error_type = error.error_type if error else _body_error_type(response)
        self.attempts.append(Attempt(name, failure.status, error_type, duration, failure.usage))
        status = error.status if error else failure.status
        if self.breaker is not None:
            if (error is None or error.blames_target) and _is_target_fault(status):
                self.breaker.record_failure(name)
            else:
                self.breaker.release_trial(name, self.trial)
        self.failure = failure

    def _record_answer(self, target: Target, response: ProviderResponse, duration: float) -> None:
        self.attempts.append(
            Attempt(target.name, response.status, _body_error_type(response), duration)
        )
        if self.breaker is None:
            return
        status = response.status
        if status >= 400 and status in self.policy.retry_statuses and _is_target_fault(status):
            self.breaker.record_failure(target.name)
        elif self.unproven:
            # A head and then nothing (or nothing yet) must not close a circuit, or keep
            # one closed on a target that hangs after its head: the stream's first content
            # will (see _later_verdict), and until then the trial stays taken, or each
            # request behind it would be handed to the still-failing target as a new trial.
            pass
        else:
            self.breaker.record_success(target.name)

    async def discard(self, failure: _Failure | None) -> None:
        if failure is not None and failure.response is not None:
            await failure.response.close()


def _then(
    close: Callable[[], Awaitable[None]], after: Callable[[], object]
) -> Callable[[], Awaitable[None]]:
    """``close``, then ``after()`` whatever became of it."""

    async def close_then() -> None:
        try:
            await close()
        finally:
            after()

    return close_then


def _is_answer(failure: _Failure) -> bool:
    """Whether a failure is an upstream's own answer, kept whole (an error status, its body
    read; an error event of a kind the client's SDK acts on), rather than the gateway's
    account of none: unreachable, silent, cut off after its head."""
    if failure.response is not None:
        return failure.response.body is not None
    no_answer = (UpstreamTimeoutError, UpstreamUnavailableError)
    return failure.status is not None and not isinstance(failure.error, no_answer)


def _headers_for_error(response: ProviderResponse) -> dict[str, str]:
    return {name: value for name, value in response.headers if name not in _NOT_ERROR_HEADERS}


# Set on an error answer by the gateway itself (request-id from upstream_request_id).
_NOT_ERROR_HEADERS = frozenset({"content-type", "request-id"})


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
    timer: SharedTimer | None = None,
) -> ChainResult:
    """Send to ``targets`` in order, retrying and falling back, and return the answer to relay.

    Called once per client request; ``send`` is called once per attempt. An answer is final
    when its status is not in ``policy.retry_statuses`` (2xx, and client errors like 400, are
    never retried); one that says ``x-should-retry: false`` is not retried at its target but
    falls back to the next, and a target that raises :class:`UnsupportedByProviderError` is
    skipped the same way (the failure before it stays the answer). When ``stream`` is true a
    streamed answer is final only once its first content event arrives, or once
    ``policy.stream_hold`` has passed without one; the returned response replays the bytes
    read so far, then the rest. When every attempt fails, the last failure is the answer (but
    when the last target gave no answer of its own, being unreachable, silent or cut off
    after its head, the latest upstream answer before it is): an upstream error response is
    returned intact, a raised error is raised again.
    Attempts are appended to ``attempts`` (if given) as they happen, so the log survives a raise.
    ``held`` (if given) names the stream being held back and holds the chunks read from it so
    far, for a caller cancelled meanwhile to bill its usage to the right target; a cancelled
    attempt is logged as ``client_disconnected``. A stream that fails after reporting usage
    has that usage in its attempt's ``usage``. ``timer`` times the attempts and the streams'
    holds; a gateway shares one between its requests.

    Tries of one target are spaced by :func:`backoff_delay`; the next target is tried at once.
    A wait that would pass ``policy.deadline``, or a ``retry-after`` above ``max_retry_after``,
    moves on to the next target; once the deadline has passed (it also bounds each ``send`` and
    each stream's wait for content) the chain stops. A stream that opens with an ``error``
    event of a type whose status is not retryable (a prompt too long, a bad key) raises that
    error at once, to be answered with its status. With a ``breaker``, open targets are
    skipped (logged as ``circuit_open``); an attempt that got no answer, a 5xx or a 529 counts
    against its target, ``x-should-retry: false`` or not; a 408, 409 or 429
    is about one caller and counts for nothing; any other final answer resets it (a stream
    handed over before its first content event, once that content comes); a non-retryable
    error, raised by ``send`` or read from a stream, leaves it as it was.

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
    timer = timer or SharedTimer()
    open_circuit_tried = (
        breaker is not None
        and breaker.policy.sole_target == "try"
        and all(target == targets[0] for target in targets)
    )
    chain = _Chain(
        send, policy, breaker, stream, sleep, clock, random, log, held, timer, open_circuit_tried
    )
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


def _is_refusal(failure: _Failure) -> bool:
    """Whether ``failure`` is a target refusing, before sending, what it cannot express."""
    return failure.response is None and isinstance(failure.error, UnsupportedByProviderError)


def _last_failure(chain: _Chain, first: Target) -> ChainResult:
    failure = chain.failure
    if failure is not None and not _is_answer(failure) and chain.answered is not None:
        # The last target gave no answer (unreachable, silent, cut off): an earlier
        # upstream's answer, a 429 with its retry-after say, is what the client's SDK can
        # act on.
        failure = chain.answered
    if failure is None or (_is_refusal(failure) and chain.first_trial_in is not None):
        # Nothing answered, and a target skipped for its open circuit may serve it soon: a
        # 529 the SDK retries, not a refusal of what one fallback target cannot express.
        wait = math.ceil(chain.first_trial_in or 0.0)
        raise OverloadedError(
            "All upstream targets are temporarily unavailable (circuit open)",
            headers={"retry-after": str(max(wait, 1))},
        )
    if failure.response is None:
        assert failure.error is not None
        failure.error.target_name = failure.target.name
        # The attempt's own usage object: the answer bills it, and only once.
        failure.error.usage = failure.usage
        raise failure.error
    return ChainResult(failure.response, failure.target, chain.attempts, failure.target != first)
