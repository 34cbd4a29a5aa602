"""The SSE observer reads usage and errors from any chunking of a stream."""

from __future__ import annotations

import json
import tracemalloc

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


def test_every_usage_field_is_read_from_start_and_delta() -> None:
    # Cache reads and writes price the request (a tenth and 1.25x of input): a fixture with
    # zeros there could not tell a gateway that drops them from one that reads them.
    start = sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "model": "m",
                "usage": {
                    "input_tokens": 21,
                    "output_tokens": 1,
                    "cache_read_input_tokens": 300,
                    "cache_creation_input_tokens": 40,
                    "cache_creation": {
                        "ephemeral_5m_input_tokens": 30,
                        "ephemeral_1h_input_tokens": 10,
                    },
                },
            },
        },
    )
    delta = sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 7, "server_tool_use": {"web_search_requests": 2}},
        },
    )
    usage = _observe([start, delta, sse("message_stop", {"type": "message_stop"})]).usage
    assert (usage.input_tokens, usage.output_tokens) == (21, 7)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (300, 40)
    assert (usage.cache_creation_1h_input_tokens, usage.web_search_requests) == (10, 2)


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


def _block(index: int, block: dict[str, object]) -> bytes:
    start = {"type": "content_block_start", "index": index, "content_block": block}
    return sse("content_block_start", start)


def _delta(index: int, delta: dict[str, object]) -> bytes:
    event = {"type": "content_block_delta", "index": index, "delta": delta}
    return sse("content_block_delta", event)


def _stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def _escaped(text: str) -> int:
    """The bytes of ``text`` inside a JSON string, as the upstream sends (and bills) it."""
    return len(json.dumps(text)) - 2


PING = sse("ping", {"type": "ping"})
MESSAGE_START = text_stream_events([], input_tokens=2095)[0]
SEARCH_RESULTS = [
    {
        "type": "web_search_result",
        "url": f"https://example.com/{n}",
        "encrypted_content": "E" * 3000,
    }
    for n in range(5)
]
# What a turn may hold besides text: every byte of it on the wire, and which of them count.
# Each case: (events after message_start, the bytes of generated output among them).
GENERATED_CASES = {
    "text": (
        [
            _block(0, {"type": "text", "text": ""}),
            _delta(0, {"type": "text_delta", "text": "x" * 400}),
        ],
        400,
    ),
    "text at index 10": (
        [
            _block(10, {"type": "text", "text": ""}),
            _delta(10, {"type": "text_delta", "text": "x" * 400}),
        ],
        400,
    ),
    "tool input, from an empty fragment": (
        [_block(0, {"type": "tool_use", "id": "toolu_1", "name": "Edit", "input": {}})]
        + [
            _delta(0, {"type": "input_json_delta", "partial_json": part})
            for part in ["", '{"a": "', "b" * 398, '"}']
        ],
        _escaped('{"a": "') + 398 + _escaped('"}'),
    ),
    "thinking and its signature": (
        [
            _block(0, {"type": "thinking", "thinking": "", "signature": ""}),
            _delta(0, {"type": "thinking_delta", "thinking": "t" * 400}),
            _delta(0, {"type": "signature_delta", "signature": "S" * 800}),
            _stop(0),
        ],
        400,
    ),
    "redacted thinking, whole": (
        [_block(0, {"type": "redacted_thinking", "data": "R" * 2000}), _stop(0)],
        0,
    ),
    "a server tool's result, whole": (
        [
            _block(
                0,
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
            ),
            _delta(0, {"type": "input_json_delta", "partial_json": '{"q": 1}'}),
            _stop(0),
            _block(
                1,
                {
                    "type": "web_search_tool_result",
                    "tool_use_id": "srvtoolu_1",
                    "content": SEARCH_RESULTS,
                },
            ),
            _stop(1),
            _block(2, {"type": "text", "text": ""}),
            _delta(2, {"type": "text_delta", "text": "y" * 400}),
        ],
        _escaped('{"q": 1}') + 400,
    ),
    "text, then pings": (
        [
            _block(0, {"type": "text", "text": ""}),
            _delta(0, {"type": "text_delta", "text": "x" * 400}),
        ]
        + [PING] * 30,
        400,
    ),
}


