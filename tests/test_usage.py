"""Usage dispatcher and JSON-lines sink: ordering, isolation, back-pressure, shutdown."""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from messages_mw import (
    ApiKeyConfig,
    AuthConfig,
    GatewayConfig,
    LimitsConfig,
    OpenAIUpstreamConfig,
    UpstreamConfig,
)
from messages_mw.context import (
    Attempt,
    CompressionReport,
    Principal,
    RequestContext,
    UsageEvent,
    valid_tracestate,
)
from messages_mw.hooks import IncomingRequest
from messages_mw.providers.base import ProviderRequest
from messages_mw.streaming import TokenUsage
from messages_mw.usage import JsonLinesSink, LogUsageSink, UsageDispatcher, UsageSink

SECRET_KEY = "sk-ant-api03-very-secret-value"


def make_event(number: int = 0, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "request_id": f"req_{number}",
        "timestamp": 1_750_000_000.0 + number,
        "method": "POST",
        "path": "/v1/messages",
        "status": 200,
    }
    values.update(fields)
    return UsageEvent(**values)


class Recorder:
    """A sync sink that remembers what it got and where it ran."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.threads: set[str] = set()
        self.closed = False

    def __call__(self, event: UsageEvent) -> None:
        self.ids.append(event.request_id)
        self.threads.add(threading.current_thread().name)

    def aclose(self) -> None:
        self.closed = True


class AsyncRecorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.ids: list[str] = []
        self.delay = delay
        self.closed = False

    async def __call__(self, event: UsageEvent) -> None:
        await asyncio.sleep(self.delay)
        self.ids.append(event.request_id)

    async def aclose(self) -> None:
        self.closed = True


def test_every_sink_gets_every_event_in_order() -> None:
    sync_sink, async_sink = Recorder(), AsyncRecorder()
    dispatcher = UsageDispatcher([sync_sink, async_sink])
    expected = [f"req_{number}" for number in range(500)]

    async def main() -> None:
        for number in range(500):
            dispatcher.emit(make_event(number))
            if number % 7 == 0:
                await asyncio.sleep(0)
        await dispatcher.aclose()

    asyncio.run(main())
    assert sync_sink.ids == expected
    assert async_sink.ids == expected
    assert sync_sink.closed and async_sink.closed
    assert dispatcher.dropped == 0


def test_sync_sinks_run_off_the_event_loop_thread() -> None:
    sink = Recorder()
    dispatcher = UsageDispatcher([sink])

    async def main() -> None:
        dispatcher.emit(make_event())
        await dispatcher.aclose()

    asyncio.run(main())
    assert sink.threads and threading.current_thread().name not in sink.threads
    assert all(name.startswith("messages_mw-usage") for name in sink.threads)


def test_a_failing_sink_is_logged_and_does_not_affect_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def failing_sync(event: UsageEvent) -> None:
        raise RuntimeError("sync sink broke")

    async def failing_async(event: UsageEvent) -> None:
        raise RuntimeError("async sink broke")

    class FailingClose:
        def __call__(self, event: UsageEvent) -> None:
            pass

        async def aclose(self) -> None:
            raise OSError("close broke")

    sync_sink, async_sink = Recorder(), AsyncRecorder()
    sinks: list[UsageSink] = [failing_sync, sync_sink, failing_async, FailingClose(), async_sink]
    dispatcher = UsageDispatcher(sinks)

    async def main() -> None:
        for number in range(3):
            dispatcher.emit(make_event(number))
        await dispatcher.aclose()

    with caplog.at_level(logging.ERROR, logger="messages_mw.usage"):
        asyncio.run(main())
    assert sync_sink.ids == async_sink.ids == ["req_0", "req_1", "req_2"]
    assert sync_sink.closed and async_sink.closed
    failures = [r for r in caplog.records if r.name == "messages_mw.usage" and r.exc_info]
    messages = [str(r.exc_info[1]) for r in failures if r.exc_info]
    assert messages.count("sync sink broke") == 3
    assert messages.count("async sink broke") == 3
    assert messages.count("close broke") == 1


def test_emit_returns_at_once_even_with_a_slow_sink() -> None:
    ids: list[str] = []
    events = [make_event(number) for number in range(1000)]

    async def main() -> tuple[float, UsageDispatcher]:
        # The sink delivers nothing until the test opens the gate, after the last emit: an
        # emit that waited for it would never return, whatever the machine's load.
        gate = asyncio.Event()

        async def slow(event: UsageEvent) -> None:
            await gate.wait()
            await asyncio.sleep(0.1)
            ids.append(event.request_id)

        dispatcher = UsageDispatcher([slow], shutdown_timeout=0.25)
        started = time.perf_counter()
        for event in events:
            dispatcher.emit(event)
        elapsed = time.perf_counter() - started
        # Every emit returned while the sink was stalled: all 1000 are queued, none dropped.
        assert ids == [] and dispatcher.dropped == 0
        gate.set()
        await dispatcher.aclose()
        return elapsed, dispatcher

    elapsed, dispatcher = asyncio.run(main())
    # Only emit's own cost: 1000 emits take about a millisecond, so this bound is 1000x away
    # from a pass and catches only a per-emit cost of a millisecond or more.
    assert elapsed < 1.0
    # Shutdown gave up after 0.25 s: what was not delivered is counted as dropped.
    assert 1 <= len(ids) <= 5
    assert dispatcher.dropped == 1000 - len(ids)


def test_a_blocking_sync_sink_does_not_stall_the_event_loop() -> None:
    entered, released, returned = threading.Event(), threading.Event(), threading.Event()

    def blocking(event: UsageEvent) -> None:
        entered.set()
        # Had it run on the event loop's thread, nothing could release it: it would block the
        # loop for 10 s and then return, which the check below sees.
        released.wait(10)
        returned.set()

    dispatcher = UsageDispatcher([blocking], shutdown_timeout=5.0)

    async def main() -> bool:
        dispatcher.emit(make_event())
        assert await asyncio.to_thread(entered.wait, 10), "the sink was never called"
        # The sink is blocked now, and the loop runs this code all the same.
        sink_was_blocked = not returned.is_set()
        released.set()
        await dispatcher.aclose()
        return sink_was_blocked

    assert asyncio.run(main())
    assert returned.is_set()


@pytest.fixture
def usage_logger() -> Iterator[logging.Logger]:
    """The usage log sink's logger, its handlers and propagation restored afterwards."""
    logger = logging.getLogger("messages_mw.usage")
    handlers, propagate = list(logger.handlers), logger.propagate
    logger.handlers.clear()
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.handlers[:] = handlers
        logger.propagate = propagate


