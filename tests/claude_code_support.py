"""Support for driving the real Claude Code CLI against the gateway.

``install_claude_code()`` puts ``@anthropic-ai/claude-code`` (pinned) into ``<repo>/.claude-code``
with npm, once; the directory is git-ignored. ``ScriptedModel`` is an OpenAI-compatible
upstream that answers Claude Code the way a model would: it calls the ``Read`` tool when asked
to read a file, reports the tool's result once it comes back, and otherwise answers with a fixed
text. ``RequestLog`` wraps an ASGI app and records every request Claude Code made, with the
status it got.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .openai_upstream import (
    ChatReply,
    ChatRequest,
    OpenAIUpstream,
    ToolCall,
    completion_chunks,
    completion_json,
)
from .servers import Receive, Scope, Send

CLAUDE_CODE_VERSION = "2.1.330"
PACKAGE = "@anthropic-ai/claude-code"
REPO = Path(__file__).resolve().parents[1]
INSTALL_DIR = REPO / ".claude-code"
GREETING = "Hello from the mock model, through the gateway."
READ_REQUEST = re.compile(r"Read the file (\S+) and")


@dataclass(frozen=True)
class ClaudeCode:
    """The ``claude`` executable, or why it could not be installed."""

    executable: Path | None
    install_error: str | None = None


def _version_of(executable: Path) -> str | None:
    """The version ``executable --version`` reports, or None when it does not run."""
    if not executable.is_file():
        return None
    try:
        result = subprocess.run(
            [str(executable), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "DISABLE_AUTOUPDATER": "1"},
        )
    except OSError:
        return None
    if result.returncode != 0:
        return None
    return result.stdout.split(" ", 1)[0].strip()


def _candidates() -> list[Path]:
    modules = INSTALL_DIR / "node_modules"
    # ``.bin/claude`` is the native binary once the package's postinstall has copied it over
    # the placeholder; the platform package's own binary is the same file, for an install run
    # with scripts disabled.
    return [
        modules / ".bin" / "claude",
        modules / "@anthropic-ai" / "claude-code-linux-x64" / "claude",
    ]


def _find() -> Path | None:
    for candidate in _candidates():
        if _version_of(candidate) == CLAUDE_CODE_VERSION:
            return candidate
    return None


def install_claude_code() -> ClaudeCode:
    """Install the pinned Claude Code with npm unless it is already there.

    Never raises: a failure comes back as ``install_error``, with npm's output, for the tests
    to fail with.
    """
    found = _find()
    if found is not None:
        return ClaudeCode(found)
    npm = shutil.which("npm")
    if npm is None:
        return ClaudeCode(None, "npm is not on PATH: cannot install Claude Code")
    INSTALL_DIR.mkdir(exist_ok=True)
    command = [
        npm,
        "install",
        "--prefix",
        str(INSTALL_DIR),
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
        f"{PACKAGE}@{CLAUDE_CODE_VERSION}",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ClaudeCode(None, f"{' '.join(command)} failed: {exc}")
    found = _find()
    if result.returncode != 0 or found is None:
        versions = {str(path): _version_of(path) for path in _candidates()}
        return ClaudeCode(
            None,
            f"could not install {PACKAGE}@{CLAUDE_CODE_VERSION} into {INSTALL_DIR} "
            f"(npm exit {result.returncode}; versions found: {versions}):\n"
            f"{result.stdout}\n{result.stderr}",
        )
    return ClaudeCode(found)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def _reply(request: dict[str, Any], text: str | None, calls: list[ToolCall]) -> ChatReply:
    usage = (len(json.dumps(request["messages"])) // 4, max(1, len((text or "").split())))
    finish = "tool_calls" if calls else "stop"
    model = request.get("model", "mock-model")
    if not request.get("stream"):
        body = completion_json(
            text, tool_calls=calls, finish_reason=finish, model=model, usage=usage
        )
        return ChatReply(body=body)
    words = (text or "").split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []
    chunks = completion_chunks(
        pieces, tool_calls=calls, finish_reason=finish, usage=usage, model=model
    )
    return ChatReply(chunks=chunks)


def answer(request: dict[str, Any]) -> ChatReply:
    """What the scripted model says to one Chat Completions request from Claude Code."""
    messages = request["messages"]
    last = messages[-1]
    if last["role"] == "tool":
        return _reply(request, f"The file says: {_text(last['content'])}", [])
    tools = {tool["function"]["name"] for tool in request.get("tools") or []}
    users = [_text(m.get("content")) for m in messages if m["role"] == "user"]
    match = READ_REQUEST.search(users[-1]) if users else None
    if match and "Read" in tools:
        arguments = json.dumps({"file_path": match.group(1)})
        return _reply(request, None, [ToolCall("call_read_0001", "Read", arguments)])
    return _reply(request, GREETING, [])


class ScriptedModel:
    """An OpenAI-compatible upstream (``tests.openai_upstream``) whose answers :func:`answer`
    picks from each request's content; ``received`` lists the requests."""

    def __init__(self) -> None:
        self.upstream = OpenAIUpstream()

    @property
    def received(self) -> list[ChatRequest]:
        return self.upstream.received

    def completions(self) -> list[dict[str, Any]]:
        """The bodies of the Chat Completions requests received, in order."""
        return [r.json for r in self.received if r.path.endswith("/chat/completions")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.upstream(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] == "POST" and scope["path"].endswith("/chat/completions"):
            # Nothing awaits between this push and the pop in OpenAIUpstream.__call__ (the
            # replayed receive below never suspends), so concurrent requests cannot swap replies.
            self.upstream.push(answer(json.loads(body)))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.upstream(scope, replay, send)


@dataclass
class Logged:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int | None = None


@dataclass
class RequestLog:
    """Wraps an ASGI app; records each HTTP request and the status it was answered with."""

    app: Any
    entries: list[Logged] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        entry = Logged(scope["method"], scope["path"], scope["query_string"].decode(), headers)
        self.entries.append(entry)

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                entry.status = message["status"]
            await send(message)

        await self.app(scope, receive, recording_send)
