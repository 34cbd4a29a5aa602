"""SSE relay in process: bytes untouched, failures become error events, disconnects close."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages_mw import (
    AnthropicProvider,
    Gateway,
    GatewayConfig,
    LimitRule,
    LimitsConfig,
    RequestContext,
    UpstreamConfig,
    UsageEvent,
)
from messages_mw.context import Attempt, billed_beside_answer
from messages_mw.errors import UpstreamUnavailableError
from messages_mw.limits import RateLimiter
from messages_mw.pricing import ModelPrice, PricingTable
from messages_mw.providers.base import ProviderResponse
from messages_mw.relay import StallWatch, relay_stream
from messages_mw.retry import RetryPolicy
from messages_mw.routing import FallbackConfig
from messages_mw.streaming import MAX_EVENT_BYTES, TokenUsage

from .inprocess import Recorder, client_for, make_gateway, post_scope, run
from .servers import message_json, sse, text_stream_events

STREAM_REQUEST = json.dumps(
    {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
).encode()
# The scope of a streamed POST /v1/messages, for tests that drive the ASGI app directly.
MESSAGES_SCOPE = post_scope()
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "request-id": "req_up"}
_EVENTS = text_stream_events(["a", "b"])
_STREAM = b"".join(_EVENTS)


def _streaming(chunks: list[bytes], failure: Exception | None = None) -> Recorder:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
        if failure is not None:
            raise failure

    return Recorder(lambda request: httpx.Response(200, headers=SSE_HEADERS, content=body()))


async def _collect(gateway: object) -> tuple[httpx.Response, bytes]:
    transport = httpx.ASGITransport(gateway)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.post("/v1/messages", content=STREAM_REQUEST)
        return response, response.content


def test_stream_is_relayed_byte_for_byte_with_unknown_events() -> None:
    future = sse("future_event", {"type": "future_event", "payload": [1, 2]})
    odd_delta = sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "hologram_delta", "z": 1}},
    )
    events = text_stream_events(["a", "b"])
    events[3:3] = [future, odd_delta]
    gateway, finished = make_gateway(_streaming(events))
    response, body = run(_collect(gateway))
    assert body == b"".join(events)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == "req_up"
    assert finished[0].usage.output_tokens == 2
    assert finished[0].error_type is None


def _last_event(body: bytes) -> dict[str, object]:
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    name, data = last.split(b"\n", 1)
    assert name == b"event: error"
    payload: dict[str, object] = json.loads(data.removeprefix(b"data: "))
    return payload


def test_connection_lost_mid_stream_ends_with_an_error_event() -> None:
    events = text_stream_events(["a", "b"])[:4]
    failure = httpx.ReadError("reset")
    gateway, finished = make_gateway(_streaming(events, failure))
    _, body = run(_collect(gateway))
    assert body.startswith(b"".join(events))
    error = _last_event(body)
    assert error["error"] == {
        "type": "api_error",
        "message": "The connection to the upstream 'anthropic' broke mid-stream.",
    }
    assert finished[0].usage.input_tokens == 12
    assert finished[0].error_type == "api_error"


def test_idle_upstream_mid_stream_is_a_timeout_error_event() -> None:
    events = text_stream_events(["a"])[:3]
    gateway, _ = make_gateway(_streaming(events, httpx.ReadTimeout("idle")))
    _, body = run(_collect(gateway))
    assert _last_event(body)["error"]["type"] == "timeout_error"  # type: ignore[index]


def test_truncated_stream_without_message_stop_gets_an_error_event() -> None:
    events = text_stream_events(["a"])[:-1]
    gateway, _ = make_gateway(_streaming(events))
    response, body = run(_collect(gateway))
    error = _last_event(body)
    assert error["error"]["type"] == "api_error"  # type: ignore[index]
    # One request, one id: the SDK reports the header's, so the event names the same.
    assert error["request_id"] == response.headers["request-id"] == "req_up"


def test_a_message_stop_without_an_event_line_does_not_end_the_stream() -> None:
    # The SDKs drop an event without an ``event:`` line: the client saw no end.
    events = [*text_stream_events(["a"])[:-1], b'data: {"type":"message_stop"}\n\n']
    gateway, finished = make_gateway(_streaming(events))
    _, body = run(_collect(gateway))
    assert body.startswith(b"".join(events))
    assert _last_event(body)["error"]["type"] == "api_error"  # type: ignore[index]
    assert finished[0].error_type == "api_error"


def test_an_error_without_an_event_line_reaches_the_client_as_an_error_event() -> None:
    unnamed = b'data: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'
    events = [*text_stream_events(["a"])[:4], unnamed]
    gateway, finished = make_gateway(_streaming(events))
    _, body = run(_collect(gateway))
    assert body.startswith(b"".join(events))
    error = _last_event(body)["error"]
    assert error == {"type": "overloaded_error", "message": "busy"}
    assert finished[0].error_type == "overloaded_error"


def test_half_an_event_never_reaches_the_client() -> None:
    # The break comes after content reached the client (before that, the gateway would
    # answer with a plain error response or fall back instead). Half an event, terminated,
    # would reach the SDK as broken JSON instead of the error that follows it.
    events = text_stream_events(["a"])
    whole = b"".join(events[:3])
    gateway, finished = make_gateway(_streaming([whole + events[3][:10]], httpx.ReadError("r")))
    _, body = run(_collect(gateway))
    assert body.startswith(whole + b"event: error\n")
    assert _last_event(body)["error"]["type"] == "api_error"  # type: ignore[index]
    assert finished[0].error_type == "api_error"


def test_an_event_that_never_ends_is_cut_off_with_an_error_event() -> None:
    # Held back until complete, one event without its blank line would otherwise grow the
    # gateway's memory for as long as the upstream kept sending.
    sent: list[int] = []
    head = b"".join(text_stream_events(["a"])[:3])

    async def endless() -> AsyncIterator[bytes]:
        yield head + b'event: content_block_delta\ndata: {"type":"content_block_delta","x":"'
        while True:
            sent.append(1)
            yield b"x" * (1 << 20)

    recorder = Recorder(lambda request: httpx.Response(200, headers=SSE_HEADERS, content=endless()))
    gateway, finished = make_gateway(recorder)
    _, body = run(_collect(gateway))
    assert body.startswith(head + b"event: error\n")
    assert "without ending it" in _last_event(body)["error"]["message"]  # type: ignore[index]
    assert len(sent) <= MAX_EVENT_BYTES // (1 << 20) + 1
    assert finished[0].error_type == "api_error"


@pytest.mark.parametrize("complete", [True, False], ids=["ends-with-stop", "cut-before-stop"])
def test_events_before_an_endless_one_in_the_same_read_still_reach_the_client(
    complete: bool,
) -> None:
    # One read can hold whole events and the start of one past the limit (a transport that
    # reads big); the whole ones must not be lost with it.
    events = text_stream_events(["a"])
    whole = b"".join(events if complete else events[:3])
    endless = b"data: " + b"z" * (MAX_EVENT_BYTES + 1)
    gateway, finished = make_gateway(_streaming([whole + endless]))
    _, body = run(_collect(gateway))
    if complete:
        assert body == whole  # the answer is whole; what follows message_stop is not relayed
        assert finished[0].error_type is None
    else:
        assert body.startswith(whole + b"event: error\n")
        assert "without ending it" in _last_event(body)["error"]["message"]  # type: ignore[index]


def test_an_unterminated_message_stop_ends_the_stream_cleanly() -> None:
    # Without its blank line the client would drop message_stop; the gateway ends it instead
    # of calling a complete answer broken.
    stream = b"".join(text_stream_events(["a", "b"])).removesuffix(b"\n")
    gateway, finished = make_gateway(_streaming([stream]))
    _, body = run(_collect(gateway))
    assert body == stream + b"\n\n"
    assert finished[0].error_type is None


def test_an_unterminated_message_delta_is_relayed_before_the_error_event() -> None:
    events = text_stream_events(["a", "b"])
    stream = b"".join(events[:-1]).removesuffix(b"\n")
    gateway, finished = make_gateway(_streaming([stream]))
    _, body = run(_collect(gateway))
    assert body.startswith(stream + b"\n\nevent: error\n")
    assert finished[0].usage.output_tokens == 2
    assert finished[0].error_type == "api_error"


def test_connection_lost_after_message_stop_leaves_the_complete_stream_alone() -> None:
    # SDKs read past message_stop and raise on an error event: one added here would turn a
    # complete answer into an exception.
    events = text_stream_events(["a", "b"])
    gateway, finished = make_gateway(_streaming(events, httpx.RemoteProtocolError("closed")))
    _, body = run(_collect(gateway))
    assert body == b"".join(events)
    assert finished[0].error_type is None
    assert finished[0].usage.output_tokens == 2


def test_connection_lost_after_an_upstream_error_event_adds_no_second_error() -> None:
    error = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "o"}})
    events = [*text_stream_events(["a"])[:4], error]
    gateway, finished = make_gateway(_streaming(events, httpx.ReadError("reset")))
    _, body = run(_collect(gateway))
    assert body == b"".join(events)
    assert finished[0].error_type == "overloaded_error"


def test_upstream_error_event_after_content_is_relayed_as_is() -> None:
    error = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "o"}})
    events = [*text_stream_events(["a"])[:4], error]
    gateway, finished = make_gateway(_streaming(events))
    _, body = run(_collect(gateway))
    assert body == b"".join(events)
    assert finished[0].error_type == "overloaded_error"


def test_upstream_error_event_before_content_becomes_a_typed_error_response() -> None:
    # Nothing reached the client yet, so it gets a real status its SDK can retry on.
    error = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "o"}})
    gateway, finished = make_gateway(_streaming([*text_stream_events(["a"])[:2], error]))
    response, _ = run(_collect(gateway))
    assert response.status_code == 529
    assert response.json()["error"] == {"type": "overloaded_error", "message": "o"}
    assert finished[0].error_type == "overloaded_error"


@pytest.mark.parametrize("streaming", [True, False])
def test_an_upstream_ignoring_the_stream_flag_is_a_502_not_a_silent_mismatch(
    streaming: bool,
) -> None:
    # Relayed as it came, a JSON answer to a stream request gave the SDK a stream of no
    # events and no error, and an SSE answer to a plain request gave it a string.
    def wrong_kind(request: httpx.Request) -> httpx.Response:
        if streaming:
            json_headers = {"content-type": "application/json"}
            return httpx.Response(200, headers=json_headers, content=b"{}")
        return httpx.Response(200, headers=SSE_HEADERS, content=_STREAM)

    gateway, finished = make_gateway(Recorder(wrong_kind))
    body = {**json.loads(STREAM_REQUEST), "stream": streaming}

    async def post() -> httpx.Response:
        async with client_for(gateway) as client:
            return await client.post("/v1/messages", json=body)

    response = run(post())
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "api_error" and "stream" in error["message"]
    assert finished[0].status == 502


Handler = Callable[[httpx.Request], httpx.Response]


def _whole_message(text: str) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        content = message_json(text, input_tokens=25, output_tokens=7)
        return httpx.Response(200, headers={"content-type": "application/json"}, content=content)

    return answer


def _streaming_from(events: Callable[[], AsyncIterator[bytes]]) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE_HEADERS, content=events())

    return answer


def _with_backup(
    primary: Handler,
    backup: Handler,
    read_timeout: float = 600.0,
    limits: LimitsConfig | None = None,
) -> tuple[Gateway, list[RequestContext]]:
    """A gateway whose primary upstream falls back to ``backup``, and its finished requests;
    the primary's model ("m", as the requests here ask) costs USD 1 per million tokens of
    input and of output, the backup's its published price."""

    def provider(handler: Handler) -> AnthropicProvider:
        settings = UpstreamConfig(base_url="http://upstream.test", read_timeout=read_timeout)
        return AnthropicProvider(settings, transport=httpx.MockTransport(handler))

    finished: list[RequestContext] = []
    config = GatewayConfig(
        fallback=FallbackConfig(default_chain=("backup/claude-haiku-4-5",)),
        pricing={"m": ModelPrice(input=1.0, output=1.0)},
        limits=limits or LimitsConfig(),
    )
    gateway = Gateway(
        config,
        provider=provider(primary),
        providers={"backup": provider(backup)},
        on_request_end=finished.append,
    )
    return gateway, finished