def test_the_log_sink_writes_on_the_loop_only_where_a_write_cannot_stall(
    usage_logger: logging.Logger, tmp_path: Path
) -> None:
    # A log handler writing to a pipe whose reader stopped (a stalled log shipper) would stop
    # every request if called on the event loop.
    assert not LogUsageSink().nonblocking  # no handler yet: one may be added later
    read_end, write_end = os.pipe()
    with open(write_end, "w") as pipe, open(tmp_path / "usage.log", "w") as file:
        usage_logger.addHandler(logging.StreamHandler(file))
        assert LogUsageSink().nonblocking
        usage_logger.addHandler(logging.StreamHandler(pipe))
        assert not LogUsageSink().nonblocking
        usage_logger.handlers.clear()
        usage_logger.addHandler(logging.StreamHandler(pipe))
        dispatcher = UsageDispatcher([LogUsageSink()])
        assert dispatcher._sync_sinks and not dispatcher._inline_sinks
    os.close(read_end)
    # A file handler opened with delay=True has no stream yet: unknown, and no crash.
    usage_logger.handlers.clear()
    usage_logger.addHandler(logging.FileHandler(tmp_path / "later.log", delay=True))
    assert not LogUsageSink().nonblocking
    usage_logger.handlers[0].close()


def test_a_full_queue_drops_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    sink = Recorder()
    dispatcher = UsageDispatcher([sink], queue_size=3)

    async def main() -> None:
        # No await in between: the drain task gets no chance to run.
        for number in range(10):
            dispatcher.emit(make_event(number))
        assert dispatcher.dropped == 7
        await dispatcher.aclose()

    with caplog.at_level(logging.WARNING, logger="messages_mw.usage"):
        asyncio.run(main())
    assert sink.ids == ["req_0", "req_1", "req_2"]
    assert dispatcher.dropped == 7
    drop_logs = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drop_logs) == 1


def test_aclose_drains_the_queue_then_closes_sinks_and_a_later_emit_starts_again() -> None:
    # A gateway may outlive one lifespan of its host (a test client opened twice): its usage
    # must not stop with the first.
    sink = AsyncRecorder(delay=0.001)
    dispatcher = UsageDispatcher([sink])

    async def main() -> None:
        for number in range(50):
            dispatcher.emit(make_event(number))
        await dispatcher.aclose()
        assert sink.closed
        assert len(sink.ids) == 50
        dispatcher.emit(make_event(99))
        await dispatcher.aclose()

    asyncio.run(main())
    assert sink.ids == [f"req_{number}" for number in (*range(50), 99)]
    assert dispatcher.dropped == 0


def test_aclose_returns_even_when_a_sink_swallows_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A sink that catches CancelledError and waits on must not hold shutdown for ever: the
    # dispatcher gives up on it after its timeout, says so, and closes the other sinks. When
    # the stubborn sink does return, its abandoned delivery writes to no closed sink and ends.
    started, released = asyncio.Event(), asyncio.Event()
    other = AsyncRecorder()

    async def stubborn(event: UsageEvent) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await released.wait()

    dispatcher = UsageDispatcher([stubborn, other], shutdown_timeout=0.05)

    async def main() -> None:
        dispatcher.emit(make_event(1))
        dispatcher.emit(make_event(2))
        await started.wait()
        await asyncio.wait_for(dispatcher.aclose(), timeout=10)
        assert other.closed
        abandoned = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        released.set()
        await asyncio.wait_for(asyncio.gather(*abandoned), timeout=10)

    asyncio.run(main())
    assert other.ids == []
    assert dispatcher.dropped == 2
    assert "ignored its cancellation" in caplog.text


