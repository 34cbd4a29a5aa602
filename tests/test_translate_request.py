"""Anthropic Messages requests -> Chat Completions requests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from messages_mw import translate
from messages_mw.errors import InvalidRequestError
from messages_mw.translate import OpenAIQuirks, to_chat_completions

from .servers import SAMPLES

DEFAULT = OpenAIQuirks()
PNG = "iVBORw0KGgo="


def _translate(
    quirks: OpenAIQuirks = DEFAULT, *, stream: bool = False, **request: Any
) -> dict[str, Any]:
    request.setdefault("model", "claude-sonnet-4-6")
    request.setdefault("max_tokens", 1024)
    request.setdefault("messages", [{"role": "user", "content": "hi"}])
    body = json.dumps(request).encode()
    translated: dict[str, Any] = json.loads(
        to_chat_completions(body, model="gpt-4.1", quirks=quirks, stream=stream)
    )
    return translated


def _rejects(match: str, quirks: OpenAIQuirks = DEFAULT, **request: Any) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        _translate(quirks, **request)
    assert info.value.status == 400


def _user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


def test_public_names() -> None:
    assert translate.__all__ == [
        "OpenAIQuirks",
        "StreamTranslator",
        "to_anthropic_message",
        "to_chat_completions",
        "translate_error",
    ]


def test_minimal_request() -> None:
    assert _translate() == {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 1024,
    }


def test_max_tokens_field_quirk() -> None:
    got = _translate(OpenAIQuirks(max_tokens_field="max_tokens"))
    assert got["max_tokens"] == 1024 and "max_completion_tokens" not in got


def test_reasoning_history_quirk_sends_thinking_back_as_reasoning_content() -> None:
    # DeepSeek's thinking mode answers 400 to a tool-call turn without its reasoning_content.
    thinking = {"type": "thinking", "thinking": "Need the weather.", "signature": ""}
    call = {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [thinking, call]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "9C"}],
        },
    ]
    kept = _translate(OpenAIQuirks(reasoning_history="reasoning_content"), messages=messages)
    assistant = kept["messages"][1]
    assert assistant["reasoning_content"] == "Need the weather."
    assert assistant["tool_calls"][0]["id"] == "call_1"
    dropped = _translate(messages=messages)["messages"][1]
    assert "reasoning_content" not in dropped


def test_stream_and_usage_chunk() -> None:
    got = _translate(stream=True)
    assert got["stream"] is True and got["stream_options"] == {"include_usage": True}
    no_usage = _translate(OpenAIQuirks(stream_usage=False), stream=True)
    assert no_usage["stream"] is True and "stream_options" not in no_usage
    # The body's own "stream" is the client's; the provider decides what goes upstream.
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": True, "messages": _user()}).encode()
    assert b"stream" not in to_chat_completions(body, model="m", quirks=DEFAULT, stream=False)


def test_sampling_stop_and_user() -> None:
    got = _translate(
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        stop_sequences=["\n\nHuman:", "END"],
        metadata={"user_id": '{"device_id":"abc"}'},
    )
    assert (got["temperature"], got["top_p"]) == (0.2, 0.9)
    assert got["stop"] == ["\n\nHuman:", "END"] and "top_k" not in got
    assert got["user"] == '{"device_id":"abc"}'


def test_too_many_stop_sequences() -> None:
    _rejects(r"^stop_sequences: .*at most 4", stop_sequences=["a", "b", "c", "d", "e"])


def test_unknown_and_anthropic_only_fields_are_dropped() -> None:
    got = _translate(
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        output_config={"effort": "medium"},
        service_tier="auto",
        cache_control={"type": "ephemeral"},
        container="c_1",
        speed="fast",
        brand_new_field={"x": 1},
        mcp_servers=[],
    )
    assert set(got) == {"model", "messages", "max_completion_tokens"}


def test_system_string_and_blocks() -> None:
    assert _translate(system="Be brief.")["messages"][0] == {
        "role": "system",
        "content": "Be brief.",
    }
    blocks = [
        {"type": "text", "text": "One."},
        {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}},
    ]
    assert _translate(system=blocks)["messages"][0] == {"role": "system", "content": "One.\n\nTwo."}
    assert _translate(system="")["messages"][0]["role"] == "user"
    _rejects(
        r"^system\.0: system content may only hold text",
        system=[{"type": "image", "source": {"type": "url", "url": "u"}}],
    )


def test_system_messages_stay_in_place() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}
            ],
        },
        {"role": "assistant", "content": "hello"},
    ]
    assert _translate(system="top", messages=messages)["messages"] == [
        {"role": "system", "content": "top"},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "# Environment"},
        {"role": "assistant", "content": "hello"},
    ]


def test_text_blocks_join_and_cache_control_is_stripped() -> None:
    messages = _user(
        {"type": "text", "text": "<system-reminder>x</system-reminder>"},
        {
            "type": "text",
            "text": "say hi",
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
            "citations": [],
        },
    )
    got = _translate(messages=messages)
    assert got["messages"] == [
        {"role": "user", "content": "<system-reminder>x</system-reminder>\n\nsay hi"}
    ]
    assert "cache_control" not in json.dumps(got)


def test_images() -> None:
    messages = _user(
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
    )
    assert _translate(messages=messages)["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
    ]
    _rejects(
        r"^messages\.0\.content\.1: images are not supported",
        OpenAIQuirks(supports_images=False),
        messages=messages,
    )
    file_image = _user({"type": "image", "source": {"type": "file", "file_id": "file_1"}})
    _rejects(
        r"^messages\.0\.content\.0\.source\.type: image sources of type 'file'", messages=file_image
    )


def test_documents() -> None:
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
    }
    with_pdf = OpenAIQuirks(supports_documents=True)
    assert _translate(with_pdf, messages=_user(pdf))["messages"][0]["content"] == [
        {
            "type": "file",
            "file": {
                "filename": "document.pdf",
                "file_data": "data:application/pdf;base64,JVBERi0=",
            },
        }
    ]
    _rejects(
        r"^messages\.0\.content\.0: documents are not supported by this provider",
        messages=_user(pdf),
    )
    url_pdf = {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}
    _rejects(
        r"^messages\.0\.content\.0\.source\.type: documents with source type 'url'",
        with_pdf,
        messages=_user(url_pdf),
    )
    text_doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "Grass is green."},
        "title": "Facts",
        "citations": {"enabled": True},
    }
    assert (
        _translate(messages=_user(text_doc))["messages"][0]["content"] == "Facts\n\nGrass is green."
    )
    content_doc = {
        "type": "document",
        "source": {
            "type": "content",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
    }
    assert _translate(messages=_user(content_doc))["messages"][0]["content"] == "a\n\nb"
    string_doc = {
        "type": "document",
        "source": {"type": "content", "content": "plain"},
        "context": "ctx",
    }
    assert _translate(messages=_user(string_doc))["messages"][0]["content"] == "ctx\n\nplain"


def test_search_result_becomes_text() -> None:
    block = {
        "type": "search_result",
        "source": "https://x",
        "title": "T",
        "content": [{"type": "text", "text": "body"}],
    }
    assert _translate(messages=_user(block))["messages"][0]["content"] == "T\n\nhttps://x\n\nbody"


def test_unknown_block_types_are_named() -> None:
    _rejects(
        r"^messages\.0\.content\.1: content blocks of type 'container_upload' are not supported",
        messages=_user({"type": "text", "text": "x"}, {"type": "container_upload", "file_id": "f"}),
    )
    server_tool = [
        {"role": "user", "content": "search"},
        {
            "role": "assistant",
            "content": [
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
            ],
        },
    ]
    _rejects(
        r"^messages\.1\.content\.0: content blocks of type 'server_tool_use'", messages=server_tool
    )
    _rejects(r"^messages\.0\.role: ", messages=[{"role": "tool", "content": "x"}])


def test_tool_definitions() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [
        {
            "name": "get_weather",
            "description": "Weather.",
            "input_schema": schema,
            "cache_control": {"type": "ephemeral"},
            "strict": True,
        },
        {
            "type": "custom",
            "name": "noop",
            "input_schema": {"type": "object"},
            "defer_loading": True,
        },
    ]
    assert _translate(tools=tools)["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": schema, "description": "Weather."},
        },
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    ]


@pytest.mark.parametrize(
    "tool_type", ["web_search_20250305", "bash_20250124", "text_editor_20250728", "mcp_toolset"]
)
def test_server_and_anthropic_defined_tools_are_rejected(tool_type: str) -> None:
    tools = [{"name": "ok", "input_schema": {"type": "object"}}, {"type": tool_type, "name": "x"}]
    _rejects(rf"^tools\.1: tools of type '{tool_type}' are not supported", tools=tools)


def test_tool_without_schema_and_mcp_servers() -> None:
    _rejects(r"^tools\.0\.input_schema: Field required", tools=[{"name": "x"}])
    _rejects(r"^mcp_servers: ", mcp_servers=[{"type": "url", "url": "https://m", "name": "m"}])


_TOOLS = [{"name": "f", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}, None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    got = _translate(tools=_TOOLS, tool_choice=choice)
    assert got["tool_choice"] == expected
    assert got.get("parallel_tool_calls") == parallel


def test_tool_choice_without_tools_is_dropped() -> None:
    got = _translate(tool_choice={"type": "auto", "disable_parallel_tool_use": True}, tools=[])
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(got)
    _rejects(r"^tool_choice\.name: Field required", tools=_TOOLS, tool_choice={"type": "tool"})
    _rejects(r"^tool_choice\.type: ", tools=_TOOLS, tool_choice={"type": "sometimes"})


def test_tool_round_trip_messages() -> None:
    messages = [
        {"role": "user", "content": "read two files"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "EqQB"},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "Reading."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "Read",
                    "input": {"file_path": "/a", "n": [1, 2]},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>r</system-reminder>"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "1\thello",
                    "cache_control": {"type": "ephemeral"},
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [
                        {"type": "text", "text": "no"},
                        {"type": "text", "text": "such file"},
                    ],
                    "is_error": True,
                },
            ],
        },
    ]
    assert _translate(messages=messages)["messages"] == [
        {"role": "user", "content": "read two files"},
        {
            "role": "assistant",
            "content": "Reading.",
            "tool_calls": [
                {
                    "type": "function",
                    "id": "toolu_1",
                    "function": {"name": "Read", "arguments": '{"file_path":"/a","n":[1,2]}'},
                },
                {
                    "type": "function",
                    "id": "toolu_2",
                    "function": {"name": "Read", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "content": "1\thello", "tool_call_id": "toolu_1"},
        {"role": "tool", "content": "Error: no\n\nsuch file", "tool_call_id": "toolu_2"},
        {"role": "user", "content": "<system-reminder>r</system-reminder>"},
    ]


def test_tool_only_assistant_turn_has_null_content() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
    ]
    got = _translate(messages=messages)["messages"]
    assert got[1]["content"] is None
    assert got[2] == {"role": "tool", "content": "", "tool_call_id": "t"}
    assert len(got) == 3


def test_empty_error_result() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [], "is_error": True}
            ],
        }
    ]
    assert _translate(messages=messages)["messages"] == [
        {"role": "tool", "content": "Error", "tool_call_id": "t"}
    ]


def test_images_in_tool_results_follow_in_a_user_message() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"},
    }
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_shot",
                    "content": [{"type": "text", "text": "Screenshot taken"}, image],
                },
                {"type": "tool_result", "tool_use_id": "toolu_plain", "content": "ok"},
                {"type": "text", "text": "Continue."},
            ],
        }
    ]
    assert _translate(messages=messages)["messages"] == [
        {"role": "tool", "content": "Screenshot taken", "tool_call_id": "toolu_shot"},
        {"role": "tool", "content": "ok", "tool_call_id": "toolu_plain"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Continue."},
                {"type": "text", "text": "Attachments from tool result toolu_shot:"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
            ],
        },
    ]
    no_images = OpenAIQuirks(supports_images=False)
    _rejects(
        r"^messages\.0\.content\.0\.content\.1: images are not supported",
        no_images,
        messages=messages,
    )


def test_blocks_that_do_not_fit_a_role() -> None:
    tool_use_in_user = _user({"type": "tool_use", "id": "t", "name": "f", "input": {}})
    _rejects(
        r"^messages\.0\.content\.0: tool_use blocks are not allowed here", messages=tool_use_in_user
    )
    image_in_assistant = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "content": [{"type": "image", "source": {"type": "url", "url": "u"}}],
        },
    ]
    _rejects(
        r"^messages\.1\.content\.0: image blocks in assistant messages", messages=image_in_assistant
    )
    nested = _user(
        {
            "type": "tool_result",
            "tool_use_id": "t",
            "content": [{"type": "tool_result", "tool_use_id": "u"}],
        }
    )
    _rejects(
        r"^messages\.0\.content\.0\.content\.0: tool_result blocks are not allowed here",
        messages=nested,
    )


def test_thinking_only_assistant_turn_disappears_and_neighbours_merge() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
        {"role": "user", "content": "b"},
    ]
    assert _translate(messages=messages)["messages"] == [{"role": "user", "content": "a\n\nb"}]
    loose = _translate(OpenAIQuirks(strict_roles=False), messages=messages)["messages"]
    assert loose == [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]


def test_consecutive_assistant_turns_merge_with_their_tool_calls() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
        },
        {"role": "assistant", "content": "and"},
    ]
    merged = _translate(messages=messages)["messages"][1]
    assert merged["content"] == "and" and [c["id"] for c in merged["tool_calls"]] == ["t1"]


@pytest.mark.parametrize(
    ("thinking", "output_config", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
        ({"type": "enabled", "budget_tokens": 4095}, None, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 16383}, None, "medium"),
        ({"type": "enabled", "budget_tokens": 16384}, None, "high"),
        ({"type": "adaptive", "display": "omitted"}, None, "medium"),
        ({"type": "adaptive"}, {"effort": "low"}, "low"),
        ({"type": "adaptive"}, {"effort": "max"}, "high"),
        ({"type": "disabled"}, None, None),
    ],
)
def test_thinking_to_reasoning_effort(
    thinking: dict[str, Any], output_config: Any, effort: str | None
) -> None:
    quirks = OpenAIQuirks(reasoning="reasoning_effort")
    extra = {"output_config": output_config} if output_config else {}
    assert _translate(quirks, thinking=thinking, **extra).get("reasoning_effort") == effort
    assert "reasoning_effort" not in _translate(thinking=thinking, **extra)


def test_structured_output_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    expected = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    assert (
        _translate(output_config={"format": {"type": "json_schema", "schema": schema}})[
            "response_format"
        ]
        == expected
    )
    assert (
        _translate(output_format={"type": "json_schema", "schema": schema})["response_format"]
        == expected
    )
    _rejects(r"^output_config\.format: only", output_config={"format": {"type": "regex"}})


def test_invalid_json_and_missing_fields() -> None:
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        to_chat_completions(b"{", model="m", quirks=DEFAULT, stream=False)
    _rejects(
        r"^messages\.0\.content\.0\.source\.data: Field required",
        messages=_user({"type": "image", "source": {"type": "base64"}}),
    )


def test_a_bad_number_deep_in_a_tool_schema_names_the_schema() -> None:
    # JSON can spell a number no float holds; the error names the schema that holds it
    # (msgspec cannot name the key inside it), not a garbled path.
    body = (
        b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":'
        b'[{"name":"t","input_schema":{"type":"object","properties":{"a":{"maximum":1e400}}}}]}'
    )
    with pytest.raises(InvalidRequestError) as caught:
        to_chat_completions(body, model="m", quirks=DEFAULT, stream=False)
    assert caught.value.message == "tools.0.input_schema: Number out of range"


def test_quirks_reject_unknown_options() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"supports_images": True, "typo": 1}, OpenAIQuirks)


@pytest.mark.parametrize("name", ["small_chat", "agent_turn", "long_context"])
def test_samples_translate(name: str) -> None:
    body = (SAMPLES / f"{name}.json").read_bytes()
    quirks = OpenAIQuirks(supports_documents=True, reasoning="reasoning_effort")
    got = json.loads(to_chat_completions(body, model="gpt-4.1", quirks=quirks, stream=True))
    original = json.loads(body)
    roles = [message["role"] for message in got["messages"]]
    assert all(a != b or a == "tool" for a, b in pairwise(roles))
    calls = [c["id"] for m in got["messages"] for c in m.get("tool_calls", [])]
    results = [m["tool_call_id"] for m in got["messages"] if m["role"] == "tool"]
    assert calls == results
    assert len(got.get("tools", [])) == len(original.get("tools", []))
    dumped = json.dumps(got)
    assert '"cache_control":' not in dumped and '"signature":' not in dumped


# ---- meaning survives: translate, then convert back with an independent reference ------------

_LABEL = re.compile(r"^Attachments from tool result (.+):$")


@dataclass
class _Turn:
    """One turn's meaning: role, text, tool calls, tool results (id, text, error, images),
    images (as URLs)."""

    role: str
    texts: list[str] = field(default_factory=list)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    results: list[tuple[str, str, bool, list[str]]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def key(self) -> tuple[Any, ...]:
        return (self.role, "\n\n".join(self.texts), self.calls, self.results, self.images)


def _image_url(block: dict[str, Any]) -> str:
    source = block["source"]
    if source["type"] == "base64":
        return f"data:{source['media_type']};base64,{source['data']}"
    return str(source["url"])


def _meaning(request: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Anthropic's own semantics: consecutive same-role turns are one turn, thinking is not
    content, tool results come first in their turn."""
    turns: list[_Turn] = []
    system = request.get("system")
    if system:
        texts = [system] if isinstance(system, str) else [b["text"] for b in system]
        turns.append(_Turn("system", texts))
    for message in request["messages"]:
        turn = _Turn(message["role"])
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            kind = block["type"]
            if kind == "text":
                turn.texts.append(block["text"])
            elif kind == "image":
                turn.images.append(_image_url(block))
            elif kind == "tool_use":
                turn.calls.append((block["id"], block["name"], block["input"]))
            elif kind == "tool_result":
                inner = block.get("content") or []
                inner = [{"type": "text", "text": inner}] if isinstance(inner, str) else inner
                text = "\n\n".join(b["text"] for b in inner if b["type"] == "text")
                images = [_image_url(b) for b in inner if b["type"] == "image"]
                turn.results.append(
                    (block["tool_use_id"], text, bool(block.get("is_error")), images)
                )
        if turn.texts or turn.calls or turn.results or turn.images:
            if turns and turns[-1].role == turn.role:
                last = turns[-1]
                last.texts += turn.texts
                last.calls += turn.calls
                last.results += turn.results
                last.images += turn.images
            else:
                turns.append(turn)
    return [turn.key() for turn in turns]