async def _post_plain(gateway: Gateway) -> tuple[httpx.Response, float]:
    """A request asking for no stream, and how long its answer took."""
    started = time.monotonic()
    async with client_for(gateway) as client:
        plain = {**json.loads(STREAM_REQUEST), "stream": False}
        response = await client.post("/v1/messages", json=plain)
    return response, time.monotonic() - started


def test_a_whole_message_answering_a_stream_request_keeps_its_usage_on_the_attempt() -> None:
    # The upstream billed it; the gateway discards it (and falls back, when it can): its usage
    # must still be recorded, as a failed stream's is.
    async def whole_stream() -> AsyncIterator[bytes]:
        yield _STREAM

    gateway, finished = _with_backup(_whole_message("no stream"), _streaming_from(whole_stream))
    response, _ = run(_collect(gateway))
    assert response.status_code == 200
    [first, served] = finished[0].attempts
    assert first.error_type == "api_error" and served.status == 200
    assert first.status == 200  # the upstream answered; the gateway refused its answer
    assert first.usage is not None
    assert (first.usage.input_tokens, first.usage.output_tokens) == (25, 7)


def test_a_stream_answering_a_plain_request_keeps_its_input_usage_and_is_closed_at_once() -> None:
    # The upstream bills a stream the gateway discards too. It is read only to its
    # message_start, which reports the input tokens, and then closed: reading on would hold
    # the fallback until the upstream had generated its whole answer, for nobody.
    closed: list[bool] = []

    async def endless_stream() -> AsyncIterator[bytes]:
        try:
            yield text_stream_events(["a"], input_tokens=41)[0]
            await asyncio.sleep(30)
            yield b"never sent"
        finally:
            closed.append(True)

    gateway, finished = _with_backup(_streaming_from(endless_stream), _whole_message("plain"))
    response, took = run(_post_plain(gateway))
    assert response.status_code == 200 and response.json()["content"][0]["text"] == "plain"
    assert took < 5 and closed == [True]
    [first, served] = finished[0].attempts
    assert first.error_type == "api_error" and served.status == 200
    assert first.status == 200  # the upstream answered; the gateway refused its answer
    assert first.usage is not None and first.usage.input_tokens == 41


