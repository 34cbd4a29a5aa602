"""Chat Completions streams -> Anthropic SSE: the grammar, chunking, and agreement with the
non-streaming translation as the official SDK accumulates both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messages_mw.errors import UpstreamTimeoutError
from messages_mw.streaming import StreamObserver
from messages_mw.translate import StreamTranslator, to_anthropic_message
from messages_mw.translate.response import completion_as_stream_data

MODEL = "claude-sonnet-4-6"
MESSAGE_ID = "msg_01TranslatedStream000001"


# ---- helpers shared with the other translate tests -------------------------------------------


def sse_data(payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return b"data: " + text.encode() + b"\n\n"


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


def parse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Anthropic SSE -> (event name, data); asserts the framing (name line == data.type)."""
    events = []
    assert raw == b"" or raw.endswith(b"\n\n")
    for block in raw.decode().split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append((name, data))
    return events


_DELTA_FOR_BLOCK = {
    "text": {"text_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
}


def check_grammar(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Anthropic's stream grammar: one message_start first, sequential blocks with consecutive
    indexes each started and stopped once, matching delta types, then message_delta and
    message_stop last; or an error event ending any prefix of that."""
    all_events = events = parse_events(raw)
    names = [name for name, _ in events]
    assert names, "a stream must not be empty"
    if names[-1] == "error":
        names, events = names[:-1], events[:-1]
        assert "error" not in names
    else:
        assert names[-2:] == ["message_delta", "message_stop"]
        assert names.count("message_delta") == 1 and names.count("message_stop") == 1
    if not names:
        return all_events
    assert names[0] == "message_start" and names.count("message_start") == 1
    open_index: int | None = None
    open_type = ""
    next_index = 0
    for name, data in events[1:]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index, open_type = next_index, data["content_block"]["type"]
            next_index += 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
            assert data["delta"]["type"] in _DELTA_FOR_BLOCK[open_type]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            assert name in ("message_delta", "message_stop")
            assert open_index is None
    return all_events


def translate(pieces: list[bytes], *, finish: bool = True, input_tokens: int = 7) -> bytes:
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=input_tokens)
    out = b"".join(translator.feed(piece) for piece in pieces)
    return out + translator.finish() if finish else out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@dataclass
class SdkClient:
    """The official SDK behind a mock transport that answers with ``body``."""

    body: bytes = b""
    content_type: str = "text/event-stream"
    client: anthropic.Anthropic = field(init=False)

    def __post_init__(self) -> None:
        transport = httpx2.MockTransport(self._answer)
        self.client = anthropic.Anthropic(
            api_key="test",
            base_url="http://upstream.test",
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(transport=transport),
        )

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": self.content_type}, content=self.body)

    def streamed(self, sse: bytes) -> dict[str, Any]:
        self.body, self.content_type = sse, "text/event-stream"
        with self.client.messages.stream(model=MODEL, max_tokens=10, messages=_HI) as stream:
            return stream.get_final_message().model_dump()

    def created(self, body: bytes) -> dict[str, Any]:
        self.body, self.content_type = body, "application/json"
        return self.client.messages.create(model=MODEL, max_tokens=10, messages=_HI).model_dump()


_HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def sdk() -> Iterator[SdkClient]:
    client = SdkClient()
    yield client
    client.client.close()


# ---- a completion, as one response body and as an equivalent chunk stream --------------------


@dataclass
class Completion:
    reasoning: str | None
    reasoning_field: str
    content: str | None
    refusal: str | None
    calls: list[tuple[str | None, str, str]]  # id, name, arguments
    finish_reason: str | None
    usage: dict[str, Any] | None

    def body(self) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            message[self.reasoning_field] = self.reasoning
        if self.refusal is not None:
            message["refusal"] = self.refusal
        if self.calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in self.calls
            ]
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
        body: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [choice],
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return json.dumps(body).encode()


def _pieces(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if a < b]


_words = st.text(alphabet='abc xyz\n"\\é€😀{}', min_size=1, max_size=30)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_arguments = st.one_of(
    st.just(""),
    st.dictionaries(st.text(max_size=8), _json_values, max_size=4).map(json.dumps),
    st.dictionaries(st.text(max_size=8), _json_values, max_size=4).map(
        lambda value: json.dumps(value, indent=1)
    ),
    # What a model may send that is no object: the SDKs fail on such input, so both paths
    # must give {"_raw": text}.
    st.sampled_from(["not json", "[1, 2]", ' "text"', "42", "null"]),
)


@st.composite
def completions(draw: st.DrawFn) -> Completion:
    ncalls = draw(st.integers(0, 3))
    calls = [
        (
            draw(st.sampled_from([f"call_{n}abc", None])),
            draw(st.sampled_from(["Read", "Bash", "get_weather"])),
            draw(_arguments),
        )
        for n in range(ncalls)
    ]
    prompt = draw(st.integers(0, 10**6))
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": draw(st.integers(0, 10**5)),
    }
    if draw(st.booleans()):
        usage["prompt_tokens_details"] = {"cached_tokens": draw(st.integers(0, prompt))}
    return Completion(
        reasoning=draw(st.none() | _words),
        reasoning_field=draw(st.sampled_from(["reasoning_content", "reasoning"])),
        content=draw(st.none() | st.just("") | _words),
        refusal=draw(st.none() | _words) if draw(st.integers(0, 5)) == 0 else None,
        calls=calls,
        finish_reason=draw(
            st.sampled_from(["stop", "length", "tool_calls", "content_filter", None])
        ),
        usage=usage,
    )


@st.composite
def chunk_streams(draw: st.DrawFn, completion: Completion) -> bytes:
    """An OpenAI stream of ``completion``: the same content, fragmented, tool calls possibly
    interleaved (each call's first fragment carries id and name, calls start in order)."""
    events = [chunk({"role": "assistant", "content": ""})]
    field_name = completion.reasoning_field
    events += [chunk({field_name: p}) for p in _pieces(draw, completion.reasoning or "")]
    events += [chunk({"content": p}) for p in _pieces(draw, completion.content or "")]
    events += [chunk({"refusal": p}) for p in _pieces(draw, completion.refusal or "")]
    queues = []
    for index, (cid, name, args) in enumerate(completion.calls):
        first, *rest = _pieces(draw, args) or [""]
        head: dict[str, Any] = {
            "index": index,
            "type": "function",
            "function": {"name": name, "arguments": first},
        }
        if cid is not None:
            head["id"] = cid
        tail = [{"index": index, "function": {"arguments": p}} for p in rest]
        queues.append([head, *tail])
    interleave = draw(st.booleans())
    while any(queues):
        live = [q for q in queues if q]
        # Calls start in index order; any started call may go on meanwhile.
        fresh = [q for q in live if "name" in q[0].get("function", {})]
        started = [q for q in live if q not in fresh]
        pick = draw(st.sampled_from([*started, *fresh[:1]])) if interleave else live[0]
        events.append(chunk({"tool_calls": [pick.pop(0)]}))
    events.append(chunk({}, completion.finish_reason))
    if completion.usage is not None:
        events.append({"id": "chatcmpl-1", "choices": [], "usage": completion.usage})
    raw = b"".join(sse_data(event) for event in events)
    if completion.finish_reason is None or draw(st.booleans()):
        raw += b"data: [DONE]\n\n"
    return raw


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_stream_and_non_stream_give_the_same_message(sdk: SdkClient, data: st.DataObject) -> None:
    completion = data.draw(completions())
    raw = data.draw(chunk_streams(completion))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    sse = translate(split(raw, cuts), input_tokens=123)
    check_grammar(sse)
    body = to_anthropic_message(completion.body(), model=MODEL, message_id=MESSAGE_ID)
    assert sdk.streamed(sse) == sdk.created(body)


# ---- chunking ---------------------------------------------------------------------------------

_SAMPLE = b"".join(
    [
        sse_data(chunk({"role": "assistant", "reasoning_content": "Let me think"})),
        b": keep-alive comment\n\n",
        sse_data(chunk({"content": "Caf\u00e9 \U0001f600 "})),
        sse_data(chunk({"content": "ok"})),
        sse_data(
            chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "Read"}}]})
        ),
        sse_data(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"p": "x'}}]})),
        sse_data(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"}'}}]})),
        sse_data(chunk({}, "tool_calls")),
        sse_data({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
        b"data: [DONE]\n\n",
    ]
)


@given(st.lists(st.integers(0, len(_SAMPLE)), max_size=40))
def test_any_chunking_gives_the_same_bytes(cuts: list[int]) -> None:
    assert translate(split(_SAMPLE, cuts)) == translate([_SAMPLE])


@given(st.lists(st.integers(0, 2 * len(_SAMPLE)), max_size=40))
def test_crlf_line_ends_give_the_same_bytes(cuts: list[int]) -> None:
    crlf = _SAMPLE.replace(b"\n", b"\r\n")
    assert translate(split(crlf, cuts)) == translate([_SAMPLE])


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_one_byte_at_a_time(line_end: bytes) -> None:
    sample = _SAMPLE.replace(b"\n", line_end)
    pieces = [b"", *(sample[i : i + 1] for i in range(len(sample)))]
    assert translate(pieces) == translate([_SAMPLE])


def test_events_of_the_sample() -> None:
    events = check_grammar(translate([_SAMPLE]))
    assert [name for name, _ in events][:2] == ["message_start", "content_block_start"]
    start = events[0][1]["message"]
    assert start["usage"] == {
        "input_tokens": 7,
        "output_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert start["id"] == MESSAGE_ID and start["model"] == MODEL and start["content"] == []
    blocks = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert blocks == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "call_a", "name": "Read", "input": {}},
    ]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {"type": "input_json_delta", "partial_json": '{"p": "x'} in deltas
    assert not any(d["type"] == "signature_delta" for d in deltas)
    message_delta = events[-2][1]
    assert message_delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert message_delta["usage"] == {
        "output_tokens": 4,
        "input_tokens": 9,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_the_gateway_observer_reads_the_translated_stream() -> None:
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=1)
    observer = StreamObserver()
    observer.feed(translator.feed(_SAMPLE) + translator.finish())
    assert observer.finished and observer.stop_reason == "tool_use"
    assert observer.message_id == MESSAGE_ID and observer.usage == translator.usage


@pytest.mark.parametrize("finish_reason", ["abort", "error"])
def test_an_aborted_stream_ends_with_an_error_event(finish_reason: str) -> None:
    pieces = [
        sse_data(chunk({"role": "assistant", "content": "The answer is"})),
        sse_data(chunk({}, finish_reason)),
        sse_data("[DONE]"),
    ]
    events = parse_events(translate(pieces))
    assert events[-1][0] == "error"
    assert f"finish_reason '{finish_reason}'" in events[-1][1]["error"]["message"]
    assert "message_stop" not in [name for name, _ in events]


def test_a_stream_ended_by_a_named_stop_string_reports_it() -> None:
    final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]}
    pieces = [sse_data(chunk({"content": "x"})), sse_data(final), sse_data("[DONE]")]
    delta = next(data for name, data in parse_events(translate(pieces)) if name == "message_delta")
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_a_whole_answer_sent_as_a_stream_reports_the_stop_string_it_names() -> None:
    # A server that ignored stream: true: its completion goes to the client as the stream
    # that says the same, which must end as the non-streaming translation of it does.
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": "x"},
        "finish_reason": "stop",
        "stop_reason": "END",
    }
    body = json.dumps({"choices": [choice]}).encode()
    whole = json.loads(to_anthropic_message(body, model=MODEL, message_id=MESSAGE_ID))
    assert (whole["stop_reason"], whole["stop_sequence"]) == ("stop_sequence", "END")
    events = parse_events(translate([completion_as_stream_data(body)]))
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_a_whole_answer_sent_as_a_stream_names_the_model_that_answered() -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
    body = json.dumps({"model": "gpt-4o-2024-08-06", "choices": [choice]}).encode()
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=1)
    translator.feed(completion_as_stream_data(body))
    assert translator.upstream_model == "gpt-4o-2024-08-06"


