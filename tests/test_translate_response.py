"""Chat Completions responses and errors -> Anthropic messages and error envelopes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from messages_mw.errors import (
    GatewayError,
    InternalGatewayError,
    InvalidRequestError,
    OverloadedError,
    RateLimitError,
    UpstreamUnavailableError,
)
from messages_mw.translate import to_anthropic_message, translate_error

MODEL = "claude-haiku-4-5"
MESSAGE_ID = "msg_01Translated00000000001"


def _translate(
    message: dict[str, Any], finish_reason: str | None = "stop", **body: Any
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", **message},
        "finish_reason": finish_reason,
    }
    raw = json.dumps({"id": "chatcmpl-9", "object": "chat.completion", "choices": [choice], **body})
    translated: dict[str, Any] = json.loads(
        to_anthropic_message(raw.encode(), model=MODEL, message_id=MESSAGE_ID)
    )
    return translated


def test_text_reply_envelope() -> None:
    usage = {"prompt_tokens": 120, "completion_tokens": 8, "total_tokens": 128}
    got = _translate({"content": "Hello!"}, usage=usage, model="gpt-4.1", system_fingerprint="x")
    assert got == {
        "type": "message",
        "id": MESSAGE_ID,
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 120,
            "output_tokens": 8,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def test_cached_prompt_tokens_are_split_out() -> None:
    usage = {
        "prompt_tokens": 2000,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 1800},
    }
    assert _translate({"content": "x"}, usage=usage)["usage"] == {
        "input_tokens": 200,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1800,
    }


def test_missing_usage_is_estimated() -> None:
    # No estimate of the input without the request; the output from the reply's length.
    usage = _translate({"content": "x" * 41})["usage"]
    assert usage["input_tokens"] == 0 and usage["output_tokens"] == 11


@pytest.mark.parametrize(
    ("usage", "expected"),
    [({}, (0, 11)), ({"prompt_tokens": 9, "completion_tokens": None}, (9, 11))],
)
def test_counts_a_usage_object_leaves_out_are_estimated(
    usage: dict[str, Any], expected: tuple[int, int]
) -> None:
    got = _translate({"content": "x" * 41}, usage=usage)["usage"]
    assert (got["input_tokens"], got["output_tokens"]) == expected


def test_tool_calls_become_tool_use_blocks() -> None:
    calls = [
        {
            "id": "call_abc",
            "type": "function",
            "function": {"name": "Read", "arguments": '{"file_path": "/x"}'},
        },
        {"id": "call_def", "type": "function", "function": {"name": "Noop", "arguments": ""}},
    ]
    got = _translate({"content": None, "tool_calls": calls}, "tool_calls")
    assert got["content"] == [
        {"type": "tool_use", "id": "call_abc", "name": "Read", "input": {"file_path": "/x"}},
        {"type": "tool_use", "id": "call_def", "name": "Noop", "input": {}},
    ]
    assert got["stop_reason"] == "tool_use"


def test_text_before_tool_calls_is_kept() -> None:
    calls = [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]
    got = _translate({"content": "Let me look.", "tool_calls": calls}, "tool_calls")
    assert [block["type"] for block in got["content"]] == ["text", "tool_use"]


def test_empty_text_is_omitted_only_next_to_tool_calls() -> None:
    calls = [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]
    assert [b["type"] for b in _translate({"content": "", "tool_calls": calls})["content"]] == [
        "tool_use"
    ]
    assert _translate({"content": ""})["content"] == [{"type": "text", "text": ""}]
    assert _translate({"content": None})["content"] == [{"type": "text", "text": ""}]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("  ", {}),
        (None, {}),
        ({"already": "an object"}, {"already": "an object"}),
        ('{"cut": "sho', {"_raw": '{"cut": "sho'}),
        ("[1, 2]", {"_raw": "[1, 2]"}),
    ],
)
def test_tool_arguments(arguments: Any, expected: dict[str, Any]) -> None:
    calls = [{"id": "call_1", "function": {"name": "f", "arguments": arguments}}]
    assert _translate({"tool_calls": calls})["content"][0]["input"] == expected


def test_missing_tool_id_is_made_up_per_position() -> None:
    calls = [{"function": {"name": "f", "arguments": "{}"}}, {"function": {"name": "g"}}]
    ids = [block["id"] for block in _translate({"tool_calls": calls})["content"]]
    assert ids == [f"toolu_{MESSAGE_ID}_0", f"toolu_{MESSAGE_ID}_1"]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_becomes_an_unsigned_thinking_block_first(field: str) -> None:
    got = _translate({"content": "Answer", field: "Because."})
    assert got["content"] == [
        {"type": "thinking", "thinking": "Because.", "signature": ""},
        {"type": "text", "text": "Answer"},
    ]


def test_reasoning_content_wins_when_both_are_sent() -> None:
    got = _translate({"content": "A", "reasoning_content": "one", "reasoning": "one"})
    assert got["content"][0] == {"type": "thinking", "thinking": "one", "signature": ""}


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        # Saying tool calls but sending none: an agent loop would look for a call to run.
        ("tool_calls", "end_turn"),
        ("function_call", "end_turn"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_finish_reasons(finish_reason: str | None, stop_reason: str) -> None:
    got = _translate({"content": "x"}, finish_reason)
    assert got["stop_reason"] == stop_reason and got["stop_sequence"] is None


def test_a_stop_string_the_server_names_is_reported_as_anthropic_does() -> None:
    # vLLM says which stop string ended the answer; a stop token (an id) is no stop sequence.
    def ended_by(matched: str | int) -> dict[str, Any]:
        body = {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x"},
                    "finish_reason": "stop",
                    "stop_reason": matched,
                }
            ]
        }
        return json.loads(
            to_anthropic_message(json.dumps(body).encode(), model="m", message_id="msg_1")
        )

    named = ended_by("END")
    assert (named["stop_reason"], named["stop_sequence"]) == ("stop_sequence", "END")
    token = ended_by(128009)
    assert (token["stop_reason"], token["stop_sequence"]) == ("end_turn", None)


def test_tool_calls_with_their_finish_reason_are_tool_use() -> None:
    calls = [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]
    assert _translate({"tool_calls": calls}, "tool_calls")["stop_reason"] == "tool_use"


@pytest.mark.parametrize("finish_reason", ["abort", "error"])
def test_an_aborted_completion_is_an_upstream_error_not_a_finished_answer(
    finish_reason: str,
) -> None:
    # vLLM ends a request cut short (an engine shutdown) with a 200 and finish_reason abort: a
    # client told end_turn would take the truncated answer for a complete one.
    with pytest.raises(UpstreamUnavailableError, match=f"finish_reason '{finish_reason}'"):
        _translate({"content": "The answer is"}, finish_reason)


def test_stop_with_tool_calls_is_tool_use() -> None:
    calls = [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]
    assert _translate({"tool_calls": calls}, "stop")["stop_reason"] == "tool_use"


def test_content_as_a_list_of_parts() -> None:
    parts = [
        {"type": "thinking", "thinking": []},
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]
    assert _translate({"content": parts})["content"] == [{"type": "text", "text": "ab"}]


def test_refusal_text() -> None:
    got = _translate({"content": None, "refusal": "I can't help with that."})
    assert got["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert got["stop_reason"] == "refusal"


def test_error_object_in_a_2xx_body_raises_the_mapped_error() -> None:
    body = json.dumps(
        {"error": {"message": "Rate limit", "type": "requests", "code": "rate_limit_exceeded"}}
    )
    with pytest.raises(RateLimitError, match="Rate limit"):
        to_anthropic_message(body.encode(), model=MODEL, message_id=MESSAGE_ID)
    vllm = {"object": "error", "message": "boom", "type": "InternalServerError", "code": 500}
    with pytest.raises(InternalGatewayError):
        to_anthropic_message(json.dumps(vllm).encode(), model=MODEL, message_id=MESSAGE_ID)


def test_an_error_object_with_its_status_as_a_string_raises_that_status() -> None:
    body = {"error": {"message": "bad field", "type": "BadRequestError", "code": "400"}}
    with pytest.raises(InvalidRequestError, match="bad field"):
        to_anthropic_message(json.dumps(body).encode(), model=MODEL, message_id=MESSAGE_ID)


def test_an_upstream_redirect_is_a_502_not_an_internal_error() -> None:
    status, error = _error(307, b"")
    assert (status, error["type"]) == (502, "api_error")
    assert (
        error["message"] == "The upstream redirected (HTTP 307), which the gateway does not follow."
    )


@pytest.mark.parametrize(
    "body", [b"<html>bad gateway</html>", b'{"choices": []}', b'{"object": "list"}']
)
def test_a_body_that_is_not_a_completion_is_a_502(body: bytes) -> None:
    with pytest.raises(UpstreamUnavailableError):
        to_anthropic_message(body, model=MODEL, message_id=MESSAGE_ID)


# ---- errors -----------------------------------------------------------------------------------


def _error(status: int, body: Any) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    new_status, envelope = translate_error(status, raw)
    parsed = json.loads(envelope)
    assert set(parsed) == {"type", "error", "request_id"} and parsed["request_id"] is None
    assert parsed["type"] == "error" and set(parsed["error"]) == {"type", "message"}
    return new_status, parsed["error"]


def _openai(
    message: str, error_type: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


@pytest.mark.parametrize(
    ("status", "expected_status", "expected_type"),
    [
        (400, 400, "invalid_request_error"),
        (401, 401, "authentication_error"),
        (403, 403, "permission_error"),
        (404, 404, "not_found_error"),
        (409, 409, "invalid_request_error"),
        (413, 413, "request_too_large"),
        (422, 400, "invalid_request_error"),
        (429, 429, "rate_limit_error"),
        (500, 500, "api_error"),
        (502, 502, "api_error"),
        (503, 503, "api_error"),
        (504, 504, "timeout_error"),
        (529, 529, "overloaded_error"),
        (599, 599, "api_error"),
    ],
)
def test_status_mapping(status: int, expected_status: int, expected_type: str) -> None:
    assert _error(status, _openai("something")) == (
        expected_status,
        {"type": expected_type, "message": "something"},
    )


def test_context_length_with_numbers() -> None:
    message = (
        "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 130532 tokens. Please reduce the length of the messages."
    )
    assert _error(400, _openai(message, code="context_length_exceeded")) == (
        400,
        {
            "type": "invalid_request_error",
            "message": "prompt is too long: 130532 tokens > 128000 maximum",
        },
    )


def test_context_length_caused_by_max_tokens() -> None:
    message = (
        "This model's maximum context length is 8192 tokens, however you requested 9000 tokens "
        "(8000 in your prompt; 1000 for the completion). Please reduce your prompt; or "
        "completion length."
    )
    assert _error(400, _openai(message))[1]["message"] == (
        "input length and `max_tokens` exceed context limit: 8000 + 1000 > 8192, "
        "decrease input length or `max_tokens` and try again"
    )


def test_context_length_vllm_wordings() -> None:
    vllm = {
        "object": "error",
        "message": "This model's maximum context length is 4096 tokens. However, you requested "
        "5000 tokens (4500 in the messages, 500 in the completion).",
        "type": "BadRequestError",
        "code": 400,
    }
    assert _error(400, vllm)[1]["message"] == "prompt is too long: 4500 tokens > 4096 maximum"
    longer = {
        "detail": "The input (5,000 tokens) is longer than the model's context length "
        "(4,096 tokens)."
    }
    assert _error(400, longer)[1]["message"] == "prompt is too long: 5000 tokens > 4096 maximum"


def test_context_length_vllm_max_tokens_too_large() -> None:
    # Claude Code lowers max_tokens for this message and compacts for "prompt is too long":
    # the prompt fits here, so compacting would not help.
    vllm = {
        "object": "error",
        "message": "'max_tokens' or 'max_completion_tokens' is too large: 16384. This model's "
        "maximum context length is 65536 tokens and your request has 52189 input tokens "
        "(16384 > 65536 - 52189). (parameter=max_tokens, value=16384)",
        "type": "BadRequestError",
        "code": 400,
    }
    assert _error(400, vllm)[1]["message"] == (
        "input length and `max_tokens` exceed context limit: 52189 + 16384 > 65536, "
        "decrease input length or `max_tokens` and try again"
    )


def test_context_length_without_numbers() -> None:
    status, error = _error(413, _openai("Request too big", code="context_length_exceeded"))
    assert (status, error["message"]) == (400, "prompt is too long: Request too big")


def test_insufficient_quota_is_billing() -> None:
    body = _openai("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    assert _error(429, body) == (
        402,
        {"type": "billing_error", "message": "You exceeded your current quota"},
    )


def test_overloaded_5xx() -> None:
    assert _error(503, _openai("The engine is currently overloaded", "server_error"))[0] == 529


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"upstream connect error", "upstream connect error"),
        (b"", "upstream error (HTTP 502)"),
        ({"error": "plain string"}, "plain string"),
        ({"detail": [{"loc": ["body"], "msg": "bad"}]}, '[{"loc":["body"],"msg":"bad"}]'),
        ({"message": "top level", "type": "x"}, "top level"),
    ],
)
def test_error_body_shapes(body: Any, message: str) -> None:
    assert _error(502, body) == (502, {"type": "api_error", "message": message})


def test_error_classes_raised_for_2xx_error_bodies() -> None:
    def raised(error: dict[str, Any]) -> GatewayError:
        with pytest.raises(GatewayError) as info:
            to_anthropic_message(
                json.dumps({"error": error}).encode(), model=MODEL, message_id=MESSAGE_ID
            )
        return info.value

    assert isinstance(
        raised({"message": "m", "code": "context_length_exceeded"}), InvalidRequestError
    )
    assert isinstance(raised({"message": "m", "type": "overloaded_error"}), OverloadedError)
    assert isinstance(raised({"message": "m", "code": 502}), UpstreamUnavailableError)
    billing = raised({"message": "m", "code": "insufficient_quota"})
    assert (billing.status, billing.error_type) == (402, "billing_error")


@pytest.mark.parametrize("finish_reason", ["tool_calls", "function_call"])
def test_an_answer_with_tool_calls_stops_for_tool_use(finish_reason: str) -> None:
    # Older servers still say "function_call" for an answer that calls tools.
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    got = _translate({"content": None, "tool_calls": [call]}, finish_reason)
    assert got["stop_reason"] == "tool_use"


def test_cached_tokens_over_the_prompt_never_make_input_negative() -> None:
    # Some servers report cached_tokens beyond prompt_tokens (cumulative over a batch).
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 60},
    }
    got = _translate({"content": "x"}, usage=usage)
    assert got["usage"]["input_tokens"] == 0
    assert got["usage"]["cache_read_input_tokens"] == 10
