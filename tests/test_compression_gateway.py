"""The built-in compressor inside the gateway, end to end: SDK 2.x -> uvicorn -> scripted upstream.

Each bundle is chosen by header, key policy, user agent or default; what the upstream receives is
checked byte for byte when nothing picks a bundle, and for what was compressed when one does.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from messages_mw import (
    ApiKeyConfig,
    AuthConfig,
    CompressionConfig,
    ConfigError,
    Gateway,
    GatewayConfig,
)
from messages_mw.tags import HeaderNames

from .policy_support import MODEL, Upstreams, gateway_stack, sdk_client
from .servers import Reply, text_stream_events

_GREEN, _RESET = "\x1b[32m", "\x1b[0m"
# What each agent calls its shell tool, and how it passes the command line.
_SHELL_CALLS: dict[str, tuple[str, Any]] = {
    "claude-code": ("Bash", {"command": "python -m pytest -v"}),
    "opencode": ("bash", {"command": "python -m pytest -v"}),
    "cursor": ("run_terminal_cmd", {"command": "python -m pytest -v"}),
    "codex": ("shell", {"command": ["bash", "-lc", "python -m pytest -v"]}),
    "generic": ("bash", {"command": "python -m pytest -v"}),
}
BUNDLES = tuple(_SHELL_CALLS)


def _pytest_output(passing: int = 300) -> str:
    """A verbose pytest run in colour: hundreds of PASSED lines around one failure."""
    lines = ["============================= test session starts =============================="]
    lines += [
        f"tests/test_api.py::test_case_{i} {_GREEN}PASSED{_RESET}{' ' * 20}[{percent:3d}%]"
        for i in range(passing)
        if (percent := i * 100 // passing) >= 0
    ]
    lines += [
        "tests/test_api.py::test_refund FAILED",
        "=================================== FAILURES ===================================",
        "_________________________________ test_refund __________________________________",
        "tests/test_api.py:88: in test_refund",
        "    assert refund(order) == 10",
        "E   assert 9 == 10",
        "=========================== short test summary info ============================",
        "FAILED tests/test_api.py::test_refund - assert 9 == 10",
        f"======================== 1 failed, {passing} passed in 3.21s =========================",
    ]
    return "\n".join(lines) + "\n"


def _conversation(bundle: str) -> list[Any]:
    name, tool_input = _SHELL_CALLS[bundle]
    return [
        {"role": "user", "content": "Run the tests and fix what fails."},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_01", "name": name, "input": tool_input}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": _pytest_output()}
            ],
        },
    ]


def _tool_output_sent(received_body: bytes) -> str:
    content = json.loads(received_body)["messages"][2]["content"][0]["content"]
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content)
    assert isinstance(content, str)
    return content


def test_without_a_bundle_the_upstream_gets_the_clients_bytes(ups: Upstreams) -> None:
    config = ups.config(compression=CompressionConfig(detect_user_agent=True))
    with gateway_stack(config) as gw, sdk_client(gw.base_url, bearer="sk-client") as client:
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=_conversation("claude-code")
        )
        event = gw.last_event()
    [received] = ups.primary.received
    assert received.body == raw.http_request.content
    assert "x-mw-compression-report" not in raw.headers
    assert event.compression is None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("bundle", BUNDLES)
def test_each_bundle_compresses_tool_output_chosen_by_header(
    ups: Upstreams, bundle: str, stream: bool
) -> None:
    if stream:
        ups.primary.push(Reply(chunks=text_stream_events(["Found ", "it."])))
    headers = {"x-mw-compression": bundle}
    with gateway_stack(ups.config()) as gw, sdk_client(gw.base_url, bearer="sk-client") as client:
        request: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 64,
            "messages": _conversation(bundle),
            "extra_headers": headers,
        }
        if stream:
            with client.messages.stream(**request) as answer:
                text = answer.get_final_text()
                report = answer.response.headers["x-mw-compression-report"]
        else:
            raw = client.messages.with_raw_response.create(**request)
            text = raw.parse().content[0].text
            report = raw.headers["x-mw-compression-report"]
            sent = raw.http_request.content
        event = gw.last_event()
    assert text == ("Found it." if stream else "Hello from upstream.")
    [received] = ups.primary.received
    forwarded = _tool_output_sent(received.body)
    original = _pytest_output()
    assert len(forwarded) < len(original) / 2
    # What the agent needs from the run survives: the failure, where it is, and the summary.
    for needed in ("tests/test_api.py:88", "E   assert 9 == 10", "1 failed, 300 passed"):
        assert needed in forwarded
    assert "\x1b[" not in forwarded
    assert report.startswith(f"{bundle}; saved-bytes=")
    assert event.compression is not None
    assert event.compression.bundle == bundle
    assert event.compression.bytes_after == len(received.body)
    assert event.compression.bytes_saved > len(original) / 2
    assert event.compression.tokens_saved > 0
    assert f"saved-bytes={event.compression.bytes_saved};" in report
    if not stream:
        assert event.compression.bytes_before == len(sent)
    # Everything but the tool output went through as sent.
    body = json.loads(received.body)
    assert body["messages"][:2] == _conversation(bundle)[:2]
    assert body["messages"][2]["content"][0]["tool_use_id"] == "toolu_01"


def test_compression_is_deterministic_across_requests(ups: Upstreams) -> None:
    headers = {"x-mw-compression": "claude-code"}
    with gateway_stack(ups.config()) as gw, sdk_client(gw.base_url, bearer="sk-client") as client:
        for _ in range(2):
            client.messages.create(
                model=MODEL,
                max_tokens=64,
                messages=_conversation("claude-code"),
                extra_headers=headers,
            )
        gw.wait_for_events(2)
    first, second = ups.primary.received
    assert first.body == second.body


def test_an_unknown_bundle_is_a_400_naming_the_header(ups: Upstreams) -> None:
    with (
        gateway_stack(ups.config()) as gw,
        sdk_client(gw.base_url, bearer="sk-client") as client,
        pytest.raises(anthropic.BadRequestError) as caught,
    ):
        client.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=_conversation("generic"),
            extra_headers={"x-mw-compression": "vim"},
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "invalid_request_error"
    assert "x-mw-compression" in body["error"]["message"]
    assert "claude-code" in body["error"]["message"]
    assert ups.primary.received == []


def test_the_key_policy_picks_a_bundle_and_the_header_can_turn_it_off(ups: Upstreams) -> None:
    key = ApiKeyConfig(id="codex-ci", key="gw-key", compression="codex")
    config = ups.config(auth=AuthConfig(mode="static", keys=(key,)))
    with gateway_stack(config) as gw, sdk_client(gw.base_url, bearer="gw-key") as client:
        client.messages.create(model=MODEL, max_tokens=64, messages=_conversation("codex"))
        raw = client.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=64,
            messages=_conversation("codex"),
            extra_headers={"x-mw-compression": "off"},
        )
        events = gw.wait_for_events(2)
    compressed, untouched = ups.primary.received
    assert len(compressed.body) < len(untouched.body) / 2
    assert untouched.body == raw.http_request.content
    assert events[0].compression is not None and events[0].compression.bundle == "codex"
    assert events[1].compression is None


def test_the_user_agent_picks_a_bundle_when_detection_is_on(ups: Upstreams) -> None:
    config = ups.config(compression=CompressionConfig(detect_user_agent=True))
    claude_code = {"user-agent": "claude-cli/2.1.330 (external, cli)"}
    with gateway_stack(config) as gw, sdk_client(gw.base_url, headers=claude_code) as client:
        client.messages.create(model=MODEL, max_tokens=64, messages=_conversation("claude-code"))
        event = gw.last_event()
    assert event.compression is not None and event.compression.bundle == "claude-code"


def test_edgee_header_names_and_bundle_names(ups: Upstreams) -> None:
    config = ups.config(headers=HeaderNames(preset="edgee"))
    with gateway_stack(config) as gw, sdk_client(gw.base_url, bearer="sk-client") as client:
        raw = client.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=64,
            messages=_conversation("claude-code"),
            extra_headers={"x-edgee-compression-model": "claude"},
        )
        event = gw.last_event()
    assert raw.headers["x-edgee-compression-report"].startswith("claude-code; ")
    assert event.compression is not None and event.compression.bundle == "claude-code"


def test_a_default_bundle_applies_to_every_request(ups: Upstreams) -> None:
    config = ups.config(compression=CompressionConfig(default_bundle="generic", from_header=False))
    with gateway_stack(config) as gw, sdk_client(gw.base_url, bearer="sk-client") as client:
        # With from_header off, a client cannot opt out (or pick a bundle) by header.
        client.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=_conversation("generic"),
            extra_headers={"x-mw-compression": "off"},
        )
        event = gw.last_event()
    assert event.compression is not None and event.compression.bundle == "generic"


def test_debug_server_timing_names_the_compression(ups: Upstreams) -> None:
    headers = {"x-mw-compression": "generic", "x-mw-debug": "1"}
    with gateway_stack(ups.config()) as gw, sdk_client(gw.base_url, bearer="sk-client") as client:
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=_conversation("generic"), extra_headers=headers
        )
    assert "compression;dur=" in raw.headers["server-timing"]


@pytest.mark.parametrize(
    "config",
    [
        GatewayConfig(compression=CompressionConfig(default_bundle="vim")),
        GatewayConfig(
            auth=AuthConfig(mode="static", keys=(ApiKeyConfig(id="a", key="k", compression="x"),))
        ),
    ],
    ids=["default_bundle", "key policy"],
)
def test_an_unknown_configured_bundle_fails_at_construction(config: GatewayConfig) -> None:
    with pytest.raises(ConfigError, match="unknown bundle"):
        Gateway(config)


def test_cache_alignment_marks_large_tools_and_system_when_the_client_set_none(
    ups: Upstreams,
) -> None:
    tools = [
        {
            "name": f"tool_{i}",
            "description": "Does one thing well. " * 40,
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        }
        for i in range(8)
    ]
    config = ups.config(compression=CompressionConfig(align_cache=True))
    headers = {"x-mw-compression": "generic"}
    with gateway_stack(config) as gw, sdk_client(gw.base_url, bearer="sk-client") as client:
        client.messages.create(
            model=MODEL,
            max_tokens=64,
            system="You are a careful coding agent. " * 100,
            tools=tools,  # type: ignore[arg-type]
            messages=_conversation("generic"),
            extra_headers=headers,
        )
    [received] = ups.primary.received
    body = json.loads(received.body)
    marked = [t for t in body["tools"] if "cache_control" in t]
    assert marked == [body["tools"][-1]]
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert received.body.count(b'"cache_control"') <= 4
