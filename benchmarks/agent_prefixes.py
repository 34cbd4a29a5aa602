"""The fixed part of every request an agent sends: its tools, its system prompt, its
environment text, and the top-level fields. Compression never touches any of it, but its size
decides how much of a request tool output is, and it is what prompt caching saves first.

Claude Code's prefix is built on ``tests/samples/agent_turn.json`` (a real Claude Code turn:
its 16 tools and its system prompt), laid out as Claude Code 2.1.330 sends it (protocol.md 9.2):
a billing-header system block, two cached system blocks, the environment as a ``role:"system"``
message with its own breakpoint. With a GitHub and a Playwright MCP server, a skills list and
the longer Bash/TodoWrite/Task instructions real Claude Code carries, it is about 48 KB before
any history. The other agents' prefixes are smaller, as theirs are.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from . import agent_prompts as prompts
from .agent_repo import Repo

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "samples" / "agent_turn.json"
MODEL = "claude-sonnet-4-6"
EPHEMERAL = {"type": "ephemeral"}
SCHEMA_2020 = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_07 = "http://json-schema.org/draft-07/schema#"

Json = dict[str, Any]


@cache
def _sample() -> Json:
    loaded: Json = json.loads(SAMPLE.read_text())
    return loaded


def _sample_description(name: str) -> str:
    return next(str(t["description"]) for t in _sample()["tools"] if t["name"] == name)


def _property(kind: str, text: str) -> Json:
    if kind == "argv":
        return {"type": "array", "items": {"type": "string"}, "description": text}
    if kind == "array":
        return {"type": "array", "items": {"type": "string"}, "description": text}
    return {"type": kind, "description": text}


def _description(lines: list[str]) -> str:
    """Wrapped lines joined with spaces; a blank line, ``- `` or ``<`` starts a new line."""
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1] and line and not line.startswith(("- ", "<")):
            joined[-1] += " " + line
        else:
            joined.append(line)
    text = "\n".join(joined).strip()
    if text.startswith("<sample:"):
        return _sample_description(text.removeprefix("<sample:").removesuffix(">"))
    return text


def parse_tools(spec: str, *, schema: str = SCHEMA_2020, owner_repo: bool = False) -> list[Json]:
    """Tool definitions from the text form described in ``agent_prompts``."""
    tools = []
    for chunk in spec.strip().removeprefix("@").split("\n@"):
        name, *lines = chunk.split("\n")
        text: list[str] = []
        params: list[list[Any]] = []  # name, kind, text, required
        for line in lines:
            if line[:2] in ("* ", "- ") and ": " in line and len(line.split(":")[0].split()) == 3:
                head, description = line[2:].split(": ", 1)
                key, kind = head.split()
                params.append([key, kind, description, line[0] == "*"])
            elif line.startswith("  ") and params:
                params[-1][2] += " " + line.strip()
            else:
                text.append(line)
        if owner_repo:
            params[:0] = [
                ["owner", "string", "Repository owner (user or organization)", True],
                ["repo", "string", "Repository name", True],
            ]
        input_schema = {
            "$schema": schema,
            "type": "object",
            "properties": {key: _property(kind, doc) for key, kind, doc, _ in params},
            "required": [key for key, _, _, required in params if required],
            "additionalProperties": False,
        }
        tools.append(
            {"name": name, "description": _description(text), "input_schema": input_schema}
        )
    return tools


def guidelines(shell: str, read: str, sections: int = len(prompts.GUIDELINES)) -> str:
    """The shared system-prompt sections, naming the agent's own shell and read tools."""
    text = "\n\n".join(f"# {head}\n{body}" for head, body in prompts.GUIDELINES[:sections])
    return text.replace("the shell", f"the {shell} tool").replace("file tools", f"{read} tool")


def environment(repo: Repo) -> str:
    """Working directory, platform, date and the git state at the start of the session."""
    commits = "\n".join(f"{sha[:7]} {subject}" for sha, _, subject in repo.commits[:5])
    return (
        f"<env>\nWorking directory: {repo.root}\nIs directory a git repo: Yes\nPlatform: linux\n"
        "OS Version: Linux 6.8.0-49-generic\nToday's date: 2026-11-23\n</env>\n\ngitStatus: "
        "This is the git status at the start of the conversation. Note that this status is a "
        "snapshot in time, and will not update during the conversation.\nCurrent branch: "
        "fix/export-negative-amounts\n\nMain branch (you will usually use this for PRs): main"
        f"\n\nStatus:\n(clean)\n\nRecent commits:\n{commits}\n"
    )