def test_a_stream_saying_tool_calls_without_any_ends_its_turn() -> None:
    pieces = [sse_data(chunk({"content": "I'll check."}, "tool_calls")), sse_data("[DONE]")]
    delta = next(data for name, data in parse_events(translate(pieces)) if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn"


def test_nothing_is_held_back() -> None:
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=1)
    first = translator.feed(sse_data(chunk({"content": "Hel"})))
    assert b"message_start" in first and b'"text":"Hel"' in first
    assert translator.feed(b'data: {"choices":[{"delta":{"content":"lo"}}]}') == b""
    assert b'"text":"lo"' in translator.feed(b"\n")
    call = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a'}}
    out = translator.feed(sse_data(chunk({"tool_calls": [call]})))
    assert b"content_block_stop" in out and b'"partial_json":"{\\"a"' in out


def test_usage_property_reports_the_upstream_numbers() -> None:
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=1)
    translator.feed(sse_data(chunk({"content": "x"})))
    assert translator.usage.input_tokens == 0
    usage = {
        "prompt_tokens": 50,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 30},
    }
    translator.feed(sse_data({"choices": [], "usage": usage}))
    got = translator.usage
    assert (got.input_tokens, got.output_tokens, got.cache_read_input_tokens) == (20, 5, 30)
    got.input_tokens = 999  # a copy: callers cannot disturb the translator
    assert translator.usage.input_tokens == 20


