"""Request validation: what the gateway relies on is checked, nothing stricter."""

from __future__ import annotations

import gc
import json
from typing import Any

import msgspec
import pytest

from messages_mw.errors import InvalidRequestError
from messages_mw.validation import (
    decode_count_tokens_request,
    decode_messages_request,
    describe_decode_error,
)

from .conftest import sample


def _body(**fields: object) -> bytes:
    base: dict[str, object] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def _error(body: bytes) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        decode_messages_request(body)
    return caught.value.message


@pytest.mark.parametrize("name", ["small_chat.json", "agent_turn.json", "long_context.json"])
def test_samples_decode(name: str) -> None:
    request = decode_messages_request(sample(name))
    assert request.model.startswith("claude-")
    assert request.messages


def test_forward_compatible_fields_are_accepted() -> None:
    body = _body(
        messages=[
            {"role": "user", "content": [{"type": "hologram", "depth": 3}]},
            {"role": "system", "content": "env"},
            {"role": "narrator", "content": [{"type": "text", "text": "x", "new_flag": True}]},
        ],
        some_future_field={"nested": [1, 2]},
        thinking={"type": "adaptive", "display": "updates"},
        max_tokens=0,
    )
    request = decode_messages_request(body)
    assert [m.role for m in request.messages] == ["user", "system", "narrator"]
    assert request.max_tokens == 0


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"model": 5}, "model: Expected `str`, got `int`"),
        ({"model": ...}, "model: Field required"),
        # Echoed in a response header and in spans: a megabyte would make unreadable answers.
        ({"model": "m" * 1025}, "model: Expected `str` of length <= 1024"),
        ({"max_tokens": "10"}, "max_tokens: Expected `int`, got `str`"),
        ({"max_tokens": -1}, "max_tokens: Expected `int` >= 0"),
        ({"max_tokens": 1.5}, "max_tokens: Expected `int`, got `float`"),
        ({"messages": []}, "messages: Expected `array` of length >= 1"),
        ({"messages": "hi"}, "messages: Expected `array`, got `str`"),
        ({"messages": [{"content": "x"}]}, "messages.0.role: Field required"),
        ({"messages": [{"role": "user"}]}, "messages.0.content: Field required"),
        ({"stream": "yes"}, "stream: Expected `bool`, got `str`"),
        ({"temperature": "hot"}, "temperature: Expected `float | null`, got `str`"),
        ({"top_k": 1.5}, "top_k: Expected `int | null`, got `float`"),
        ({"stop_sequences": [1]}, "stop_sequences.0: Expected `str`, got `int`"),
    ],
)
def test_wrong_fields_are_named(fields: dict[str, object], expected: str) -> None:
    assert _error(_body(**fields)).startswith(expected)


def test_a_model_id_as_long_as_an_arn_or_more_is_accepted() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/" + "a" * 955
    assert len(arn) == 1024 and decode_messages_request(_body(model=arn)).model == arn


def test_block_type_path_is_dotted() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "text", "text": "ok"}, {"text": "no type"}]},
    ]
    assert _error(_body(messages=messages)) == "messages.2.content.1.type: Field required"


def test_a_path_through_an_object_of_any_keys_names_the_object() -> None:
    # msgspec cannot say which key of such an object held the bad value ([...]): the path
    # names the object, never the garble the brackets used to make of it.
    class Schema(msgspec.Struct):
        input_schema: dict[str, Any]

    body = b'{"input_schema":{"properties":{"a":{"maximum":1e400}}}}'
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(body, type=Schema)
    assert describe_decode_error(caught.value, body, "tools.0") == (
        "tools.0.input_schema: Number out of range"
    )


def test_malformed_json_names_the_byte() -> None:
    assert "(byte 10)" in _error(b'{"model": x}')
    assert "(byte 9)" in _error(b'{"model":')


def test_a_lone_surrogate_is_named_as_such_not_as_truncated_input() -> None:
    # msgspec says "truncated"; Anthropic names the surrogate, and users chasing a proxy
    # that cuts bodies short would look in the wrong place.
    body = b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"ab\\ud800"}]}'
    lone = body.index(b"\\ud800")
    message = f"Request body is not valid JSON: a string holds a lone surrogate (byte {lone})"
    assert _error(body) == message
    # An escaped backslash before "ud800" is text, not an escape: truly truncated input.
    assert "truncated" in _error(b'{"model":"\\\\ud800')


def test_body_must_be_an_object() -> None:
    assert _error(b"[1, 2]") == "body: Expected `object`, got `array`"


def test_count_tokens_needs_no_max_tokens() -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
    assert decode_count_tokens_request(body).model == "m"


def test_decoded_requests_are_invisible_to_the_garbage_collector() -> None:
    # Only the lists stay tracked: the structs of a 57 KB agent turn do not, so requests in
    # flight set off far fewer collections (see the comment in messages_mw/validation.py).
    request = decode_messages_request(sample("agent_turn.json"))
    content_lists = [m.content for m in request.messages if isinstance(m.content, list)]
    assert content_lists, "the sample should have block lists to check"
    assert not gc.is_tracked(request)
    assert not any(gc.is_tracked(message) for message in request.messages)
    assert not any(gc.is_tracked(block) for blocks in content_lists for block in blocks)
    counted = decode_count_tokens_request(sample("agent_turn.json"))
    assert not gc.is_tracked(counted)
