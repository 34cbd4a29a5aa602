"""End to end with the legacy 0.x Python SDK, which sends ``anthropic-version: 2023-06-01`` and
``X-Api-Key``.

The 0.x and 2.x SDKs cannot be installed side by side, so ``anthropic==0.125.0`` goes into
``<repo>/.legacy-sdk`` (once; the directory is git-ignored) and ``legacy_sdk_client.py`` drives it
in a subprocess against the ``stack`` fixture, printing JSON for these tests to check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from messages_mw import RequestContext

from .conftest import Stack
from .servers import Reply, error_json, message_json, text_stream_events, tool_use_stream_events

LEGACY_VERSION = "0.125.0"
REPO = Path(__file__).resolve().parents[1]
LEGACY_DIR = REPO / ".legacy-sdk"
CLIENT_SCRIPT = Path(__file__).resolve().parent / "legacy_sdk_client.py"
UPSTREAM_REQUEST_ID = "req_upstream_0001"


def _installed() -> bool:
    return (LEGACY_DIR / "anthropic" / "__init__.py").is_file() and (
        LEGACY_DIR / f"anthropic-{LEGACY_VERSION}.dist-info"
    ).is_dir()


@dataclass(frozen=True)
class LegacySdk:
    path: Path
    install_error: str | None = None


@pytest.fixture(scope="session")
def legacy_sdk() -> LegacySdk:
    """The directory holding ``anthropic==0.125.0``, installed with pip on first use.

    A failed install is reported by each test that needs the SDK, as a failure with pip's
    output: never as a skip.
    """
    if not _installed():
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--upgrade",
            "--target",
            str(LEGACY_DIR),
            f"anthropic=={LEGACY_VERSION}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0 or not _installed():
            error = (
                f"could not install anthropic=={LEGACY_VERSION} into {LEGACY_DIR} "
                f"(exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
            return LegacySdk(LEGACY_DIR, error)
    return LegacySdk(LEGACY_DIR)


def _run(legacy_sdk: LegacySdk, stack: Stack, scenario: str) -> dict[str, Any]:
    if legacy_sdk.install_error is not None:
        pytest.fail(legacy_sdk.install_error)
    # No ANTHROPIC_* variable may add credentials or a base URL behind the test's back.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "PYTHON"))}
    env["PYTHONPATH"] = str(legacy_sdk.path)
    command = [sys.executable, "-s", str(CLIENT_SCRIPT), stack.base_url, scenario]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{scenario} failed:\n{result.stdout}\n{result.stderr}"
    output: dict[str, Any] = json.loads(result.stdout)
    assert output["sdk_version"] == LEGACY_VERSION
    return output


def _finished(stack: Stack, count: int = 1) -> list[RequestContext]:
    # on_request_end runs after the last byte went out, so the client can be ahead of it.
    deadline = time.monotonic() + 2.0
    while len(stack.finished) < count:
        assert time.monotonic() < deadline, "on_request_end was not called in time"
        time.sleep(0.005)
    return stack.finished


def _assert_legacy_headers(stack: Stack) -> None:
    assert stack.upstream.received, "the upstream received nothing"
    for received in stack.upstream.received:
        assert received.headers["anthropic-version"] == "2023-06-01"
        assert received.headers["x-api-key"] == "sk-legacy"
        assert "authorization" not in received.headers
        assert received.headers["user-agent"] == f"Anthropic/Python {LEGACY_VERSION}"


def test_legacy_create(legacy_sdk: LegacySdk, stack: Stack) -> None:
    upstream_body = message_json("Hello, legacy.", input_tokens=9, output_tokens=4)
    stack.upstream.push(Reply(body=upstream_body))
    output = _run(legacy_sdk, stack, "create")
    assert output["message"] == json.loads(upstream_body)
    assert output["request_id"] == UPSTREAM_REQUEST_ID
    [received] = stack.upstream.received
    assert (received.method, received.path, received.query) == ("POST", "/v1/messages", "")
    body = json.loads(received.body)
    assert (body["model"], body["max_tokens"], body["messages"]) == (
        "claude-sonnet-4-6",
        64,
        [{"role": "user", "content": "Hello"}],
    )
    _assert_legacy_headers(stack)
    usage = _finished(stack)[-1].usage
    assert (usage.input_tokens, usage.output_tokens) == (9, 4)


def test_legacy_stream_with_text_and_tool_use(legacy_sdk: LegacySdk, stack: Stack) -> None:
    fragments = ["", '{"path": "/sr', "c/ma", 'in.py", "pattern": "def ', 'main"}']
    stack.upstream.push(Reply(chunks=tool_use_stream_events("Grep", fragments)))
    output = _run(legacy_sdk, stack, "stream")
    assert output["partial_json"] == fragments
    assert output["text"] == ["Let me check."]
    assert output["events"][0] == "message_start" and output["events"][-1] == "message_stop"
    final = output["final"]
    assert final["stop_reason"] == "tool_use"
    assert final["content"][0] == {"type": "text", "text": "Let me check."}
    tool_use = final["content"][1]
    assert (tool_use["type"], tool_use["id"], tool_use["name"]) == (
        "tool_use",
        "toolu_01Test",
        "Grep",
    )
    assert tool_use["input"] == {"path": "/src/main.py", "pattern": "def main"}
    assert json.loads(stack.upstream.received[0].body)["stream"] is True
    _assert_legacy_headers(stack)
    context = _finished(stack)[-1]
    assert (context.stream, context.usage.input_tokens, context.usage.output_tokens) == (
        True,
        30,
        20,
    )


def test_legacy_stream_plain_text(legacy_sdk: LegacySdk, stack: Stack) -> None:
    stack.upstream.push(Reply(chunks=text_stream_events(["Old ", "SDK ", "works."])))
    output = _run(legacy_sdk, stack, "stream")
    assert output["text"] == ["Old ", "SDK ", "works."]
    assert output["final"]["content"] == [{"type": "text", "text": "Old SDK works."}]
    _assert_legacy_headers(stack)


def test_legacy_count_tokens(legacy_sdk: LegacySdk, stack: Stack) -> None:
    stack.upstream.push(Reply(body=b'{"input_tokens": 321}'))
    output = _run(legacy_sdk, stack, "count_tokens")
    assert output["input_tokens"] == 321
    [received] = stack.upstream.received
    assert (received.method, received.path) == ("POST", "/v1/messages/count_tokens")
    _assert_legacy_headers(stack)


def test_legacy_models_list(legacy_sdk: LegacySdk, stack: Stack) -> None:
    page = {
        "data": [
            {
                "type": "model",
                "id": model_id,
                "display_name": model_id,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for model_id in ("claude-opus-5-5", "claude-haiku-4-5")
        ],
        "has_more": False,
        "first_id": "claude-opus-5-5",
        "last_id": "claude-haiku-4-5",
    }
    stack.upstream.push(Reply(body=json.dumps(page).encode()))
    output = _run(legacy_sdk, stack, "models_list")
    assert output["ids"] == ["claude-opus-5-5", "claude-haiku-4-5"]
    [received] = stack.upstream.received
    assert (received.method, received.path) == ("GET", "/v1/models")
    _assert_legacy_headers(stack)


def test_legacy_rate_limit_error(legacy_sdk: LegacySdk, stack: Stack) -> None:
    body = error_json("rate_limit_error", "Number of requests has exceeded your rate limit.")
    stack.upstream.push(Reply(status=429, body=body, headers=[("retry-after", "30")]))
    output = _run(legacy_sdk, stack, "rate_limited")
    assert output["error_class"] == "RateLimitError" and output["is_rate_limit_error"] is True
    assert output["status"] == 429
    assert output["body"] == json.loads(body)
    assert output["request_id"] == UPSTREAM_REQUEST_ID
    assert output["retry_after"] == "30"
    assert len(stack.upstream.received) == 1
    _assert_legacy_headers(stack)


def test_legacy_retries_529_once_then_succeeds(legacy_sdk: LegacySdk, stack: Stack) -> None:
    stack.upstream.push(
        Reply(
            status=529,
            body=error_json("overloaded_error", "Overloaded"),
            headers=[("retry-after-ms", "300")],
        ),
        Reply(body=message_json("after the retry")),
    )
    output = _run(legacy_sdk, stack, "retry_529")
    assert output["text"] == "after the retry"
    assert output["elapsed"] >= 0.25
    first, second = stack.upstream.received
    assert [
        first.headers["x-stainless-retry-count"],
        second.headers["x-stainless-retry-count"],
    ] == [
        "0",
        "1",
    ]
    assert first.body == second.body
    _assert_legacy_headers(stack)
    assert [context.status for context in _finished(stack, 2)] == [529, 200]