# ---- endings ----------------------------------------------------------------------------------


def test_no_usage_chunk_reports_an_output_estimate() -> None:
    # Without a usage chunk the output is estimated at four characters a token (text,
    # reasoning and tool arguments), as the input is: 0 would leave limits and cost blind.
    raw = sse_data(chunk({"content": "hi"}, "stop")) + b"data: [DONE]\n\n"
    events = check_grammar(translate([raw]))
    assert events[-2][1]["usage"] == {"output_tokens": 1}
    call = {
        "index": 0,
        "id": "c1",
        "function": {"name": "Read", "arguments": '{"a": "' + "x" * 30 + '"}'},
    }
    chunks = [
        sse_data(chunk({"reasoning_content": "r" * 8})),
        sse_data(chunk({"content": "t" * 20})),
        sse_data(chunk({"tool_calls": [call]}, "tool_calls")),
        b"data: [DONE]\n\n",
    ]
    events = check_grammar(translate(chunks))
    assert events[-2][1]["usage"] == {"output_tokens": (8 + 20 + 38 + 3) // 4}


def test_finish_reason_without_done_ends_normally() -> None:
    events = check_grammar(translate([sse_data(chunk({"content": "hi"}, "length"))]))
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_done_without_finish_reason_ends_normally() -> None:
    events = check_grammar(translate([sse_data(chunk({"content": "hi"})), b"data: [DONE]\n"]))
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_last_line_without_newline_is_read_at_finish() -> None:
    events = check_grammar(translate([sse_data(chunk({"content": "hi"}, "stop")), b"data: [DONE]"]))
    assert events[-1][0] == "message_stop"


def test_truncated_stream_ends_with_an_error_event() -> None:
    events = check_grammar(translate([sse_data(chunk({"content": "hi"}))]))
    assert [name for name, _ in events][-3:] == [
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1]["error"]["type"] == "api_error"


def test_empty_upstream_is_an_error_only() -> None:
    events = check_grammar(translate([b""]))
    assert [name for name, _ in events] == ["error"]


def test_done_alone_gives_an_empty_text_message() -> None:
    events = check_grammar(translate([b"data: [DONE]\n\n"]))
    blocks = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert blocks == [{"type": "text", "text": ""}]


def test_error_object_in_stream() -> None:
    error = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    raw = (
        sse_data(chunk({"content": "hi"})) + sse_data(error) + sse_data(chunk({"content": "more"}))
    )
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=1)
    events = check_grammar(translator.feed(raw))
    assert events[-1][1]["error"] == {"type": "rate_limit_error", "message": "Rate limit reached"}
    assert translator.feed(sse_data(chunk({"content": "x"}))) == b""
    assert translator.finish() == b""
    assert translator.fail(UpstreamTimeoutError("late")) == b""