@pytest.mark.parametrize("together", [False, True], ids=["an event a chunk", "one chunk"])
@pytest.mark.parametrize("case", GENERATED_CASES.values(), ids=GENERATED_CASES.keys())
def test_only_generated_output_is_estimated(case: tuple[list[bytes], int], together: bool) -> None:
    # Signatures, whole blocks (server tool results, redacted thinking), starts, stops and
    # pings are no output: counting them would bill a client who leaves early for bytes the
    # upstream never generated, or subtract from what it did.
    events, generated = case
    stream = [MESSAGE_START, *events]
    usage = _observe([b"".join(stream)] if together else stream).settled_usage()
    assert usage.output_tokens == max(1, generated // 4)
    assert usage.output_tokens_estimated == (generated // 4 > 1)


ALL_KINDS = [MESSAGE_START] + [event for events, _ in GENERATED_CASES.values() for event in events]


@given(st.lists(st.integers(min_value=0, max_value=len(b"".join(ALL_KINDS))), max_size=30))
def test_any_chunking_gives_the_same_estimate(cuts: list[int]) -> None:
    stream = b"".join(ALL_KINDS)
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    expected = sum(generated for _, generated in GENERATED_CASES.values()) // 4
    assert _observe(chunks).settled_usage().output_tokens == expected


def test_a_cr_showing_up_later_changes_no_estimate() -> None:
    # The observer looks for CR framing once a CR arrives; the LF events in that same chunk
    # still count.
    events = [MESSAGE_START, *GENERATED_CASES["text"][0], b": keep-alive\r\n\r\n"]
    apart, together = _observe(events).settled_usage(), _observe([b"".join(events)]).settled_usage()
    assert apart.output_tokens == together.output_tokens == 100


def test_a_long_run_of_events_in_one_chunk_is_counted_whole() -> None:
    # Runs in one chunk are read only when an estimate is needed, up to a bound; past it at
    # once. Either way every delta counts.
    pieces = ["z" * 100] * 4000  # 400 KB of text, over the bound
    stream = b"".join(text_stream_events(pieces)[: 3 + len(pieces)])
    assert _observe([stream]).settled_usage().output_tokens == 100_000


def test_cr_framed_events_after_the_first_are_read() -> None:
    # A data-only event after a CR-terminated one: ``^`` does not see a line start after a
    # lone CR, and the observer missed its usage unless a chunk began there.
    stream = (
        b'event: ping\rdata: {"type":"ping"}\r\r'
        b'data: {"type":"message_delta","delta":{},"usage":{"output_tokens":29}}\r\r'
    )
    assert _observe([stream]).usage.output_tokens == 29


# Events of shapes other than Anthropic's: they count nothing, wherever a chunk splits them.
ODD_EVENTS = [
    _delta(0, {"type": "text_delta", "text": "x" * 400}).replace(
        b'"index":0,', b'"index":0,"seq":1,'
    ),
    b"id: 7\n" + _delta(0, {"type": "text_delta", "text": "y" * 400}),
    b"data: " + _delta(0, {"type": "text_delta", "text": "z" * 400}).split(b"data: ")[1],
]
MIXED = [MESSAGE_START, *GENERATED_CASES["text"][0], *ODD_EVENTS, *GENERATED_CASES["text"][0]]


@given(
    st.lists(st.integers(min_value=0, max_value=len(b"".join(MIXED))), max_size=30),
    st.sampled_from([b"", b": keep-alive\r\n\r\n"]),
)
def test_any_chunking_gives_the_same_estimate_whatever_the_framing(
    cuts: list[int], tail: bytes
) -> None:
    stream = b"".join(MIXED) + tail
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _observe(chunks).settled_usage().output_tokens == 200


def test_chunks_kept_for_an_estimate_stay_within_the_bound() -> None:
    # Each chunk: two deltas (a run, kept for later) and a large event of another shape; a
    # kept run keeps its whole chunk alive, so the bound must count whole chunks.
    big = _delta(0, {"type": "text_delta", "text": "z" * 60_000})
    runs = _delta(0, {"type": "text_delta", "text": "ab"}) * 2
    observer = StreamObserver()
    observer.feed(MESSAGE_START)
    tracemalloc.start()
    try:
        for number in range(200):  # 12 MB fed, each chunk a new object
            observer.feed(runs + b"id: %d\n" % number + big)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1_000_000
    assert observer.settled_usage().output_tokens == 200


def test_one_chunk_object_fed_again_and_again_keeps_a_bounded_list() -> None:
    # The same bytes object, fed 5,000 times, counts once as memory, but each feed keeps a
    # run of it: the bound counts the entries too.
    chunk = _delta(0, {"type": "text_delta", "text": "ab"}) * 2
    observer = StreamObserver()
    observer.feed(MESSAGE_START)
    for _ in range(5000):
        observer.feed(chunk)
    assert len(observer._deferred) < 5000
    assert observer.settled_usage().output_tokens == 5000