@pytest.mark.parametrize(
    "opening", [[sse("ping", {"type": "ping"})] * 3, []], ids=["pings", "silence"]
)
def test_a_stream_answering_a_plain_request_without_message_start_does_not_hold_the_fallback(
    opening: list[bytes],
) -> None:
    # Read for its usage, a discarded stream that shows no message_start (pings, then silence;
    # or nothing at all after its head) is given up within the read timeout, not read until
    # the upstream ends it or the chain's deadline turns the client's fallback into a 504.
    async def pings_then_silence() -> AsyncIterator[bytes]:
        for event in opening:
            yield event
        await asyncio.sleep(30)
        yield b"never sent"

    primary = _streaming_from(pings_then_silence)
    gateway, finished = _with_backup(primary, _whole_message("plain"), read_timeout=0.3)
    response, took = run(_post_plain(gateway))
    assert response.status_code == 200 and response.json()["content"][0]["text"] == "plain"
    assert took < 5
    [first, served] = finished[0].attempts
    assert first.error_type == "api_error" and first.usage is None and served.status == 200


def _start_then_overloaded(input_tokens: int) -> Callable[[], AsyncIterator[bytes]]:
    """A stream that reports its input in message_start, then fails before any content."""
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}

    async def events() -> AsyncIterator[bytes]:
        yield text_stream_events(["a"], input_tokens=input_tokens)[0]
        yield sse("error", overloaded)

    return events


