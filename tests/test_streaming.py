"""The SSE observer reads usage and errors from any chunking of a stream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages_mw.streaming import StreamObserver, frame_event

from .servers import sse, text_stream_events, tool_use_stream_events

STREAM = b"".join(text_stream_events(["Hello", " world", " error"], input_tokens=42))


def _observe(chunks: list[bytes]) -> StreamObserver:
    observer = StreamObserver()
    for chunk in chunks:
        observer.feed(chunk)
    return observer


def test_whole_stream_usage_and_stop() -> None:
    observer = _observe([STREAM])
    assert observer.usage.input_tokens == 42
    assert observer.usage.output_tokens == 3
    assert observer.stop_reason == "end_turn"
    assert observer.message_id == "msg_01UpstreamStream0000001"
    assert observer.finished and observer.unfinished_bytes == 0
    assert observer.error_type is None


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_any_chunking_gives_the_same_observation(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    observer = _observe(chunks)
    assert (observer.usage.input_tokens, observer.usage.output_tokens) == (42, 3)
    assert observer.finished


def test_crlf_separators_and_data_only_events() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    assert _observe([crlf]).usage.input_tokens == 42
    data_only = b'data: {"type":"message_delta","delta":{},"usage":{"output_tokens":9}}\n\n'
    assert _observe([data_only]).usage.output_tokens == 9


def _with_id_lines(stream: bytes, separator: bytes) -> bytes:
    """``stream`` with a long ``id:`` line (and a comment) before each event, as servers
    other than Anthropic's may send: protocol.md says to parse and ignore them."""
    events = stream.split(b"\n\n")[:-1]
    return b"".join(
        b": relayed\nid: 018f6c2e-7b1a-7cc0-9a55-0e4c2a1b9f00-%03d\nretry: 3000\n" % n
        + event
        + b"\n\n"
        for n, event in enumerate(events)
    ).replace(b"\n", separator)


@given(
    st.sampled_from([b"\n", b"\r\n"]),
    st.lists(st.integers(min_value=0, max_value=len(STREAM) * 2), max_size=20),
)
def test_lines_before_the_event_name_hide_nothing(separator: bytes, cuts: list[int]) -> None:
    stream = _with_id_lines(STREAM, separator)
    points = sorted({cut for cut in cuts if cut < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    observer = _observe(chunks)
    assert (observer.usage.input_tokens, observer.usage.output_tokens) == (42, 3)
    assert observer.saw_message_stop and observer.stop_reason == "end_turn"


def test_data_only_events_are_read_whatever_the_key_order() -> None:
    # Without an event: line the type is only in the JSON, wherever a server put it.
    padding = "x" * 200
    start = (
        b'data: {"message":{"id":"msg_1","model":"m","note":"%s","usage":{"input_tokens":7}},'
        b'"type":"message_start"}\n\n' % padding.encode()
    )
    stop = b'data: {"pad":"%s","type":"message_stop"}\n\n' % padding.encode()
    observer = _observe([start + stop])
    assert observer.usage.input_tokens == 7 and observer.saw_message_stop


def test_message_delta_overwrites_only_present_fields() -> None:
    events = b"".join(tool_use_stream_events("Read", ['{"a":', "1}"]))
    observer = _observe([events])
    assert observer.usage.input_tokens == 30
    assert observer.usage.output_tokens == 20
    assert observer.stop_reason == "tool_use"


def test_one_hour_cache_writes_and_web_searches_are_read() -> None:
    # They are priced apart: a 1-hour cache write at 2x input, a web search per search.
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "usage": {
                "input_tokens": 5,
                "output_tokens": 1,
                "cache_creation_input_tokens": 300,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 100,
                    "ephemeral_1h_input_tokens": 200,
                },
                "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
            },
        },
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 40, "server_tool_use": {"web_search_requests": 2}},
    }
    observer = _observe([sse("message_start", start), sse("message_delta", delta)])
    usage = observer.usage
    assert (usage.cache_creation_input_tokens, usage.cache_creation_1h_input_tokens) == (300, 200)
    assert (usage.output_tokens, usage.web_search_requests) == (40, 2)


def test_error_event_and_truncation() -> None:
    error = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
    two_events = STREAM.index(b"\n\n", STREAM.index(b"\n\n") + 2) + 2
    observer = _observe([STREAM[:two_events], error])
    assert observer.error_type == "overloaded_error" and observer.finished
    partial = _observe([STREAM[:150]])
    assert not partial.finished
    assert partial.unfinished_bytes > 0


def test_malformed_and_unknown_events_are_ignored() -> None:
    junk = b"event: message_start\ndata: {not json\n\nevent: future_event\ndata: {}\n\n"
    observer = _observe([junk, STREAM])
    assert observer.usage.input_tokens == 42


def test_frame_event() -> None:
    assert frame_event("ping", b'{"type":"ping"}') == b'event: ping\ndata: {"type":"ping"}\n\n'


# A long answer: 50 deltas of 40 characters, 2,000 characters, about 500 tokens at 4 per token.
LONG_PIECES = [f"{index:02d} {'lorem ipsum dolor sit amet conse'}tur. " for index in range(50)]
LONG_EVENTS = text_stream_events(LONG_PIECES, input_tokens=42)
# Up to the last content-block delta: the client (or the upstream) gone before the end.
CUT_EVENTS = LONG_EVENTS[: 3 + len(LONG_PIECES)]
LONG_TEXT_TOKENS = sum(len(piece) for piece in LONG_PIECES) / 4


def test_a_stream_cut_before_its_final_usage_is_counted_at_an_estimate() -> None:
    assert all(len(piece) == 40 for piece in LONG_PIECES)
    usage = _observe(CUT_EVENTS).settled_usage()
    # message_start said 1 output token; the 2,000 characters relayed are about 500.
    assert usage.output_tokens == pytest.approx(LONG_TEXT_TOKENS, rel=0.1)
    assert usage.output_tokens_estimated
    assert usage.input_tokens == 42


def test_a_finished_stream_keeps_the_upstreams_count() -> None:
    # The upstream's count stands, even when the text suggests more (here: 50 against ~500).
    usage = _observe(LONG_EVENTS).settled_usage()
    assert (usage.output_tokens, usage.output_tokens_estimated) == (len(LONG_PIECES), False)


def test_a_cut_stream_with_little_text_keeps_the_reported_count() -> None:
    events = text_stream_events(["Hi"], input_tokens=5)
    usage = _observe(events[:4]).settled_usage()  # message_start, ping, block start, one delta
    assert (usage.output_tokens, usage.output_tokens_estimated) == (1, False)


def test_no_message_start_means_nothing_to_estimate() -> None:
    usage = _observe(CUT_EVENTS[1:]).settled_usage()
    assert (usage.output_tokens, usage.output_tokens_estimated) == (0, False)


@given(st.lists(st.integers(min_value=0, max_value=len(b"".join(CUT_EVENTS))), max_size=30))
def test_any_chunking_gives_the_same_estimate(cuts: list[int]) -> None:
    stream = b"".join(CUT_EVENTS)
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _observe(chunks).settled_usage() == _observe(CUT_EVENTS).settled_usage()
