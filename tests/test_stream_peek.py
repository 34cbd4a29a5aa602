"""The stream peek: its SSE scanner (the same verdict however the stream is framed and cut
into chunks) and its reads (in the request's task when the provider says a read will not
wait, in a task of their own otherwise)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages_mw.errors import GatewayError, InvalidRequestError, UpstreamUnavailableError
from messages_mw.stream_peek import _PeekScanner, peek_stream

from .inprocess import run

_SEPARATORS = [b"\n\n", b"\r\n\r\n", b"\r\r"]
_NAMES = [b"message_start", b"ping", b"content_block_start", b"error", b"message_delta"]


def _reference_verdict(stream: bytes) -> object:
    """What an event-by-event reading of the whole stream decides (SSE rules: the last
    ``event:`` line names an event; one without a name counts for nothing)."""
    *lines, _partial = re.split(rb"\r\n|\n|\r", stream)  # each line ends in CRLF, LF or CR
    events: list[list[bytes]] = [[]]
    for line in lines:
        if line:
            events[-1].append(line)
        else:  # a blank line ends an event
            events.append([])
    for index, block in enumerate(events):
        if index == len(events) - 1:
            break  # unterminated: judged only once the stream has ended
        names = [line[6:].strip() for line in block if line.startswith(b"event:")]
        if not names or names[-1] in (b"message_start", b"ping", b"message_delta"):
            continue
        if names[-1] == b"error":
            return "error"
        return "content"
    return None


def _verdict_name(verdict: object) -> object:
    return "error" if isinstance(verdict, GatewayError) else verdict


@st.composite
def _events(draw: st.DrawFn) -> bytes:
    """One event: its lines (name first or not, ids, comments, data), then a separator."""
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    lines = []
    if draw(st.booleans()):
        lines.append(b"id: " + draw(st.sampled_from([b"1", b"abc"])))
    if draw(st.booleans()):
        lines.append(b": a comment")
    names = draw(st.lists(st.sampled_from(_NAMES), max_size=2))
    for name in names:
        lines.append(b"event:" + draw(st.sampled_from([b" ", b"", b"  "])) + name)
        if draw(st.booleans()):
            lines.append(b'data: {"type":"error","error":{"type":"overloaded_error"}}')
    lines.append(b'data: {"type":"x","text":"event: not a line"}')
    # The blank line may end otherwise than the lines before it ("\n\r\n"), but a CR before
    # it is a CRLF's first half if an LF follows it.
    blank = draw(st.sampled_from([b"\r"] if newline == b"\r" else [b"\n", b"\r\n"]))
    separator = newline + blank
    return newline.join(draw(st.permutations(lines)) if draw(st.booleans()) else lines) + (
        separator
    )


@given(
    st.lists(_events(), min_size=1, max_size=6),
    st.lists(st.integers(min_value=1, max_value=40), max_size=12),
)
def test_the_verdict_does_not_depend_on_framing_or_chunking(
    events: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(events)
    scanner = _PeekScanner()
    verdict: object = None
    position = 0
    for size in [*cuts, len(stream)]:
        chunk = stream[position : position + size]
        position += size
        if not chunk:
            continue
        verdict = scanner.feed(chunk)
        if verdict is not None:
            break
    assert _verdict_name(verdict) == _reference_verdict(stream)


def test_an_error_event_carries_its_type_and_message() -> None:
    scanner = _PeekScanner()
    verdict = scanner.feed(
        b"event: message_start\ndata: {}\n\n"
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )
    assert isinstance(verdict, GatewayError)
    assert verdict.status == 529 and "Overloaded" in str(verdict)


def test_a_message_delta_before_any_block_leaves_the_verdict_to_what_follows_it() -> None:
    # A translated upstream abort reports its usage in a message_delta ahead of its error
    # event, which must still fall back; an answer with no content at all (one that stopped
    # at once) is committed by its message_stop, terminated or cut off at the end.
    opening = [b"event: message_start\ndata: {}\n\n", b"event: message_delta\ndata: {}\n\n"]
    error = b'event: error\ndata: {"type":"error","error":{"type":"api_error"}}\n\n'

    async def peek(*parts: bytes) -> object:
        async def chunks() -> AsyncIterator[bytes]:
            for part in parts:
                yield part

        verdict, pending = await peek_stream(chunks(), (529,), 5.0, [])
        assert pending is None
        return verdict

    assert isinstance(run(peek(*opening, error)), GatewayError)
    assert run(peek(*opening, b"event: message_stop\ndata: {}\n\n")) is None
    assert run(peek(*opening, b"event: message_stop\ndata: {}")) is None
    ended = run(peek(*opening))
    assert isinstance(ended, UpstreamUnavailableError) and "ended before any content" in str(ended)


def test_a_separator_cut_in_two_still_ends_its_event() -> None:
    scanner = _PeekScanner()
    assert scanner.feed(b"event: ping\r\ndata: {}\r\n\r") is None
    assert scanner.feed(b"\nevent: content_block_start\r\ndata: {}\r\n") is None
    assert scanner.feed(b"\r\n") == "content"


def _chunks_recording_tasks(
    tasks: list[asyncio.Task[object] | None], *parts: bytes
) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            tasks.append(asyncio.current_task())
            yield part

    return chunks()


def test_a_read_the_provider_calls_ready_runs_in_the_requests_own_task() -> None:
    async def main() -> tuple[object, list[bool]]:
        tasks: list[asyncio.Task[object] | None] = []
        chunks = _chunks_recording_tasks(
            tasks,
            b"event: message_start\ndata: {}\n\n",
            b"event: ping\ndata: {}\n\n",
            b"event: content_block_start\ndata: {}\n\n",
        )
        ready = iter([True, False, True])
        error, pending = await peek_stream(chunks, (529,), 5.0, [], ready=lambda: next(ready))
        this = asyncio.current_task()
        return (error, pending), [task is this for task in tasks]

    outcome, in_this_task = run(main())
    assert outcome == (None, None)
    # The read that might have waited ran in a task of its own.
    assert in_this_task == [True, False, True]


def test_a_ready_read_still_reports_the_end_and_errors() -> None:
    async def main() -> tuple[object, type[BaseException]]:
        async def empty() -> AsyncIterator[bytes]:
            return
            yield b""  # pragma: no cover - makes this an async generator

        async def refusing() -> AsyncIterator[bytes]:
            raise InvalidRequestError("prompt is too long")
            yield b""  # pragma: no cover

        ended, _ = await peek_stream(empty(), (529,), 5.0, [], ready=lambda: True)
        with pytest.raises(InvalidRequestError) as caught:
            await peek_stream(refusing(), (529,), 5.0, [], ready=lambda: True)
        return ended, caught.type

    ended, raised = run(main())
    assert isinstance(ended, UpstreamUnavailableError) and "ended before any content" in str(ended)
    assert raised is InvalidRequestError


def test_the_hold_runs_out_even_when_a_chunk_lands_just_before_it() -> None:
    # The hold's timer fired in the loop pass in which a read completed, woke nothing, and the
    # peek then held the stream until content came, for ever here.
    hold = 0.05

    async def main() -> tuple[float, bool]:
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()

        async def chunks() -> AsyncIterator[bytes]:
            await first
            yield b"event: message_start\ndata: {}\n\n"
            await asyncio.Event().wait()  # no content for a long time
            yield b""

        started = loop.time()
        # The first chunk arrives 2 ms before the hold ends, in a pass busy for 10 ms.
        loop.call_at(started + hold - 0.002, first.set_result, None)
        loop.call_at(started + hold - 0.002, time.sleep, 0.01)
        peeking = peek_stream(chunks(), (529,), hold, [])
        error, pending = await asyncio.wait_for(peeking, 2)
        assert error is None and pending is not None
        pending.cancel()
        return loop.time() - started, pending is not None

    elapsed, handed_over = run(main())
    assert handed_over and elapsed < 1.0