def _back_to_anthropic(chat: dict[str, Any]) -> dict[str, Any]:
    """A reference Chat Completions -> Anthropic request converter, written independently of
    the translator: tool messages become ``tool_result`` blocks of the user turn that follows,
    "Error: " marks an error result, a labelled group of media belongs to that tool result."""
    system: str | None = None
    messages: list[dict[str, Any]] = []
    for number, message in enumerate(chat["messages"]):
        role, content = message["role"], message.get("content")
        if role == "system" and number == 0:
            system = content
        elif role == "tool":
            error = content == "Error" or content.startswith("Error: ")
            text = content.removeprefix("Error").removeprefix(": ") if error else content
            block = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "is_error": error,
                "content": text,
            }
            if messages and messages[-1].get("tool_turn"):
                messages[-1]["content"].append(block)
            else:
                messages.append({"role": "user", "content": [block], "tool_turn": True})
        elif role == "assistant":
            blocks = [{"type": "text", "text": content}] if content is not None else []
            for call in message.get("tool_calls", []):
                function = call["function"]
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": function["name"],
                        "input": json.loads(function["arguments"]),
                    }
                )
            messages.append({"role": "assistant", "content": blocks})
        else:
            turn = (
                messages[-1]
                if role == "user" and messages and messages[-1].pop("tool_turn", False)
                else None
            )
            if turn is None:
                turn = {"role": role, "content": []}
                messages.append(turn)
            _add_user_parts(turn["content"], content)
    for message in messages:
        message.pop("tool_turn", None)
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description"),
            "input_schema": t["function"]["parameters"],
        }
        for t in chat.get("tools", [])
    ]
    return {"system": system, "messages": messages, "tools": tools}