def test_error_first_sends_no_message_start() -> None:
    vllm = {
        "object": "error",
        "message": "This model's maximum context length is 10 tokens. However, your messages "
        "resulted in 20 tokens.",
        "type": "BadRequestError",
        "code": 400,
    }
    events = check_grammar(translate([sse_data(vllm)]))
    assert events == [
        (
            "error",
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 20 tokens > 10 maximum",
                },
            },
        )
    ]


def test_named_error_event() -> None:
    raw = b'event: error\ndata: {"message": "upstream exploded"}\n\n'
    events = check_grammar(translate([raw]))
    assert events[-1][1]["error"] == {"type": "api_error", "message": "upstream exploded"}


def test_malformed_chunk_is_an_error() -> None:
    events = check_grammar(translate([sse_data(chunk({"content": "a"})), b"data: {nope\n\n"]))
    assert events[-1][1]["error"]["type"] == "api_error"
    assert "malformed" in events[-1][1]["error"]["message"]


def test_fail_after_a_prefix() -> None:
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=1)
    out = translator.feed(sse_data(chunk({"content": "partial"})))
    out += translator.fail(UpstreamTimeoutError("upstream timed out"))
    events = check_grammar(out)
    assert events[-1][1]["error"] == {"type": "timeout_error", "message": "upstream timed out"}
    assert translator.finish() == b""