def test_a_stream_failing_before_content_with_no_target_left_bills_its_message_start() -> None:
    # The client gets the upstream's 529, and the upstream bills the input it reported: the
    # answer (an error) carries that usage, priced, so limits and budgets count it.
    always_overloaded = _streaming_from(_start_then_overloaded(41))
    gateway, finished = _with_backup(always_overloaded, always_overloaded)
    response, _ = run(_collect(gateway))
    assert response.status_code == 529
    context = finished[0]
    assert context.usage.input_tokens == 41 and context.served_model == "claude-haiku-4-5"
    assert context.cost is not None and context.cost > 0
    first, last = context.attempts
    assert first.usage is not None and first.usage.input_tokens == 41
    assert first.cost == pytest.approx((41 + 1) / 1e6)  # billed beside the answer
    assert last.usage is context.usage and last.cost is None  # the answer's own, once


def test_a_failed_over_stream_is_charged_to_token_and_spend_limits_beside_the_answer() -> None:
    # The backup's message is the answer (its tokens are the event's); the primary's
    # message_start was billed too, and a budget that did not count it could be overrun by
    # every request that fails over.
    key_limits = LimitsConfig(
        rules=(LimitRule(scope="tag", match="team", tokens_per_minute=10_000, spend=1.0),)
    )
    gateway, finished = _with_backup(
        _streaming_from(_start_then_overloaded(41)), _whole_message("plain"), limits=key_limits
    )

    async def two_requests() -> list[httpx.Response]:
        responses = []
        async with client_for(gateway) as client:
            for _ in range(2):
                plain = {**json.loads(STREAM_REQUEST), "stream": False}
                headers = {"x-mw-tags": "team"}
                responses.append(await client.post("/v1/messages", json=plain, headers=headers))
        return responses

    first, second = run(two_requests())
    assert first.status_code == 200 and first.json()["content"][0]["text"] == "plain"
    context = finished[0]
    assert (context.usage.input_tokens, context.usage.output_tokens) == (25, 7)
    failed, served = context.attempts
    assert failed.usage is not None and failed.cost == pytest.approx(42 / 1e6)
    assert served.usage is None
    # The second request's headers report what the first used: 41 + 1 failed over, 25 + 7
    # answered.
    assert second.headers["anthropic-ratelimit-tokens-remaining"] == str(10_000 - 74)


def test_an_error_answer_bills_the_attempt_that_gave_it_not_a_later_try() -> None:
    # Two tries at one target: the first reports its input and fails with a 529; the second
    # is never answered. The client gets the first try's 529, so its usage is the answer's
    # (the same object as on its attempt, counted once), whatever the later try brought.
    tries: list[int] = []

    def first_overloaded_then_unreachable(request: httpx.Request) -> httpx.Response:
        tries.append(1)
        if len(tries) == 1:
            return _streaming_from(_start_then_overloaded(41))(request)
        raise httpx.ConnectError("refused", request=request)

    settings = UpstreamConfig(base_url="http://upstream.test")
    transport = httpx.MockTransport(first_overloaded_then_unreachable)
    finished: list[RequestContext] = []
    retry = RetryPolicy(attempts_per_target=2, base_delay=0.0, max_delay=0.0)
    gateway = Gateway(
        GatewayConfig(fallback=FallbackConfig(retry=retry)),
        provider=AnthropicProvider(settings, transport=transport),
        on_request_end=finished.append,
    )
    response, _ = run(_collect(gateway))
    assert response.status_code == 529 and len(tries) == 2
    context = finished[0]
    first, second = context.attempts
    assert first.usage is not None and first.usage.input_tokens == 41
    assert context.usage is first.usage and second.usage is None
    assert billed_beside_answer(context) == []


