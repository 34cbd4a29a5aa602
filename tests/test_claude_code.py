"""The real Claude Code CLI completes turns through the gateway, served by an OpenAI-compatible
model.

Claude Code (``@anthropic-ai/claude-code``, pinned; installed with npm into
``<repo>/.claude-code`` on first run, and a failed install fails these tests) runs as
``claude -p`` with ``ANTHROPIC_BASE_URL`` at a host app mounting the gateway. The gateway
aliases Claude Code's model names to ``local/mock-model``, an OpenAI-compatible upstream
(``claude_code_support.ScriptedModel``) that answers with text, or calls Claude Code's ``Read``
tool and then reports what the tool returned. The Anthropic upstream is a scripted server that
must receive nothing. Everything runs on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from messages_mw import CompressionConfig, Gateway, GatewayConfig, UpstreamConfig
from messages_mw.config import DEFAULT_MODELS, OpenAIUpstreamConfig
from messages_mw.context import UsageEvent

from .claude_code_support import (
    CLAUDE_CODE_VERSION,
    GREETING,
    ClaudeCode,
    RequestLog,
    ScriptedModel,
    install_claude_code,
)
from .conftest import build_host_app
from .servers import Reply, ScriptedUpstream, error_json, serve

#: Claude Code's own model names (its default main model among them), all sent to the mock.
CLAUDE_MODELS = tuple(model.id for model in DEFAULT_MODELS)
CLIENT_TOKEN = "test-token"
UPSTREAM_KEY = "sk-local-upstream"
SECRET = "ZEBRA-4471-KESTREL"
#: Under pytest-timeout's 120 s, so a stuck run is reported with what Claude Code asked for.
CLAUDE_TIMEOUT = 90


@pytest.fixture(scope="session")
def claude_code() -> ClaudeCode:
    """The pinned Claude Code, installed on first use; a failure is reported by each test that
    needs it as a failure with npm's output, never as a skip."""
    return install_claude_code()


@dataclass
class CodeStack:
    model: ScriptedModel
    anthropic: ScriptedUpstream
    log: RequestLog
    events: list[UsageEvent]
    base_url: str

    def clear(self) -> None:
        for recorded in (
            self.model.received,
            self.anthropic.received,
            self.log.entries,
            self.events,
        ):
            recorded.clear()


@pytest.fixture(scope="module")
def _code_servers() -> Iterator[CodeStack]:
    model = ScriptedModel()
    overloaded = Reply(status=529, body=error_json("overloaded_error", "Overloaded"))
    anthropic = ScriptedUpstream(default=overloaded)
    with serve(model) as model_url, serve(anthropic) as anthropic_url:
        config = GatewayConfig(
            provider="anthropic",
            upstream=UpstreamConfig(base_url=anthropic_url, read_timeout=10.0),
            openai_upstreams={
                "local": OpenAIUpstreamConfig(
                    base_url=model_url + "/v1",
                    api_key=UPSTREAM_KEY,
                    models=("mock-model",),
                    read_timeout=10.0,
                )
            },
            aliases=dict.fromkeys(CLAUDE_MODELS, "local/mock-model"),
            # Claude Code's own user agent picks the claude-code compression bundle.
            compression=CompressionConfig(detect_user_agent=True),
        )
        events: list[UsageEvent] = []
        gateway = Gateway(config, usage_sinks=[events.append])
        log = RequestLog(build_host_app(gateway))
        with serve(log) as host_url:
            yield CodeStack(model, anthropic, log, events, host_url + "/anthropic")


@pytest.fixture
def code_stack(_code_servers: CodeStack) -> CodeStack:
    _code_servers.clear()
    return _code_servers


def _run_claude(
    claude_code: ClaudeCode, stack: CodeStack, prompt: str, workdir: Path, home: Path
) -> dict[str, Any]:
    if claude_code.install_error is not None or claude_code.executable is None:
        pytest.fail(claude_code.install_error or "Claude Code is not installed")
    home.mkdir()
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
    # Nothing from the caller's environment may add credentials, a base URL, a model or a proxy.
    dropped = ("ANTHROPIC_", "CLAUDE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(dropped)}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=stack.base_url,
        ANTHROPIC_AUTH_TOKEN=CLIENT_TOKEN,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        # A failed request fails the run at once instead of after minutes of backoff.
        CLAUDE_CODE_MAX_RETRIES="0",
        NO_PROXY="127.0.0.1,localhost",
    )
    command = [
        str(claude_code.executable),
        "-p",
        prompt,
        "--allowedTools",
        "Read",
        "--output-format",
        "json",
    ]
    try:
        result = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLAUDE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stdout, stderr = (_decoded(exc.stdout), _decoded(exc.stderr))
        pytest.fail(
            f"claude did not finish in {CLAUDE_TIMEOUT} s\n{_describe(stack, stdout, stderr)}"
        )
    report = _describe(stack, result.stdout, result.stderr)
    assert result.returncode == 0, f"claude exited {result.returncode}\n{report}"
    try:
        output: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"claude did not print JSON\n{report}")
    assert output["is_error"] is False, report
    assert output["subtype"] == "success", report
    return output