def test_fail_before_anything() -> None:
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=1)
    events = check_grammar(translator.fail(UpstreamTimeoutError("slow")))
    assert [name for name, _ in events] == ["error"]


def test_blank_data_and_other_choices_are_ignored() -> None:
    other = {"choices": [{"index": 1, "delta": {"content": "second choice"}}]}
    raw = b"data:\n\n" + sse_data(other) + sse_data(chunk({"content": "a"}, "stop"))
    events = check_grammar(translate([raw, b"data: [DONE]\n\n"]))
    texts = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert texts == ["a"]


# ---- tool calls -------------------------------------------------------------------------------


def _tool(
    index: int | None, *, cid: str | None = None, name: str | None = None, args: str | None = None
) -> bytes:
    call: dict[str, Any] = {}
    if index is not None:
        call["index"] = index
    if cid is not None:
        call["id"] = cid
    function = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    if function:
        call["function"] = function
    return sse_data(chunk({"tool_calls": [call]}))


def _tool_blocks(sse: bytes) -> list[tuple[str, str, str]]:
    """(id, name, concatenated partial_json) per tool_use block, in block order."""
    events = check_grammar(sse)
    blocks: dict[int, list[str]] = {}
    heads: dict[int, tuple[str, str]] = {}
    for name, data in events:
        if name == "content_block_start" and data["content_block"]["type"] == "tool_use":
            block = data["content_block"]
            heads[data["index"]] = (block["id"], block["name"])
            blocks[data["index"]] = []
        elif name == "content_block_delta" and data["index"] in blocks:
            blocks[data["index"]].append(data["delta"]["partial_json"])
    return [(*heads[i], "".join(parts)) for i, parts in blocks.items()]


def test_interleaved_parallel_calls_wait_for_the_open_one() -> None:
    raw = [
        _tool(0, cid="call_a", name="A", args='{"x": '),
        _tool(1, cid="call_b", name="B", args='{"y": '),
        _tool(0, args="1"),
        _tool(1, args="2}"),
        _tool(0, args="}"),
        _tool(2, cid="call_c", name="C", args="{}"),
        sse_data(chunk({}, "tool_calls")),
    ]
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=1)
    outs = [translator.feed(piece) for piece in raw]
    # A streams live, including after B appeared; B's fragments come out when A completes.
    assert b'"partial_json":"1"' in outs[2]
    assert b"call_b" not in outs[1] + outs[2] + outs[3] and b"call_b" in outs[4]
    sse = b"".join(outs) + translator.finish()
    assert _tool_blocks(sse) == [
        ("call_a", "A", '{"x": 1}'),
        ("call_b", "B", '{"y": 2}'),
        ("call_c", "C", "{}"),
    ]


def test_waiting_calls_play_out_in_order() -> None:
    raw = [
        _tool(0, cid="a"),  # the id alone first; the name follows
        _tool(0, name="A", args='{"s": "}'),  # ends in a brace, still not complete
        _tool(1, cid="b", name="B", args="{}"),
        _tool(2, cid="c", name="C", args='{"z": '),
        _tool(0, args='"}'),  # A completes: B (complete) closes at once, C goes on live
        _tool(2, args="3}"),
        sse_data(chunk({}, "tool_calls")),
    ]
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=1)
    outs = [translator.feed(piece) for piece in raw]
    assert b'"id":"c"' in outs[4] and b'"partial_json":"3}"' in outs[5]
    assert _tool_blocks(b"".join(outs) + translator.finish()) == [
        ("a", "A", '{"s": "}"}'),
        ("b", "B", "{}"),
        ("c", "C", '{"z": 3}'),
    ]


def test_incomplete_open_call_is_flushed_at_the_end() -> None:
    raw = [_tool(0, cid="a", name="A", args='{"x": "cut'), _tool(1, cid="b", name="B", args="{}")]
    assert _tool_blocks(translate([*raw, b"data: [DONE]\n\n"])) == [
        ("a", "A", '{"x": "cut'),
        ("b", "B", "{}"),
    ]