def test_json_lines_sink_opens_its_file_again_after_aclose(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    sink = JsonLinesSink(path)
    sink(make_event(1))
    asyncio.run(sink.aclose())
    sink(make_event(2))
    asyncio.run(sink.aclose())
    lines = path.read_text().splitlines()
    assert [msgspec.json.decode(line)["request_id"] for line in lines] == ["req_1", "req_2"]


def test_aclose_without_any_event_closes_the_sinks() -> None:
    sink = Recorder()
    dispatcher = UsageDispatcher([sink])
    asyncio.run(dispatcher.aclose())
    assert sink.closed


def test_sinks_are_validated_at_construction() -> None:
    with pytest.raises(TypeError, match="not callable"):
        UsageDispatcher([Recorder(), "stdout"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="queue_size"):
        UsageDispatcher([Recorder()], queue_size=0)


def test_a_sync_looking_sink_returning_a_coroutine_is_awaited() -> None:
    target = AsyncRecorder()
    dispatcher = UsageDispatcher([lambda event: target(event)])

    async def main() -> None:
        dispatcher.emit(make_event(1))
        await dispatcher.aclose()

    asyncio.run(main())
    assert target.ids == ["req_1"]


def test_a_failing_coroutine_from_a_sync_looking_sink_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing(event: UsageEvent) -> None:
        raise RuntimeError("late failure")

    recorder = Recorder()
    dispatcher = UsageDispatcher([lambda event: failing(event), recorder])

    async def main() -> None:
        dispatcher.emit(make_event(1))
        await dispatcher.aclose()

    with caplog.at_level(logging.ERROR, logger="messages_mw.usage"):
        asyncio.run(main())
    assert recorder.ids == ["req_1"]
    assert any(r.exc_info and str(r.exc_info[1]) == "late failure" for r in caplog.records)


def test_without_sinks_emit_does_nothing() -> None:
    dispatcher = UsageDispatcher([])

    async def main() -> None:
        dispatcher.emit(make_event())
        await dispatcher.aclose()

    asyncio.run(main())
    assert dispatcher.dropped == 0


def test_a_sync_sink_returning_a_plain_value_is_fine() -> None:
    stream = io.StringIO()
    # Returns an int: not a UsageSink by its type, but common enough to accept at runtime.
    sink: Any = lambda event: stream.write(event.request_id)  # noqa: E731
    dispatcher = UsageDispatcher([sink])

    async def main() -> None:
        dispatcher.emit(make_event(1))
        await dispatcher.aclose()

    asyncio.run(main())
    assert stream.getvalue() == "req_1"


def test_emit_without_a_loop_drops_instead_of_raising() -> None:
    dispatcher = UsageDispatcher([Recorder()])
    dispatcher.emit(make_event())
    assert dispatcher.dropped == 1


class _NonblockingRecorder(Recorder):
    nonblocking = True  # delivered on the loop, in batches, as the built-in sinks are


@pytest.mark.parametrize("sink", [AsyncRecorder, _NonblockingRecorder])
def test_emit_from_another_thread_reaches_the_loop(sink: type[Recorder | AsyncRecorder]) -> None:
    recorder = sink()
    dispatcher = UsageDispatcher([recorder])

    async def main() -> None:
        dispatcher.emit(make_event(0))
        await asyncio.to_thread(dispatcher.emit, make_event(1))
        await dispatcher.aclose()

    asyncio.run(main())
    assert recorder.ids == ["req_0", "req_1"] and dispatcher.dropped == 0


def test_a_dispatcher_outlives_its_first_event_loop() -> None:
    sink = AsyncRecorder()
    dispatcher = UsageDispatcher([sink])

    async def emit_and_settle(number: int) -> None:
        dispatcher.emit(make_event(number))
        await asyncio.sleep(0.01)

    asyncio.run(emit_and_settle(0))
    asyncio.run(emit_and_settle(1))
    assert sink.ids == ["req_0", "req_1"]


def test_sinks_do_not_inherit_the_emitting_requests_context() -> None:
    request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")
    seen: list[str] = []

    async def sink(event: UsageEvent) -> None:
        seen.append(request_var.get())

    dispatcher = UsageDispatcher([sink])

    async def main() -> None:
        request_var.set("first request")
        dispatcher.emit(make_event())
        await dispatcher.aclose()

    asyncio.run(main())
    assert seen == ["none"]


def test_json_lines_sink_appends_one_object_per_line_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    path.write_text('{"earlier": true}\n')
    events = [make_event(number, input_tokens=number, tags=["a"]) for number in range(3)]
    sink = JsonLinesSink(path)
    for event in events:
        sink(event)
        # Flushed per line: readable before the sink is closed.
        last_line = path.read_text().splitlines()[-1]
        assert msgspec.json.decode(last_line, type=UsageEvent) == event
    asyncio.run(sink.aclose())
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier": true}'
    assert [msgspec.json.decode(line, type=UsageEvent) for line in lines[1:]] == events


def test_json_lines_sink_writes_to_a_text_stream_and_leaves_it_open() -> None:
    stream = io.StringIO()
    sink = JsonLinesSink(stream)
    sink(make_event(1, cost=0.25))
    sink(make_event(2))
    asyncio.run(sink.aclose())
    assert not stream.closed
    lines = stream.getvalue().splitlines()
    assert [msgspec.json.decode(line)["request_id"] for line in lines] == ["req_1", "req_2"]
    assert msgspec.json.decode(lines[0])["cost"] == 0.25


def test_json_lines_sink_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    JsonLinesSink()(make_event(7))
    assert msgspec.json.decode(capsys.readouterr().out)["request_id"] == "req_7"


def test_json_lines_sink_writes_on_the_loop_only_where_a_write_cannot_stall(
    tmp_path: Path,
) -> None:
    assert JsonLinesSink(tmp_path / "usage.jsonl").nonblocking
    assert JsonLinesSink("/dev/null").nonblocking
    assert JsonLinesSink(io.StringIO()).nonblocking
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as pipe:
        assert not JsonLinesSink(pipe).nonblocking
    fifo = tmp_path / "usage.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that opening to write succeeds
    try:
        sink = JsonLinesSink(fifo)
        assert not sink.nonblocking
        asyncio.run(sink.aclose())
    finally:
        os.close(reader)


def test_a_stalled_pipe_under_the_json_lines_sink_never_stalls_the_loop() -> None:
    # stdout piped into a log shipper that stopped reading: once the pipe is full, a write on
    # the loop would hang every request.
    read_end, write_end = os.pipe()
    loop_done, loop_stalled = threading.Event(), threading.Event()
    received = bytearray()

    def read_later() -> None:
        # Read only once the loop has emitted everything; if it never gets there, it is
        # stuck writing: record that, and read so that the test ends.
        if not loop_done.wait(timeout=10):
            loop_stalled.set()
        with os.fdopen(read_end, "rb") as pipe:
            while chunk := pipe.read(65536):
                received.extend(chunk)

    reader = threading.Thread(target=read_later)
    reader.start()
    pipe = os.fdopen(write_end, "w")
    sink = JsonLinesSink(pipe)
    dispatcher = UsageDispatcher([sink], shutdown_timeout=30)
    events = 2000  # about 1 MB of lines, many times a pipe's buffer

    async def main() -> None:
        for number in range(events):
            dispatcher.emit(make_event(number))
            await asyncio.sleep(0)
        loop_done.set()
        await dispatcher.aclose()
        pipe.close()

    asyncio.run(main())
    reader.join()
    assert not loop_stalled.is_set()
    lines = bytes(received).splitlines()
    assert [msgspec.json.decode(line)["request_id"] for line in lines] == [
        f"req_{number}" for number in range(events)
    ]


def test_json_lines_sink_fails_at_construction_for_an_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        JsonLinesSink(tmp_path / "missing-dir" / "usage.jsonl")


def _full_context() -> RequestContext:
    principal = Principal(
        key_id="team-a", tags=("team:a",), upstream_api_key=SECRET_KEY, passthrough=True
    )
    context = RequestContext(request_id="req_full", method="POST", path="/v1/messages")
    context.model = "claude-sonnet-4-5"
    context.stream = True
    context.status = 529
    context.upstream_request_id = "req_upstream"
    context.usage = TokenUsage(10, 20, 30, 40, 25, 3, output_tokens_estimated=True)
    context.error_type = "overloaded_error"
    context.client_disconnected = True
    context.first_byte_at = context.started_at + 0.5
    context.finished_at = context.started_at + 2.0
    context.principal = principal
    context.tags = ["team:a", "feature:chat"]
    context.session_id = "session-1"
    context.provider = "anthropic"
    context.provider_type = "anthropic-type"
    context.served_model = "claude-haiku-4-5"
    context.fallback_used = True
    context.attempts = [Attempt(target="primary", status=529, error_type="x", duration=0.1)]
    context.cost = 0.5
    context.compression = CompressionReport("claude-code", 9000, 4000, 1250, 0.4)
    context.stop_reason = "tool_use"
    context.response_id = "msg_full"
    context.response_model = "claude-haiku-4-5-20251001"
    context.request_headers = {
        "traceparent": TRACEPARENT,
        "tracestate": TRACESTATE,
        "x-api-key": SECRET_KEY,
    }
    return context


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


def _fields(value: object) -> list[tuple[str, object]]:
    """Every (name, value) pair in a decoded JSON document, nested ones included."""
    if isinstance(value, dict):
        pairs = list(value.items())
        for item in value.values():
            pairs.extend(_fields(item))
        return pairs
    if isinstance(value, list):
        return [pair for item in value for pair in _fields(item)]
    return []


def test_a_logged_context_or_principal_shows_no_credential() -> None:
    # Hooks get the context (on_request_end, taggers, routers); logging it must not log keys.
    context = _full_context()
    context.request_headers = {
        "x-api-key": SECRET_KEY,
        "authorization": "Bearer " + SECRET_KEY,
        "x-edgee-api-key": SECRET_KEY,
        "anthropic-beta": "context-1m-2025-08-07",
    }
    context.principal = Principal("team-a", upstream_api_key=SECRET_KEY)
    for shown in (repr(context), str(context), repr(context.principal), f"{[context]}"):
        assert SECRET_KEY not in shown
        assert "team-a" in shown
    assert "context-1m-2025-08-07" in repr(context)  # the rest is shown as ever


def test_a_logged_request_or_config_shows_no_credential() -> None:
    # What hooks, providers and hosts are handed, or build, and may well log.
    headers = {
        "x-api-key": SECRET_KEY,
        "authorization": "Bearer " + SECRET_KEY,
        "x-gateway-auth": SECRET_KEY,  # an alternate auth header need not say "key"
        "anthropic-beta": "context-1m-2025-08-07",
    }
    config = GatewayConfig(
        upstream=UpstreamConfig(
            base_url=f"https://user:{SECRET_KEY}@llm.example/v1?key={SECRET_KEY}",
            api_key=SECRET_KEY,
        ),
        # A token alone as the user name is as secret as a password.
        upstreams={"proxy": UpstreamConfig(base_url=f"https://{SECRET_KEY}@proxy.example")},
        openai_upstreams={
            "local": OpenAIUpstreamConfig(
                base_url="http://127.0.0.1:8000/v1",
                api_key=SECRET_KEY,
                extra_headers={"Authorization": "Bearer " + SECRET_KEY, "X-Team": "team-a"},
            )
        },
        auth=AuthConfig(
            mode="static",
            keys=(ApiKeyConfig(id="team-a", key=SECRET_KEY, upstream_api_key=SECRET_KEY),),
            header="x-gateway-auth",
        ),
        limits=LimitsConfig(redis_url=f"redis://:{SECRET_KEY}@redis.example:6379/0"),
    )
    shown = [
        repr(IncomingRequest("POST", "/v1/messages", headers, None)),
        repr(ProviderRequest("POST", "/v1/messages", b"{}", headers, "req_1", api_key=SECRET_KEY)),
        repr(config),
        str(config),
    ]
    for text in shown:
        assert SECRET_KEY not in text
    assert "context-1m-2025-08-07" in shown[0] and "llm.example" in shown[2]
    assert "team-a" in shown[2] and "redis.example" in shown[2]


def test_a_full_event_carries_no_credential() -> None:
    event = UsageEvent.from_context(_full_context())
    encoded = msgspec.json.encode(event)
    decoded = msgspec.json.decode(encoded)
    # Every field is set, so nothing is hidden by omit_defaults.
    assert set(decoded) == {field.encode_name for field in msgspec.structs.fields(UsageEvent)}
    assert SECRET_KEY.encode() not in encoded
    suspicious = ("secret", "password", "authorization", "credential", "header", "api_key")
    for name, value in _fields(decoded):
        lowered = name.lower()
        assert not any(word in lowered for word in suspicious), name
        assert "key" not in lowered or lowered == "key_id", name
        assert "token" not in lowered or isinstance(value, int), name


def test_an_events_attempts_show_only_the_usage_billed_beside_its_answer() -> None:
    # The answer's tokens are the event's own; repeated on its attempt (an error answer's
    # message_start, say) they would be counted twice by whoever adds attempts to them.
    context = RequestContext("req_1", "POST", "/v1/messages")
    failed_over = TokenUsage(input_tokens=100, output_tokens=1)
    context.usage = TokenUsage(input_tokens=40, output_tokens=1)
    context.attempts = [
        Attempt("anthropic/claude-opus-4-1", 200, "overloaded_error", 0.1, failed_over, 0.0015),
        Attempt("backup/claude-haiku-4-5", 200, "overloaded_error", 0.2, context.usage),
    ]
    event = UsageEvent.from_context(context)
    assert [attempt.usage for attempt in event.attempts] == [failed_over, None]
    assert event.attempts[0].cost == 0.0015 and event.input_tokens == 40
    assert context.attempts[1].usage is context.usage  # the request's own record is kept


def test_an_event_takes_each_field_from_its_source_in_the_context() -> None:
    context = _full_context()
    event = UsageEvent.from_context(context)
    expected = {
        "request_id": "req_full",
        "method": "POST",
        "path": "/v1/messages",
        "status": 529,
        "key_id": "team-a",
        "tags": ["team:a", "feature:chat"],
        "session_id": "session-1",
        "requested_model": "claude-sonnet-4-5",
        "served_model": "claude-haiku-4-5",
        "provider": "anthropic",
        "provider_type": "anthropic-type",
        "fallback_used": True,
        "stream": True,
        "error_type": "overloaded_error",
        "client_disconnected": True,
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 40,
        "cache_creation_1h_input_tokens": 25,
        "web_search_requests": 3,
        "cost": 0.5,
        "latency_ms": pytest.approx(2000.0),
        "time_to_first_byte_ms": pytest.approx(500.0),
        "upstream_request_id": "req_upstream",
        "attempts": context.attempts,
        "compression": context.compression,
        "stop_reason": "tool_use",
        "response_id": "msg_full",
        "response_model": "claude-haiku-4-5-20251001",
        "traceparent": TRACEPARENT,
        "output_tokens_estimated": True,
        "tracestate": TRACESTATE,
    }
    actual = msgspec.structs.asdict(event)
    assert actual.pop("timestamp") == pytest.approx(time.time(), abs=60)
    assert actual == expected
    # The event holds copies: a hook changing the context later does not rewrite it.
    assert event.tags is not context.tags and event.attempts is not context.attempts


@pytest.mark.parametrize(
    ("context_field", "event_field"),
    [
        ("fallback_used", "fallback_used"),
        ("stream", "stream"),
        ("client_disconnected", "client_disconnected"),
    ],
)
def test_each_flag_lands_in_its_own_event_field(context_field: str, event_field: str) -> None:
    # The full context sets every flag, so a mix-up between two of them would go unseen there.
    context = _full_context()
    before = msgspec.structs.asdict(UsageEvent.from_context(context))
    setattr(context, context_field, False)
    after = msgspec.structs.asdict(UsageEvent.from_context(context))
    changed = {name for name in before if name != "timestamp" and before[name] != after[name]}
    assert changed == {event_field}


class BatchRecorder:
    """A nonblocking sink that takes batches, as the JSON lines sink does."""

    nonblocking = True

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, event: UsageEvent) -> None:
        self.batches.append([event.request_id])

    def write_events(self, events: Sequence[UsageEvent]) -> None:
        self.batches.append([event.request_id for event in events])


def test_events_of_requests_ending_together_are_delivered_as_one_batch() -> None:
    sink = BatchRecorder()
    dispatcher = UsageDispatcher([sink])

    async def main() -> None:
        # Sparse traffic: each event is delivered in the next pass of the loop.
        dispatcher.emit(make_event(0))
        await asyncio.sleep(0)
        assert sink.batches == [["req_0"]]
        # Requests ending within the delivery interval of the last delivery wait for the next.
        for number in range(1, 6):
            dispatcher.emit(make_event(number))
            await asyncio.sleep(0)
        assert sink.batches == [["req_0"]]
        await asyncio.sleep(0.05)
        assert sink.batches == [["req_0"], ["req_1", "req_2", "req_3", "req_4", "req_5"]]
        # After a quiet spell, delivery is immediate again.
        dispatcher.emit(make_event(6))
        await asyncio.sleep(0)
        assert sink.batches[-1] == ["req_6"]
        dispatcher.emit(make_event(7))
        await dispatcher.aclose()

    asyncio.run(main())
    assert [event for batch in sink.batches for event in batch] == [
        f"req_{number}" for number in range(8)
    ]


def test_a_full_batch_is_delivered_at_once_in_a_fresh_context() -> None:
    sink = BatchRecorder()
    seen_contexts: list[str | None] = []
    request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request")

    def write_events(events: Sequence[UsageEvent]) -> None:
        seen_contexts.append(request_var.get(None))
        BatchRecorder.write_events(sink, events)

    sink.write_events = write_events  # type: ignore[method-assign]
    dispatcher = UsageDispatcher([sink])

    async def main() -> None:
        dispatcher.emit(make_event(0))
        await asyncio.sleep(0)  # delivered alone; the next ones wait for the interval
        request_var.set("the emitting request")
        for number in range(1, 33):
            dispatcher.emit(make_event(number))
        # No pass of the loop in between: the 32nd event delivered the waiting ones itself.
        assert sink.batches == [["req_0"], [f"req_{number}" for number in range(1, 33)]]
        dispatcher.emit(make_event(33))
        await asyncio.sleep(0.05)  # the timer set for the batch delivers what came since
        assert sink.batches[-1] == ["req_33"]
        await dispatcher.aclose()

    asyncio.run(main())
    # A sink never runs in the context of the request whose event filled the batch.
    assert seen_contexts == [None, None, None]
    assert dispatcher.dropped == 0

    assert dispatcher.dropped == 0


def test_nonblocking_sinks_keep_getting_events_when_the_loop_changes() -> None:
    # A host's test client may run each request in an event loop of its own and close it
    # right after: a delivery timer set in one of them never goes off.
    sink = BatchRecorder()
    dispatcher = UsageDispatcher([sink])

    async def requests(first: int) -> None:
        for number in range(first, first + 3):
            dispatcher.emit(make_event(number))
            await asyncio.sleep(0)

    for first in (0, 3, 6):
        asyncio.run(requests(first))

    async def later() -> None:
        dispatcher.emit(make_event(9))
        await asyncio.sleep(0.05)

    asyncio.run(later())
    delivered = [event for batch in sink.batches for event in batch]
    assert delivered == [f"req_{number}" for number in range(10)]
    assert dispatcher.dropped == 0


def test_queued_events_left_by_a_closed_loop_are_delivered_in_the_next() -> None:
    delivered: list[str] = []

    def slow_sink(event: UsageEvent) -> None:
        time.sleep(0.1)
        delivered.append(event.request_id)

    dispatcher = UsageDispatcher([slow_sink])

    async def first_loop() -> None:
        dispatcher.emit(make_event(0))
        await asyncio.sleep(0.02)  # the worker thread has event 0
        dispatcher.emit(make_event(1))  # queued behind it when this loop closes
        dispatcher.emit(make_event(2))

    async def next_loop() -> None:
        for number in range(3, 6):
            dispatcher.emit(make_event(number))
        await dispatcher.aclose()

    asyncio.run(first_loop())
    asyncio.run(next_loop())
    assert delivered == [f"req_{number}" for number in range(6)]
    assert dispatcher.dropped == 0


def test_a_file_sink_behind_a_test_client_without_lifespan_writes_every_line(
    tmp_path: Path,
) -> None:
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    from .inprocess import Recorder as UpstreamRecorder
    from .inprocess import make_gateway

    usage = tmp_path / "usage.jsonl"
    config = GatewayConfig(usage_log=False, usage_file=str(usage))
    gateway, finished = make_gateway(UpstreamRecorder(), config=config)
    host = FastAPI()
    host.mount("/anthropic", gateway)
    client = TestClient(host)  # without `with`: each request in a loop of its own
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    for _ in range(6):
        assert client.post("/anthropic/v1/messages", json=body).status_code == 200
    lines = usage.read_text().splitlines()
    assert (len(finished), len(lines)) == (6, 6)


def test_a_sink_that_fails_on_a_batch_is_logged_and_the_next_batch_still_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FailingOnce(BatchRecorder):
        def write_events(self, events: Sequence[UsageEvent]) -> None:
            if not self.batches:
                self.batches.append([])
                raise OSError("disk full")
            super().write_events(events)

    sink = FailingOnce()
    dispatcher = UsageDispatcher([sink])

    async def main() -> None:
        dispatcher.emit(make_event(0))
        await asyncio.sleep(0.05)
        dispatcher.emit(make_event(1))
        await dispatcher.aclose()

    with caplog.at_level(logging.ERROR, logger="messages_mw.usage"):
        asyncio.run(main())
    assert sink.batches == [[], ["req_1"]]
    assert any("failed on 1 requests" in record.getMessage() for record in caplog.records)


def test_json_lines_sink_writes_a_batch_in_one_write(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    events = [make_event(number, tags=["a"]) for number in range(50)]
    sink = JsonLinesSink(path)
    sink.write_events(events)
    lines = path.read_text().splitlines()
    assert [msgspec.json.decode(line, type=UsageEvent) for line in lines] == events
    asyncio.run(sink.aclose())


def test_json_lines_sink_finishes_lines_a_file_took_only_in_part(tmp_path: Path) -> None:
    class ShortWrites(io.RawIOBase):
        """A raw file that takes at most 7 bytes per write, as a pipe or a signal may."""

        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, chunk: Any) -> int:
            taken = bytes(chunk[:7])
            self.data += taken
            return len(taken)

    sink = JsonLinesSink(tmp_path / "usage.jsonl")
    asyncio.run(sink.aclose())
    short = ShortWrites()
    sink._file = short  # the file the sink opened, swapped for one that writes little at a time
    events = [make_event(number) for number in range(3)]
    sink.write_events(events[:2])
    sink(events[2])
    lines = bytes(short.data).decode().splitlines()
    assert [msgspec.json.decode(line, type=UsageEvent) for line in lines] == events


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (TRACEPARENT, TRACEPARENT),
        (f"  {TRACEPARENT} ", TRACEPARENT),
        # A later version may append fields: the four known ones are kept.
        ("01" + TRACEPARENT[2:] + "-more", "01" + TRACEPARENT[2:]),
        (TRACEPARENT + "-more", None),  # version 00 has exactly four
        ("ff" + TRACEPARENT[2:], None),  # an invalid version
        ("00-" + "0" * 32 + TRACEPARENT[35:], None),  # an all-zero trace id
        (TRACEPARENT[:36] + "0" * 16 + TRACEPARENT[52:], None),  # an all-zero parent id
        (TRACEPARENT.upper(), None),
        (TRACEPARENT + "\nx-injected: 1", None),
        ("not a traceparent", None),
        (None, None),
    ],
)
def test_only_a_well_formed_traceparent_reaches_the_event(
    sent: str | None, kept: str | None
) -> None:
    context = RequestContext(request_id="req_1", method="POST", path="/v1/messages")
    if sent is not None:
        context.request_headers = {"traceparent": sent}
    assert UsageEvent.from_context(context).traceparent == kept


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("ot=th:8,vendor=abc", "ot=th:8,vendor=abc"),
        ("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ("tenant@system=v,a=1", "tenant@system=v,a=1"),
        # Empty members are allowed, and skipped (two headers joined, one of them empty).
        ("a=1,", "a=1"),
        (" , a=1,,b=2", "a=1,b=2"),
        # Keys W3C and OpenTelemetry refuse, a key twice, a bad value: the header is dropped.
        ("1abc=x", None),
        ("a@b@c=x", None),
        ("a@=x", None),
        ("a=1,a=2", None),
        ("Key=1", None),
        ("a=b=c", None),
        ("a=b\r\nx-injected: 1", None),
        ("a=café", None),
        (",".join(f"k{n}=v" for n in range(33)), None),
        ("", None),
    ],
)
def test_a_tracestate_is_kept_only_as_trace_context_allows(header: str, kept: str | None) -> None:
    assert valid_tracestate(header) == kept