def test_an_unpriced_failed_attempt_under_a_spend_budget_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # With unpriced models allowed, its cost cannot be counted: the operator is told, as for
    # an unpriced answer, rather than the budget silently missing it.
    limits = LimitsConfig(
        rules=(LimitRule(scope="tag", match="team", spend=1.0),), unpriced_models="allow"
    )
    unpriced = Attempt("anthropic/unpriced-model", 200, "api_error", 0.1, TokenUsage(9))
    context = RequestContext("req_1", "POST", "/v1/messages", tags=["team"])
    context.attempts, context.cost = [unpriced], 0.0
    with caplog.at_level(logging.WARNING, logger="messages_mw"):
        run(RateLimiter(limits).record(context))
    assert "'unpriced-model' has no price" in caplog.text


def test_a_stream_answering_count_tokens_bills_nothing() -> None:
    # Counting tokens is free: a stream answering it is a 502, with no usage read from it.
    gateway, finished = make_gateway(_streaming_from(_start_then_overloaded(41)))

    async def count() -> httpx.Response:
        async with client_for(gateway) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            return await client.post("/v1/messages/count_tokens", json=body)

    assert run(count()).status_code == 502
    [attempt] = finished[0].attempts
    assert attempt.usage is None and finished[0].usage.input_tokens == 0


def test_usage_billed_beside_the_answer_is_each_attempt_whose_usage_is_not_the_answer() -> None:
    # A client that leaves while a stream is held is billed that stream's usage as the
    # answer's, and its attempt carries the very same object: counted once, not twice.
    held = TokenUsage(input_tokens=9)
    failed_over = TokenUsage(input_tokens=5)
    context = RequestContext("req_1", "POST", "/v1/messages", usage=held)
    context.attempts = [
        Attempt("a/m", 200, "overloaded_error", 0.1, failed_over),
        Attempt("b/m", None, "rate_limit_error", 0.1),
        Attempt("c/m", 200, "client_disconnected", 0.1, held),
    ]
    assert billed_beside_answer(context) == [(context.attempts[0], failed_over)]


def test_client_disconnect_cancels_the_relay_and_closes_upstream() -> None:
    closed_at: list[float] = []

    async def endless() -> AsyncIterator[bytes]:
        try:
            start, _, first_block = text_stream_events(["a"])[:3]
            yield start + first_block
            # Then silent for 30 s at a time: only a relay cancelled by the disconnect closes
            # this promptly, so the bound below need not be tight.
            while True:
                await asyncio.sleep(30)
                yield sse("ping", {"type": "ping"})
        finally:
            closed_at.append(time.monotonic())

    recorder = Recorder(lambda request: httpx.Response(200, headers=SSE_HEADERS, content=endless()))
    gateway, finished = make_gateway(recorder)

    async def scenario() -> float:
        messages: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        await messages.put({"type": "http.request", "body": STREAM_REQUEST, "more_body": False})
        first_chunk = asyncio.Event()

        async def send(message: dict[str, object]) -> None:
            if message.get("body"):
                first_chunk.set()

        task = asyncio.ensure_future(gateway(MESSAGES_SCOPE, messages.get, send))
        await first_chunk.wait()
        disconnected = time.monotonic()
        await messages.put({"type": "http.disconnect"})
        await asyncio.wait_for(task, 3)
        return disconnected

    disconnected = run(scenario())
    assert closed_at and closed_at[0] - disconnected < 3
    assert finished[0].client_disconnected
    assert finished[0].usage.input_tokens == 12