def _decoded(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _describe(stack: CodeStack, stdout: str, stderr: str) -> str:
    """What Claude Code printed and what it asked the gateway, for failure messages."""
    requests = "\n".join(
        f"  {e.method} {e.path}{'?' + e.query if e.query else ''} -> {e.status}"
        for e in stack.log.entries
    )
    events = "\n".join(
        f"  {e.status} {e.requested_model} -> {e.provider}/{e.served_model} {e.error_type or ''}"
        for e in stack.events
    )
    return (
        f"stdout:\n{stdout[-4000:]}\nstderr:\n{stderr[-4000:]}\n"
        f"requests to the gateway:\n{requests}\nusage events:\n{events}"
    )


def _wait_for_events(stack: CodeStack) -> None:
    # Usage events are emitted after the last byte went out, so claude can exit before them.
    deadline = time.monotonic() + 5
    while len(stack.events) < len(stack.log.entries):
        assert time.monotonic() < deadline, "a request produced no usage event"
        time.sleep(0.01)


def _assert_all_served_by_the_mock(stack: CodeStack) -> None:
    """Every request Claude Code made succeeded, was a Messages call routed through an alias to
    the OpenAI-compatible upstream, and nothing reached the Anthropic upstream."""
    entries = stack.log.entries
    assert entries, "Claude Code made no request to the gateway"
    failed = [(e.method, e.path, e.status) for e in entries if e.status is None or e.status >= 400]
    assert failed == []
    for entry in entries:
        assert (entry.method, entry.path) == ("POST", "/anthropic/v1/messages")
        assert entry.headers["authorization"] == f"Bearer {CLIENT_TOKEN}"
        assert entry.headers["user-agent"].startswith(f"claude-cli/{CLAUDE_CODE_VERSION}")
    _wait_for_events(stack)
    assert len(stack.events) == len(entries)
    for event in stack.events:
        assert (event.status, event.error_type) == (200, None)
        assert event.requested_model in CLAUDE_MODELS
        assert (event.provider, event.served_model, event.fallback_used) == (
            "local",
            "mock-model",
            False,
        )
        assert event.stream is True
        assert event.input_tokens > 0 and event.output_tokens > 0
    assert stack.anthropic.received == []
    assert len(stack.model.received) == len(entries)
    for received in stack.model.received:
        assert (received.method, received.path) == ("POST", "/v1/chat/completions")
        assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert CLIENT_TOKEN not in json.dumps(received.headers)


def _assert_translated(body: dict[str, Any]) -> None:
    """A Chat Completions body made from one of Claude Code's Messages requests."""
    assert body["model"] == "mock-model"
    assert body["stream"] is True
    roles = [message["role"] for message in body["messages"]]
    assert roles[0] == "system"  # Claude Code's top-level ``system`` blocks
    assert "user" in roles
    system = body["messages"][0]["content"]
    system_text = system if isinstance(system, str) else json.dumps(system)
    assert "Claude" in system_text
    tools = {tool["function"]["name"]: tool for tool in body["tools"]}
    assert all(tool["type"] == "function" for tool in body["tools"])
    assert {"Read", "Bash", "Edit", "Write"} <= set(tools)
    read = tools["Read"]["function"]["parameters"]
    assert read["type"] == "object"
    assert "file_path" in read["properties"]
    assert "file_path" in read["required"]
    # Anthropic-only fields never reach an OpenAI-compatible upstream.
    for field in ("thinking", "context_management", "output_config", "metadata", "system"):
        assert field not in body


def test_claude_code_completes_a_text_turn(
    claude_code: ClaudeCode, code_stack: CodeStack, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    output = _run_claude(
        claude_code, code_stack, "Say hello.", workdir=workdir, home=tmp_path / "home"
    )
    assert output["result"] == GREETING
    assert output["stop_reason"] == "end_turn"
    assert output["num_turns"] == 1
    _assert_all_served_by_the_mock(code_stack)
    (body,) = code_stack.model.completions()
    _assert_translated(body)
    user = body["messages"][[m["role"] for m in body["messages"]].index("user")]
    assert "Say hello." in json.dumps(user["content"])


def test_claude_code_runs_a_tool_through_the_gateway(
    claude_code: ClaudeCode, code_stack: CodeStack, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    notes = workdir / "notes.txt"
    notes.write_text(f"The launch code is {SECRET}.\n")
    prompt = f"Read the file {notes} and tell me the launch code."
    output = _run_claude(claude_code, code_stack, prompt, workdir=workdir, home=tmp_path / "home")
    assert SECRET in output["result"]
    assert output["result"].startswith("The file says:")
    assert output["num_turns"] == 2
    assert output["permission_denials"] == []
    _assert_all_served_by_the_mock(code_stack)
    first, second = code_stack.model.completions()
    _assert_translated(first)
    _assert_translated(second)
    # The second request carries the model's tool call and Claude Code's result for it.
    assistant, tool = second["messages"][-2:]
    assert assistant["role"] == "assistant"
    (call,) = assistant["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "Read"
    assert json.loads(call["function"]["arguments"]) == {"file_path": str(notes)}
    assert tool["role"] == "tool"
    assert tool["tool_call_id"] == call["id"]
    content = tool["content"] if isinstance(tool["content"], str) else json.dumps(tool["content"])
    assert f"The launch code is {SECRET}." in content
    # Everything before the tool round trip is the first request's conversation, unchanged.
    assert second["messages"][:-2] == first["messages"]
    # The real client was recognised and its requests went through the compressor, which left
    # the file read exact (asserted above: the model saw the file's line).
    _wait_for_events(code_stack)
    bundles = {e.compression.bundle if e.compression else None for e in code_stack.events}
    assert bundles == {"claude-code"}