def _add_user_parts(blocks: list[dict[str, Any]], content: str | list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        blocks.append({"type": "text", "text": content})
        return
    owner: dict[str, Any] | None = None
    results = {b["tool_use_id"]: b for b in blocks if b["type"] == "tool_result"}
    texts: list[str] = []
    for part in content:
        label = _LABEL.match(part.get("text", ""))
        if label:
            owner = results[label.group(1)]
            owner["content"] = (
                [{"type": "text", "text": owner["content"]}] if owner["content"] else []
            )
        elif part["type"] == "image_url":
            image = {"type": "image", "source": {"type": "url", "url": part["image_url"]["url"]}}
            (owner["content"] if owner else blocks).append(image)
        else:
            texts.append(part["text"])
    if texts:
        blocks.insert(len(results), {"type": "text", "text": "\n\n".join(texts)})


_texts = st.text(alphabet="abc xyz\n", min_size=1, max_size=12).filter(
    lambda t: not t.startswith("Error")
)
_images = st.builds(
    lambda data, url: (
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
        if data
        else {"type": "image", "source": {"type": "url", "url": url}}
    ),
    st.sampled_from(["", "AAAA", "BBBB"]),
    st.sampled_from(["https://x/1.png", "https://x/2.png"]),
)
_inputs = st.dictionaries(
    st.text(max_size=4), st.integers() | st.text(max_size=4) | st.none(), max_size=3
)


@st.composite
def _conversations(draw: st.DrawFn) -> dict[str, Any]:
    ids = iter(range(10**6))
    messages: list[dict[str, Any]] = [{"role": "user", "content": draw(_texts)}]
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["user", "system", "assistant", "tools"]))
        blocks: list[dict[str, Any]] = []
        if kind == "user":
            texts = draw(st.lists(_texts, min_size=1, max_size=3))
            blocks = [{"type": "text", "text": t} for t in texts]
            messages.append({"role": "user", "content": draw(st.just(blocks) | _texts)})
        elif kind == "system":
            messages.append({"role": "system", "content": draw(_texts)})
        else:
            if draw(st.booleans()):
                blocks.append({"type": "thinking", "thinking": draw(_texts), "signature": "sig"})
            blocks += [{"type": "text", "text": t} for t in draw(st.lists(_texts, max_size=2))]
            calls = [
                f"toolu_{next(ids)}"
                for _ in range(draw(st.integers(1 if kind == "tools" else 0, 3)))
            ]
            blocks += [
                {
                    "type": "tool_use",
                    "id": c,
                    "name": draw(st.sampled_from(["Read", "Bash"])),
                    "input": draw(_inputs),
                }
                for c in calls
            ]
            messages.append({"role": "assistant", "content": blocks})
            if calls:
                messages.append({"role": "user", "content": _results(draw, calls)})
    request: dict[str, Any] = {"model": "claude", "max_tokens": 100, "messages": messages}
    request["system"] = draw(
        st.none()
        | _texts
        | st.lists(_texts.map(lambda t: {"type": "text", "text": t}), min_size=1, max_size=2)
    )
    request["tools"] = [
        {
            "name": name,
            "description": draw(st.none() | _texts),
            "input_schema": {"type": "object", "title": name},
        }
        for name in draw(st.lists(st.sampled_from(["Read", "Bash", "Grep"]), unique=True))
    ]
    return request