def test_a_client_leaving_mid_answer_is_counted_for_the_text_it_got() -> None:
    # The client reads 2,000 characters of answer and leaves before message_delta, which
    # would have reported the output. The upstream billed about 500 tokens: the event (and
    # so cost and token limits) must not say 1, as message_start does.
    pieces = [f"{index:02d} lorem ipsum dolor sit amet consetur. " for index in range(50)]
    answer = text_stream_events(pieces)[: 3 + len(pieces)]

    async def long_answer() -> AsyncIterator[bytes]:
        for event in answer:
            yield event
        await asyncio.sleep(60)

    recorder = Recorder(
        lambda request: httpx.Response(200, headers=SSE_HEADERS, content=long_answer())
    )
    gateway, finished = make_gateway(recorder)

    async def scenario() -> None:
        messages: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        await messages.put({"type": "http.request", "body": STREAM_REQUEST, "more_body": False})
        received = bytearray()
        got_everything = asyncio.Event()

        async def send(message: dict[str, object]) -> None:
            received.extend(message.get("body", b""))  # type: ignore[arg-type]
            if len(received) == len(b"".join(answer)):
                got_everything.set()

        task = asyncio.ensure_future(gateway(MESSAGES_SCOPE, messages.get, send))
        await asyncio.wait_for(got_everything.wait(), 3)
        await messages.put({"type": "http.disconnect"})
        await asyncio.wait_for(task, 3)

    run(scenario())
    usage = finished[0].usage
    assert finished[0].client_disconnected
    assert (usage.output_tokens, usage.output_tokens_estimated) == (2000 // 4, True)


async def _leave_during_the_hold(gateway: Gateway, body: bytes, held: asyncio.Event) -> None:
    """Send ``body`` to ``gateway`` and disconnect once ``held`` is set (the upstream has sent
    its message_start), checking that nothing reached the client meanwhile."""
    messages: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    await messages.put({"type": "http.request", "body": body, "more_body": False})

    async def send(message: dict[str, object]) -> None:
        raise AssertionError(f"nothing reaches the client during the hold: {message}")

    task = asyncio.ensure_future(gateway(MESSAGES_SCOPE, messages.get, send))
    await held.wait()
    await messages.put({"type": "http.disconnect"})
    await asyncio.wait_for(task, 2)


def test_a_client_leaving_while_the_stream_is_held_keeps_its_usage() -> None:
    # message_start arrived, content has not: the stream is held for the fallback to judge.
    # The upstream bills the input tokens all the same, so the usage event must carry them.
    closed: list[bool] = []
    read_message_start = asyncio.Event()

    async def thinking() -> AsyncIterator[bytes]:
        try:
            yield text_stream_events(["a"])[0]
            read_message_start.set()
            await asyncio.sleep(60)
        finally:
            closed.append(True)

    recorder = Recorder(
        lambda request: httpx.Response(200, headers=SSE_HEADERS, content=thinking())
    )
    gateway, finished = make_gateway(recorder)

    run(_leave_during_the_hold(gateway, STREAM_REQUEST, read_message_start))
    assert closed == [True]
    assert finished[0].client_disconnected
    assert finished[0].usage.input_tokens == 12


@pytest.mark.parametrize("how", ["send-raises", "send-waits-then-disconnect"])
def test_a_client_gone_at_the_first_send_after_the_hold_keeps_the_held_usage(how: str) -> None:
    # The held opening events are relayed only once the response has started: a client
    # found gone at that very send (its server raising OSError, or the send waiting on a
    # full socket when the disconnect comes) must not lose the input message_start reported.
    async def answer() -> AsyncIterator[bytes]:
        for event in text_stream_events(["a"], input_tokens=100):
            await asyncio.sleep(0.01)
            yield event

    recorder = Recorder(lambda request: httpx.Response(200, headers=SSE_HEADERS, content=answer()))
    gateway, finished = make_gateway(recorder)
    started = asyncio.Event()

    async def scenario() -> None:
        messages: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        await messages.put({"type": "http.request", "body": STREAM_REQUEST, "more_body": False})

        async def send(message: dict[str, object]) -> None:
            assert message["type"] == "http.response.start", "nothing after the start"
            if how == "send-raises":
                raise OSError("connection lost")
            started.set()
            await asyncio.sleep(60)  # a paused transport: send() awaits drain()

        task = asyncio.ensure_future(gateway(MESSAGES_SCOPE, messages.get, send))
        if how != "send-raises":
            await asyncio.wait_for(started.wait(), 2)
            await messages.put({"type": "http.disconnect"})
        await asyncio.wait_for(task, 2)

    run(scenario())
    assert finished[0].client_disconnected
    assert finished[0].usage.input_tokens == 100


def test_a_client_leaving_a_held_fallback_stream_is_billed_to_its_target() -> None:
    # The primary is overloaded; the backup's stream reported its input, then thought on.
    # The client leaves: the event must name the backup and price the backup's model.
    overloaded = json.dumps({"type": "error", "error": {"type": "overloaded_error"}}).encode()
    read_message_start = asyncio.Event()

    async def thinking() -> AsyncIterator[bytes]:
        yield text_stream_events([], model="claude-haiku-4-5", input_tokens=2000)[0]
        read_message_start.set()
        await asyncio.sleep(60)

    def upstream(answer: Callable[[], httpx.Response]) -> AnthropicProvider:
        settings = UpstreamConfig(base_url="http://upstream.test", api_key="k")
        return AnthropicProvider(settings, transport=httpx.MockTransport(lambda _: answer()))

    primary = upstream(lambda: httpx.Response(529, content=overloaded))
    backup = upstream(lambda: httpx.Response(200, headers=SSE_HEADERS, content=thinking()))
    fallback = FallbackConfig(chains={"claude-opus-4-1": ("backup/claude-haiku-4-5",)})
    config = GatewayConfig(fallback=fallback, usage_log=False)
    events: list[UsageEvent] = []
    gateway = Gateway(
        config, provider=primary, providers={"backup": backup}, usage_sinks=[events.append]
    )
    body = json.dumps(json.loads(STREAM_REQUEST) | {"model": "claude-opus-4-1"}).encode()

    async def scenario() -> None:
        await _leave_during_the_hold(gateway, body, read_message_start)
        await gateway.aclose()

    run(scenario())
    (event,) = events
    assert event.client_disconnected and event.fallback_used
    assert (event.provider, event.served_model) == ("backup", "claude-haiku-4-5")
    assert event.input_tokens == 2000
    assert event.cost == PricingTable().cost("claude-haiku-4-5", TokenUsage(2000, 1))
    assert [(a.target, a.status, a.error_type) for a in event.attempts] == [
        ("anthropic/claude-opus-4-1", 529, "overloaded_error"),
        ("backup/claude-haiku-4-5", 200, "client_disconnected"),
    ]


def _relay_sends(
    chunks: list[bytes], ended_after: int | None, failure: Exception | None = None
) -> list[tuple[bytes, bool]]:
    """The ``(body, more_body)`` sends ``relay_stream`` makes for ``chunks``, from an upstream
    that reports its body complete once it has handed out ``ended_after`` chunks (``None``: a
    provider that cannot tell), then raises ``failure`` if given."""
    given = 0

    async def upstream_chunks() -> AsyncIterator[bytes]:
        nonlocal given
        for chunk in chunks:
            given += 1
            yield chunk
        if failure is not None:
            raise failure

    def ended() -> bool:
        return ended_after is not None and given >= ended_after

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    response = ProviderResponse(200, [], chunks=upstream_chunks(), ended=ended)
    context = RequestContext("req_1", "POST", "/v1/messages")
    run(relay_stream(response, send, context, []))
    assert sent[0]["type"] == "http.response.start"
    return [(m["body"], m["more_body"]) for m in sent[1:]]


def _three_chunks() -> list[bytes]:
    events = text_stream_events(["a", "b"])
    return [b"".join(events[:3]), b"".join(events[3:5]), b"".join(events[5:])]


def test_last_chunk_leaves_with_the_end_of_the_stream_once_the_upstream_body_is_complete() -> None:
    # One ASGI send, so one write to the client, instead of the chunk and then an empty end.
    first, second, last = _three_chunks()
    sends = _relay_sends([first, second, last], ended_after=3)
    assert sends == [(first, True), (second, True), (last, False)]


def test_a_provider_that_cannot_tell_gets_an_empty_end_of_stream() -> None:
    first, second, last = _three_chunks()
    sends = _relay_sends([first, second, last], ended_after=None)
    assert sends == [(first, True), (second, True), (last, True), (b"", False)]


def test_chunks_after_an_early_end_report_are_relayed_in_order() -> None:
    # A replay of chunks read while peeking: the transport is done before they are all relayed.
    chunks = _three_chunks()
    sends = _relay_sends(chunks, ended_after=1)
    assert sends == [(chunks[0], True), (chunks[1], True), (chunks[2], False)]


def test_an_error_event_ends_the_stream_in_the_same_send_as_a_held_last_chunk() -> None:
    cut = b"".join(text_stream_events(["a"])[:4])
    sends = _relay_sends([cut], ended_after=1)
    assert len(sends) == 1
    body, more_body = sends[0]
    assert body.startswith(cut + b"event: error\n") and not more_body


def test_an_event_split_across_chunks_leaves_once_complete() -> None:
    events = text_stream_events(["a"])
    head, rest = b"".join(events[:3]), b"".join(events[3:])
    delta_end = len(events[3])
    chunks = [head + rest[:7], rest[7 : delta_end + 5], rest[delta_end + 5 :]]
    sends = _relay_sends(chunks, ended_after=None)
    assert sends == [
        (head, True),
        (rest[:delta_end], True),
        (rest[delta_end:], True),
        (b"", False),
    ]


@given(st.lists(st.integers(min_value=0, max_value=len(_STREAM)), max_size=12), st.booleans())
def test_any_chunking_relays_complete_events_only(cuts: list[int], breaks: bool) -> None:
    points = sorted({0, *cuts, len(_STREAM)})
    chunks = [_STREAM[start:end] for start, end in itertools.pairwise(points)]
    if breaks:
        chunks.pop()
    sends = _relay_sends(chunks, None, httpx.ReadError("r") if breaks else None)
    relayed = b"".join(body for body, _ in sends)
    if not breaks:
        assert relayed == _STREAM
    received = b"".join(chunks)
    assert relayed.startswith(received[: received.rfind(b"\n\n") + 2])
    for body, _ in sends[:-1]:
        assert body.endswith(b"\n\n")
    originals = {event.removesuffix(b"\n\n") for event in _EVENTS}
    for event in filter(None, (piece.strip(b"\n") for piece in relayed.split(b"\n\n"))):
        assert event in originals or event.startswith(b"event: error\n")


def test_a_stream_read_whole_in_one_socket_read_is_relayed_in_one_send() -> None:
    # Through the gateway's own transport, from an upstream that writes its answer at once.
    events = text_stream_events(["a", "b"])
    stream = b"".join(events)
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events)
        + b"0\r\n\r\n"
    )

    async def scenario() -> list[tuple[bytes, bool]]:
        async def answer_at_once(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(answer)
            await writer.drain()

        server = await asyncio.start_server(answer_at_once, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        upstream = UpstreamConfig(base_url=f"http://127.0.0.1:{port}", api_key="k")
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": STREAM_REQUEST, "more_body": False}

        async with server, Gateway(GatewayConfig(upstream=upstream, usage_log=False)) as gateway:
            await gateway(MESSAGES_SCOPE, receive, send)
        return [(m["body"], m["more_body"]) for m in sent[1:]]

    assert run(scenario()) == [(stream, False)]


def test_one_stall_watch_serves_streams_on_each_event_loop() -> None:
    # A gateway may serve from one loop, then another (a test client per request): each
    # loop's stalled sends are found, by one timer per watch rather than one per stream.
    watch = StallWatch(0.05)

    async def stalled_send() -> bool:
        sends = watch.watch()
        sends.started += 1  # a send to a client that never reads
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return sends.stalled
        finally:
            watch.unwatch(sends)
        return False

    async def steady() -> bool:
        sends = watch.watch()
        for _ in range(8):  # sends that finish, and quiet between them
            sends.started += 1
            await asyncio.sleep(0.02)
            sends.done = sends.started
        watch.unwatch(sends)
        return sends.stalled

    for _ in range(2):
        assert asyncio.run(asyncio.wait_for(stalled_send(), 2))
        assert not asyncio.run(steady())


def _bodies_sent() -> tuple[list[bytes], Callable[[dict[str, Any]], Awaitable[None]]]:
    """A send that keeps the response's body parts, and the list it keeps them in."""
    bodies: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])

    return bodies, send


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_keep_alive_comment_lines_are_relayed_at_once(newline: bytes) -> None:
    # ": keep-alive\n" is a whole comment line, which no blank line need follow: an upstream
    # or a proxy may send such lines alone while the model is silent. Held back until the
    # next event ended, they never reached the client's read timeout.
    events = [event.replace(b"\n", newline) for event in text_stream_events(["a"])]
    opening = b"".join(events[:3])
    keep_alives = b": keep-alive" + newline + b":" + newline

    async def scenario() -> tuple[bytes, bytes]:
        release = asyncio.Event()

        async def upstream_chunks() -> AsyncIterator[bytes]:
            yield opening
            yield keep_alives
            await release.wait()
            for event in events[3:]:
                yield event

        sent, send = _bodies_sent()
        response = ProviderResponse(200, [], chunks=upstream_chunks())
        context = RequestContext("req_1", "POST", "/v1/messages")
        relaying = asyncio.create_task(relay_stream(response, send, context, []))
        await asyncio.sleep(0.1)  # the upstream is silent after its keep-alives
        before = b"".join(sent)
        release.set()
        await relaying
        return before, b"".join(sent)

    before, whole = asyncio.run(scenario())
    assert before == opening + keep_alives
    assert whole == b"".join(events[:3]) + keep_alives + b"".join(events[3:])