def test_text_amid_a_tool_calls_arguments_waits_for_them_to_complete() -> None:
    # Some servers stream content alongside tool calls: a text block started at once would
    # close the call's block, and the rest of its arguments could never be sent.
    raw = [
        _tool(0, cid="a", name="A", args='{"x'),
        _tool(1, cid="b", name="B", args="{}"),
        sse_data(chunk({"content": "then text"})),
        _tool(0, args='": 1}'),
        sse_data(chunk({}, "stop")),
    ]
    sse = translate(raw)
    assert _tool_blocks(sse) == [("a", "A", '{"x": 1}'), ("b", "B", "{}")]
    events = check_grammar(sse)
    texts = [
        data["delta"]["text"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "text_delta"
    ]
    assert texts == ["then text"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_text_held_for_arguments_that_never_complete_comes_out_at_the_end() -> None:
    raw = [
        _tool(0, cid="a", name="A", args='{"x": "cut'),
        sse_data(chunk({"content": "\n"})),
        sse_data(chunk({}, "tool_calls")),
    ]
    events = check_grammar(translate(raw))
    assert _tool_blocks(translate(raw)) == [("a", "A", '{"x": "cut')]
    assert [d["delta"].get("text") for n, d in events if n == "content_block_delta"][-1] == "\n"


def test_name_arriving_late_and_missing_ids() -> None:
    raw = [
        _tool(0, args='{"q": 1}'),
        _tool(0, name="late"),
        _tool(None, name="no_index", args="{}"),
        _tool(3, args="{}"),  # never named: emitted at the end with an empty name
        sse_data(chunk({}, "tool_calls")),
    ]
    assert _tool_blocks(translate(raw)) == [
        (f"toolu_{MESSAGE_ID}_0", "late", '{"q": 1}'),
        (f"toolu_{MESSAGE_ID}_1", "no_index", "{}"),
        (f"toolu_{MESSAGE_ID}_2", "", "{}"),
    ]


def test_calls_with_neither_index_nor_id_are_told_apart_by_name() -> None:
    raw = [
        _tool(None, name="get_weather", args='{"city":'),
        _tool(None, args='"Paris"}'),
        _tool(None, name="get_time", args='{"zone":"UTC"}'),
        sse_data(chunk({}, "tool_calls")),
    ]
    assert _tool_blocks(translate(raw)) == [
        (f"toolu_{MESSAGE_ID}_0", "get_weather", '{"city":"Paris"}'),
        (f"toolu_{MESSAGE_ID}_1", "get_time", '{"zone":"UTC"}'),
    ]


def test_arguments_resent_so_far_with_every_piece_are_sent_once() -> None:
    # DeepSeek- and Qianfan-style servers repeat the arguments so far in every chunk.
    raw = [
        _tool(0, cid="a", name="get_weather", args='{"city'),
        _tool(0, args='{"city": "Pa'),
        _tool(0, args='{"city": "Paris", "unit": "C"}'),
        sse_data(chunk({}, "tool_calls")),
    ]
    [(_, _, arguments)] = _tool_blocks(translate(raw))
    assert json.loads(arguments) == {"city": "Paris", "unit": "C"}


def test_arguments_resent_whole_at_the_end_are_dropped() -> None:
    # GLM-style servers send the complete arguments once more in the last chunk.
    raw = [
        _tool(0, cid="a", name="get_weather", args='{"city": '),
        _tool(0, args='"Paris"}'),
        _tool(0, args='{"city":"Paris"}'),
        sse_data(chunk({}, "tool_calls")),
    ]
    [(_, _, arguments)] = _tool_blocks(translate(raw))
    assert json.loads(arguments) == {"city": "Paris"}


def test_a_piece_that_begins_like_the_arguments_so_far_is_kept_where_an_object_may_start() -> None:
    # {"a":{"a":1}} cut after the first colon: the second piece is real, not a resend.
    raw = [
        _tool(0, cid="a", name="f", args='{"a":'),
        _tool(0, args='{"a":1}}'),
        sse_data(chunk({}, "tool_calls")),
    ]
    [(_, _, arguments)] = _tool_blocks(translate(raw))
    assert json.loads(arguments) == {"a": {"a": 1}}


def test_interleaved_fragments_of_calls_numbered_zero_go_to_the_call_their_id_names() -> None:
    raw = [
        _tool(0, cid="a", name="A", args='{"city":'),
        _tool(0, cid="b", name="B", args='{"zone":'),
        _tool(0, cid="a", args=' "Paris"}'),
        _tool(0, cid="b", args=' "UTC"}'),
        sse_data(chunk({}, "tool_calls")),
    ]
    events = check_grammar(translate(raw))
    assert _tool_blocks(translate(raw)) == [
        ("a", "A", '{"city": "Paris"}'),
        ("b", "B", '{"zone": "UTC"}'),
    ]
    assert len([n for n, _ in events if n == "content_block_start"]) == 2


def test_every_call_numbered_zero_with_distinct_ids() -> None:
    raw = [
        _tool(0, cid="a", name="A", args='{"n": 1}'),
        _tool(0, cid="b", name="B", args='{"n": 2}'),
        _tool(0, args=" "),
        sse_data(chunk({}, "tool_calls")),
    ]
    assert _tool_blocks(translate(raw)) == [("a", "A", '{"n": 1}'), ("b", "B", '{"n": 2} ')]


def test_arguments_sent_as_an_object() -> None:
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": {"k": [1, 2]}}}
    raw = sse_data(chunk({"tool_calls": [call]}, "tool_calls"))
    assert _tool_blocks(translate([raw])) == [("c", "f", '{"k":[1,2]}')]


def test_content_parts_in_deltas() -> None:
    raw = sse_data(chunk({"content": [{"type": "text", "text": "hi"}]}, "stop"))
    events = check_grammar(translate([raw]))
    assert [d["delta"] for n, d in events if n == "content_block_delta"] == [
        {"type": "text_delta", "text": "hi"}
    ]


def test_repeated_id_and_name_on_every_fragment() -> None:
    raw = [
        _tool(0, cid="a", name="A", args='{"x"'),
        _tool(0, cid="a", name="A", args=": 1}"),
        sse_data(chunk({}, "tool_calls")),
    ]
    assert _tool_blocks(translate(raw)) == [("a", "A", '{"x": 1}')]


# ---- hostile streams: the grammar holds whatever the upstream does --------------------------

_hostile_deltas = st.one_of(
    st.builds(lambda t: {"content": t}, st.text(max_size=5)),
    st.builds(lambda t: {"reasoning_content": t}, st.text(max_size=5)),
    st.builds(lambda t: {"refusal": t}, st.text(max_size=5)),
    st.builds(
        lambda i, cid, name, args: {
            "tool_calls": [
                {
                    k: v
                    for k, v in (
                        ("index", i),
                        ("id", cid),
                        ("function", {"name": name, "arguments": args}),
                    )
                    if v is not None
                }
            ]
        },
        st.none() | st.integers(0, 3),
        st.none() | st.sampled_from(["a", "b", "c"]),
        st.none() | st.sampled_from(["f", "g"]),
        st.none() | st.sampled_from(["", "{", "}", '{"a": 1}', '"x"', " ", "[1"]),
    ),
)
_hostile_events = st.one_of(
    _hostile_deltas.map(lambda d: sse_data(chunk(d))),
    st.sampled_from(["stop", "length", "tool_calls"]).map(lambda r: sse_data(chunk({}, r))),
    st.just(sse_data({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})),
    st.just(b"data: [DONE]\n\n"),
    st.just(sse_data({"error": {"message": "boom", "type": "server_error"}})),
    st.just(b"data: not json\n\n"),
    st.just(b": comment\n\n"),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_hostile_events, max_size=25),
    st.lists(st.integers(0, 10**4), max_size=10),
    st.sampled_from(["finish", "fail", "none"]),
)
def test_grammar_holds_for_any_upstream(events: list[bytes], cuts: list[int], ending: str) -> None:
    raw = b"".join(events)
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=5)
    out = b"".join(translator.feed(piece) for piece in split(raw, cuts))
    if ending == "finish":
        out += translator.finish()
    elif ending == "fail":
        out += translator.fail(UpstreamTimeoutError("timeout"))
    if ending != "none":
        check_grammar(out)
    elif out:  # a prefix, still well formed so far
        check_grammar(out + translator.fail(UpstreamTimeoutError("x")))