def _results(draw: st.DrawFn, calls: list[str]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for call in calls:
        content: Any = draw(
            st.none()
            | _texts
            | st.lists(_texts.map(lambda t: {"type": "text", "text": t}) | _images, max_size=3)
        )
        block = {"type": "tool_result", "tool_use_id": call, "is_error": draw(st.booleans())}
        if content is not None:
            block["content"] = content
        blocks.append(block)
    blocks += [{"type": "text", "text": t} for t in draw(st.lists(_texts, max_size=2))]
    blocks += (
        draw(st.lists(_images, max_size=1))
        if not any(
            isinstance(b.get("content"), list) and any(i["type"] == "image" for i in b["content"])
            for b in blocks
        )
        else []
    )
    return blocks


@settings(max_examples=150, deadline=None)
@given(_conversations(), st.booleans())
def test_translation_preserves_meaning(request: dict[str, Any], strict: bool) -> None:
    quirks = OpenAIQuirks(strict_roles=strict)
    chat = json.loads(
        to_chat_completions(json.dumps(request).encode(), model="m", quirks=quirks, stream=False)
    )
    back = _back_to_anthropic(chat)
    assert _meaning(back) == _meaning(request)
    tools = [(t["name"], t["description"], t["input_schema"]) for t in request["tools"]]
    assert [(t["name"], t["description"], t["input_schema"]) for t in back["tools"]] == tools
    if strict:
        roles = [m["role"] for m in chat["messages"]]
        assert all(a != b or a == "tool" for a, b in pairwise(roles))


def test_system_first_folds_claude_codes_inner_system_message_into_the_first() -> None:
    messages = [
        {"role": "user", "content": "say hi"},
        {"role": "system", "content": [{"type": "text", "text": "# Environment"}]},
        {"role": "assistant", "content": "hi"},
    ]
    kept = _translate(system="You are Claude.", messages=messages)
    assert [m["role"] for m in kept["messages"]] == ["system", "user", "system", "assistant"]
    folded = _translate(
        OpenAIQuirks(system_first=True), system="You are Claude.", messages=messages
    )
    assert [m["role"] for m in folded["messages"]] == ["system", "user", "assistant"]
    assert folded["messages"][0]["content"] == "You are Claude.\n\n# Environment"


def test_turns_that_meet_once_system_messages_are_folded_are_merged() -> None:
    # Strict chat templates, which system_first is for, refuse two user turns in a row.
    messages = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "inner"},
        {"role": "user", "content": "b"},
    ]
    folded = _translate(OpenAIQuirks(system_first=True), messages=messages)
    assert folded["messages"] == [
        {"role": "system", "content": "inner"},
        {"role": "user", "content": "a\n\nb"},
    ]
    loose = _translate(OpenAIQuirks(system_first=True, strict_roles=False), messages=messages)
    assert [m["role"] for m in loose["messages"]] == ["system", "user", "user"]


def test_max_output_tokens_caps_the_limit_sent_upstream() -> None:
    capped = OpenAIQuirks(max_tokens_field="max_tokens", max_output_tokens=8192)
    assert _translate(capped, max_tokens=128000)["max_tokens"] == 8192
    assert _translate(capped, max_tokens=100)["max_tokens"] == 100
    assert _translate(max_tokens=128000)["max_completion_tokens"] == 128000