def test_a_comment_line_before_a_cut_event_leaves_the_error_event_whole() -> None:
    # The keep-alive goes out alone; the half event after it never does, and the error event
    # that replaces it still parses.
    opening = b"".join(text_stream_events(["a"])[:3])

    async def upstream_chunks() -> AsyncIterator[bytes]:
        yield opening
        yield b': keep-alive\nevent: content_block_delta\ndata: {"type":"content_bl'
        raise UpstreamUnavailableError("The connection to the upstream broke mid-stream.")

    sent, send = _bodies_sent()
    response = ProviderResponse(200, [], chunks=upstream_chunks())
    context = RequestContext("req_1", "POST", "/v1/messages")
    asyncio.run(relay_stream(response, send, context, []))
    relayed = b"".join(sent)
    assert relayed.startswith(opening + b": keep-alive\nevent: error\ndata: ")
    assert json.loads(relayed.split(b"event: error\ndata: ")[1])["type"] == "error"


@pytest.mark.parametrize("after_the_end", ["silence", "pings"])
def test_a_body_kept_open_after_message_stop_is_ended_by_the_gateway(after_the_end: str) -> None:
    # An upstream (or a proxy before it) that keeps its body open after message_stop held
    # the client, whose SDK reads to the end of the body, until the read timeout (600 s by
    # default), or forever while it kept sending pings.
    closed: list[bool] = []

    async def kept_open() -> AsyncIterator[bytes]:
        try:
            for event in _EVENTS:
                yield event
            while True:
                await asyncio.sleep(0.05 if after_the_end == "pings" else 30)
                yield sse("ping", {"type": "ping"})
        finally:
            closed.append(True)

    recorder = Recorder(
        lambda request: httpx.Response(200, headers=SSE_HEADERS, content=kept_open())
    )
    gateway, finished = make_gateway(recorder)
    started = time.monotonic()
    _, body = run(asyncio.wait_for(_collect(gateway), 10))
    assert time.monotonic() - started < 5
    assert body.startswith(_STREAM)
    assert body[len(_STREAM) :].replace(sse("ping", {"type": "ping"}), b"") == b""
    assert closed == [True]
    assert finished[0].error_type is None and not finished[0].client_disconnected
    assert finished[0].usage.output_tokens == 2