# ---- inputs a read-only review found mishandled ----------------------------------------------


def _final_tool_inputs(sse: bytes) -> list[tuple[str, Any]]:
    """(name, input) of each tool_use block, as the SDK accumulates the stream."""
    message = SdkClient().streamed(sse)
    return [(b["name"], b["input"]) for b in message["content"] if b["type"] == "tool_use"]


@pytest.mark.parametrize(
    "pieces",
    [
        # Resent so far, cut after ':' (where a real piece could open a nested object).
        ['{"city":', '{"city": "Paris"}'],
        # Cut after ','.
        ['{"city": "Paris",', '{"city": "Paris", "unit": "C"', '{"city": "Paris", "unit": "C"}'],
        # Seen resending first, then cut after ':'.
        ['{"ci', '{"city":', '{"city": "Par', '{"city": "Paris"}'],
    ],
)
def test_arguments_resent_so_far_are_not_appended_to_themselves(pieces: list[str]) -> None:
    raw = [_tool(0, cid="call_1", name="get_weather", args=pieces[0])]
    raw += [_tool(0, args=piece) for piece in pieces[1:]]
    sse = translate([*raw, sse_data(chunk({}, "tool_calls"))])
    assert _final_tool_inputs(sse) == [("get_weather", json.loads(pieces[-1]))]