def test_a_long_tracestate_is_trimmed_by_members_long_ones_first() -> None:
    # Trace Context: pass on at least 512 characters; past that, drop members over 128
    # characters first, then from the end.
    long = "big=" + "y" * 200
    members = [f"k{n:02d}=" + "x" * 36 for n in range(15)]  # 40 characters each
    kept = valid_tracestate(",".join([members[0], long, *members[1:]]))
    assert kept is not None and "big=" not in kept and len(kept) <= 512
    assert kept == ",".join(members[:12])


def test_a_loop_per_request_delivers_every_event_to_every_sink_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # asyncio.run per call (or a test framework's loop per test): the loop's end cancelled
    # the drain task mid-delivery, and 39 of 40 events never reached a sync sink, none an
    # async one. Delivery now finishes as the loop ends, with no event given twice.
    import httpx

    from messages_mw import Gateway

    sync_seen: list[str] = []
    async_seen: list[str] = []

    def sync_sink(event: UsageEvent) -> None:
        sync_seen.append(event.request_id)

    async def async_sink(event: UsageEvent) -> None:
        await asyncio.sleep(0)
        async_seen.append(event.request_id)

    gateway = Gateway(
        GatewayConfig(provider="mock", usage_log=False), usage_sinks=[sync_sink, async_sink]
    )
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    ids: list[str] = []

    async def one_request() -> None:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.post("/v1/messages", json=body)
            ids.append(response.headers["request-id"])

    for _ in range(30):
        asyncio.run(one_request())
    assert sorted(sync_seen) == sorted(ids) and len(set(ids)) == 30
    assert sorted(async_seen) == sorted(ids)
    assert "usage event dropped" not in caplog.text