def _claude_code_tools() -> list[Json]:
    extra = {
        "Bash": prompts.GIT_INSTRUCTIONS,
        "TodoWrite": prompts.TODO_EXAMPLES,
        "Task": prompts.AGENT_TYPES,
    }
    tools = []
    for sample_tool in _sample()["tools"]:
        definition = {k: v for k, v in sample_tool.items() if k != "cache_control"}
        definition["description"] += extra.get(definition["name"], "")
        tools.append(definition)
    servers = [
        ("github", parse_tools(prompts.MCP_GITHUB, schema=SCHEMA_07, owner_repo=True)),
        ("playwright", parse_tools(prompts.MCP_PLAYWRIGHT, schema=SCHEMA_07)),
    ]
    for server, definitions in servers:
        tools += [{**d, "name": f"mcp__{server}__{d['name']}"} for d in definitions]
    return tools + parse_tools(prompts.SKILL_TOOL)


def claude_code(repo: Repo) -> tuple[Json, list[Json]]:
    """Top-level fields (``system``, ``tools``, ...) and the environment message."""
    sample = _sample()
    sample_system = sample["system"][1]["text"]
    core = sample_system.split("<env>")[0]
    claude_md = sample_system.split("Contents of", 1)[1].split("gitStatus:")[0]
    billing = "x-anthropic-billing-header: cc_version=2.1.330.440; cc_entrypoint=cli;"
    system = [
        {"type": "text", "text": billing},
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": EPHEMERAL,
        },
        {"type": "text", "text": core + guidelines("Bash", "Read"), "cache_control": EPHEMERAL},
    ]
    env = environment(repo) + f"\nContents of{claude_md}{prompts.CLAUDE_MD_EXTRA}"
    env_block = {"type": "text", "text": env, "cache_control": EPHEMERAL}
    fields = {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": True,
        "system": system,
        "tools": _claude_code_tools(),
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 8000},
        "metadata": sample["metadata"],
    }
    return fields, [{"role": "system", "content": [env_block]}]


def opencode(repo: Repo) -> Json:
    listing = "\n".join(f"  {path}" for path in sorted(repo.files)[:200])
    intro = (
        "You are opencode, an interactive CLI tool that helps users with software engineering "
        "tasks. Use the instructions below and the tools available to you to assist the user."
    )
    texts = [
        f"{intro}\n\n{guidelines('bash', 'read')}",
        f"{environment(repo)}<files>\n{listing}\n</files>",
    ]
    system = [{"type": "text", "text": text, "cache_control": EPHEMERAL} for text in texts]
    tools = parse_tools(prompts.OPENCODE_TOOLS)
    return {"model": MODEL, "max_tokens": 32000, "stream": True, "system": system, "tools": tools}


def cursor(repo: Repo) -> Json:
    system = (
        "You are a powerful agentic AI coding assistant, powered by Claude. You operate "
        "exclusively in Cursor, the world's best IDE. You are pair programming with a USER to "
        "solve their coding task.\n\n"
        + guidelines("run_terminal_cmd", "read_file", 5)
        + "\n\n<user_info>\nThe user's OS version is linux 6.8.0. The absolute path of the "
        f"user's workspace is {repo.root}. The user's shell is /bin/bash.\n</user_info>"
    )
    return {
        "model": MODEL,
        "max_tokens": 16000,
        "stream": True,
        "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}],
        "tools": parse_tools(prompts.CURSOR_TOOLS),
    }


def codex(repo: Repo) -> Json:
    system = (
        "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI on a "
        "user's computer.\n\n## General\n\n- The arguments to `shell` will be passed to "
        'execvp(). Most terminal commands should be prefixed with ["bash", "-lc"].\n- Always '
        "set the `workdir` param when using the shell function.\n- When searching for text or "
        "files, prefer using `rg` or `rg --files` because `rg` is much faster than `grep`.\n\n"
        + guidelines("shell", "shell")
        + "\n\n## Presenting your work\n\nYou are producing plain text that will later be styled "
        "by the CLI. Use headers only when they improve scanability; use bullets with concise "
        "one-line items; wrap commands, paths and identifiers in backticks.\n\n"
        + prompts.APPLY_PATCH
        + f"\n\n<environment_context>\n  <cwd>{repo.root}</cwd>\n  <approval_policy>on-request"
        "</approval_policy>\n  <sandbox_mode>workspace-write</sandbox_mode>\n  <network_access>"
        "restricted</network_access>\n  <shell>bash</shell>\n</environment_context>"
    )
    tools = parse_tools(prompts.CODEX_TOOLS)
    [patch] = parse_tools("@apply_patch\n\n* input string: The entire apply_patch command")
    tools.insert(1, {**patch, "description": prompts.APPLY_PATCH})
    return {"model": MODEL, "max_tokens": 32000, "stream": True, "system": system, "tools": tools}


def generic(repo: Repo) -> Json:
    system = (
        "You are a helpful coding assistant with access to the user's project at "
        f"{repo.root}. Use the tools to inspect and change files and to run commands. Explain "
        "briefly what you are doing and why."
    )
    tools = parse_tools(prompts.GENERIC_TOOLS)
    return {"model": MODEL, "max_tokens": 8192, "stream": False, "system": system, "tools": tools}