def test_an_object_nested_under_a_key_of_the_same_name_still_streams_whole() -> None:
    # What the resend check must not take for a resend: a piece that opens an object but
    # does not complete it.
    pieces = ['{"a":', '{"a":1', "}}"]
    raw = [_tool(0, cid="call_1", name="f", args=pieces[0])]
    raw += [_tool(0, args=piece) for piece in pieces[1:]]
    sse = translate([*raw, sse_data(chunk({}, "tool_calls"))])
    assert _final_tool_inputs(sse) == [("f", {"a": {"a": 1}})]


@pytest.mark.parametrize("index", [None, 0])
def test_a_second_call_to_the_same_function_without_ids_is_its_own_block(
    index: int | None,
) -> None:
    raw = [
        _tool(index, name="get_weather", args='{"city":"Paris"}'),
        _tool(index, name="get_weather", args='{"city":"Rome"}'),
        _tool(index, name="get_weather", args='{"city":"Rome"}'),  # resent whole: the same call
        sse_data(chunk({}, "tool_calls")),
    ]
    assert _final_tool_inputs(translate(raw)) == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]


def test_an_empty_name_is_no_name_yet() -> None:
    raw = [
        _tool(0, cid="call_1", name="", args=""),
        _tool(0, name="get_weather", args='{"c":1}'),
        sse_data(chunk({}, "tool_calls")),
    ]
    assert _final_tool_inputs(translate(raw)) == [("get_weather", {"c": 1})]


def test_an_empty_read_between_cr_and_lf_keeps_the_event_name() -> None:
    error = b'data: {"message":"late boom","type":"server_error"}\r\n\r\n'
    raw = [sse_data(chunk({"content": "hi"}, "stop")), b"event: error\r", b"", b"\n" + error]
    assert parse_events(translate(raw, finish=False))[-1][0] == "error"


def test_a_byte_order_mark_ahead_of_the_first_event_is_dropped() -> None:
    raw = [b"\xef\xbb\xbf" + sse_data(chunk({"content": "hi"}, "stop")), b"data: [DONE]\n\n"]
    message = SdkClient().streamed(translate(raw))
    assert [b["text"] for b in message["content"]] == ["hi"]


@pytest.mark.parametrize(
    "usage", [{}, {"prompt_tokens": 10, "completion_tokens": None}, {"completion_tokens": None}]
)
def test_counts_the_usage_chunk_leaves_out_are_estimated_not_zero(usage: dict[str, Any]) -> None:
    raw = [
        sse_data(chunk({"content": "a reply of some length"}, "stop")),
        sse_data({"choices": [], "usage": usage}),
        b"data: [DONE]\n\n",
    ]
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=7)
    sse = b"".join(translator.feed(piece) for piece in raw) + translator.finish()
    final = SdkClient().streamed(sse)["usage"]
    assert final["output_tokens"] > 0
    assert final["input_tokens"] == (usage.get("prompt_tokens") or 7)
    assert not translator.usage_reported


def test_a_break_after_the_finish_reason_ends_the_answer_it_completed() -> None:
    translator = StreamTranslator(model=MODEL, message_id=MESSAGE_ID, input_tokens=7)
    sse = translator.feed(sse_data(chunk({"content": "whole"}, "stop")))
    sse += translator.fail(UpstreamTimeoutError("timeout before [DONE]"))
    assert [name for name, _ in check_grammar(sse)][-1] == "message_stop"
    assert SdkClient().streamed(sse)["stop_reason"] == "end_turn"


def test_a_choice_with_a_null_index_is_the_first() -> None:
    raw = [b'data: {"choices":[{"index":null,"delta":{"content":"x"},"finish_reason":"stop"}]}\n\n']
    message = SdkClient().streamed(translate([*raw, b"data: [DONE]\n\n"]))
    assert [b["text"] for b in message["content"]] == ["x"]