def test_a_huge_model_name_is_cut_so_a_usage_line_stays_one_pipe_write() -> None:
    # Several workers share the stdout pipe, which writes a line whole only up to 4 KiB: a
    # client's 1,000-character model name (four times in an event) spliced lines together.
    from messages_mw.context import MAX_MODEL_IN_EVENT, Attempt, RequestContext

    huge = "m" * 1000
    context = RequestContext("req_1", "POST", "/v1/messages", model=huge)
    context.served_model = context.response_model = huge
    context.tags = [f"tag{index}-" + "t" * 58 for index in range(16)]
    context.attempts = [Attempt(f"anthropic/{huge}", 404, "not_found_error", 0.1)] * 4
    event = UsageEvent.from_context(context)
    assert event.requested_model == huge[:MAX_MODEL_IN_EVENT] == event.served_model
    assert event.response_model == huge[:MAX_MODEL_IN_EVENT]
    assert all(len(attempt.target) == MAX_MODEL_IN_EVENT for attempt in event.attempts)
    assert len(msgspec.json.encode(event)) < 4096
    short = RequestContext("req_2", "POST", "/v1/messages", model="claude-sonnet-4-6")
    assert UsageEvent.from_context(short).requested_model == "claude-sonnet-4-6"


def test_a_slow_sink_filling_the_queue_costs_the_nonblocking_sinks_nothing() -> None:
    # With any sync or async sink, the Prometheus sink took its events from the shared
    # queue: a 3 ms sink (a span exporter to a slow collector) made it lose half the counts,
    # and nothing on /metrics showed it.
    class Counting(Recorder):
        nonblocking = True

    counting, slow = Counting(), AsyncRecorder(delay=0.01)
    dispatcher = UsageDispatcher([counting, slow], queue_size=5, shutdown_timeout=0.5)

    async def main() -> None:
        for number in range(200):
            dispatcher.emit(make_event(number))
            if number % 20 == 0:
                await asyncio.sleep(0)
        await dispatcher.aclose()

    asyncio.run(main())
    assert counting.ids == [f"req_{number}" for number in range(200)]
    assert len(slow.ids) < 200 and dispatcher.dropped == 200 - len(slow.ids)
