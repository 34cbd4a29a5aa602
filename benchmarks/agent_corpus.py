"""Realistic multi-turn coding-agent sessions, as the request bodies the agent sends.

``build_session(agent, profile, seed=0)`` returns the requests of one session: request 0 is the
opening (task, plus the environment), request k is request k-1's messages plus one assistant
turn (thinking for Claude Code, some text, one to three ``tool_use`` blocks) and one user turn
(their ``tool_result`` blocks first, sometimes a reminder or a user remark after them), exactly
as agents resend their history. Each agent uses its own tool names, input shapes and output
formats (``agent_tools``) and its own fixed prefix (``agent_prefixes``), and places its cache
breakpoints as it does: Claude Code marks two system blocks and the environment message and
moves one rolling marker to the last block of the newest message on every request; OpenCode
marks its two system blocks and the last two messages; Cursor its system prompt and the
newest message; Codex and the generic client set none.

What a turn does is drawn from a profile's weights with one seeded ``random.Random`` (never the
global one): ``tool-heavy`` is an agent grinding through a bug (whole-file reads, the same file
read again, verbose test runs, installs, type checkers, git, listings, JSON from ``curl``), so
tool output is most of the request; ``chatty`` talks more and reads less (ranged reads, quiet
test runs, small searches) and starts from a task with a pasted CI log. Real Claude Code
traffic, as issue 5 describes it, set the proportions: file reads are the largest source of
bytes, then pytest, git log/diff and npm output.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import agent_outputs as out
from . import agent_prefixes as prefixes
from .agent_repo import NOUNS, VERBS, Repo, make_repo
from .agent_tools import STYLES, Action, AgentStyle, Call

Json = dict[str, Any]

AGENTS = tuple(STYLES)
PROFILES = ("tool-heavy", "chatty")
TURNS = 30
EPHEMERAL = {"type": "ephemeral"}


@dataclass(frozen=True)
class Profile:
    weights: Mapping[str, int]
    calls_per_turn: tuple[int, int, int]  # weights of one, two, three parallel calls
    ranged_reads: bool
    prose_sentences: tuple[int, int]
    remark_every: int  # a user remark after the tool results every ~N turns (0: never)


PROFILE_SETTINGS = {
    "tool-heavy": Profile(
        weights={
            "read": 28,
            "reread": 9,
            "edit": 7,
            "pytest": 8,
            "pip": 2,
            "npm": 3,
            "cargo": 2,
            "check": 6,
            "git_status": 2,
            "git_log": 2,
            "git_log_patch": 3,
            "git_diff": 4,
            "ls": 2,
            "find": 2,
            "tree": 1,
            "grep": 6,
            "glob": 2,
            "list": 1,
            "curl": 3,
            "progress": 1,
            "todo": 2,
        },
        calls_per_turn=(55, 30, 15),
        ranged_reads=False,
        prose_sentences=(0, 2),
        remark_every=0,
    ),
    "chatty": Profile(
        weights={
            "read": 18,
            "reread": 3,
            "edit": 14,
            "pytest_quiet": 8,
            "pytest": 2,
            "check": 4,
            "git_status": 6,
            "git_diff": 4,
            "git_log": 2,
            "grep": 12,
            "glob": 5,
            "list": 3,
            "curl": 1,
            "todo": 4,
        },
        calls_per_turn=(85, 15, 0),
        ranged_reads=True,
        prose_sentences=(3, 9),
        remark_every=5,
    ),
}

DESCRIPTIONS = {
    "pytest": "Run the test suite verbosely", "pytest_quiet": "Run the tests for this module",
    "pip": "Install the development dependencies", "npm": "Install the web dependencies",
    "cargo": "Build the native extension", "check": "Run the type checker and linters",
    "git_status": "Show working tree status", "git_log": "Show recent commits",
    "git_log_patch": "Show recent changes with patches", "git_diff": "Show the current diff",
    "ls": "List the directory", "find": "Find matching files", "tree": "Show the project layout",
    "curl": "Query the local API", "progress": "Run the FX backfill script",
}  # fmt: skip
THOUGHTS = (
    "The {noun} handling in {path} looks like the culprit; I need to see how {fn} treats values "
    "below zero before changing anything.",
    "The tests only cover the positive case, so whatever I change needs a regression test "
    "next to the existing ones.",
    "Before editing I want the callers of {fn}, since the reports package is imported by the "
    "finance notebooks and its signature has to stay stable.",
    "That output points at {path}; it matches the change from the last commit, so I'll compare "
    "the two versions.",
    "I'll rerun the narrow test file first and only then the whole suite, which takes longer.",
    "The type checker is complaining about {noun}; the fix is probably a missing conversion to "
    "Decimal rather than a wrong annotation.",
)
PROSE = (
    "I found where the {noun}s are filtered: `{fn}` in `{path}` skips everything at or below "
    "zero, which drops credits as well as zero amounts.",
    "The period filter added last week is fine on its own; the regression comes from the "
    "comparison that was changed alongside it.",
    "Next I'll check whether `{fn}` has other callers that rely on the old behaviour.",
    "The suite is green apart from the tests that exercise {noun}s, which is what we expect "
    "before the fix.",
    "I'd rather keep the public signature unchanged and fix the condition inside the loop, so "
    "the finance notebooks keep working.",
    "This also explains the mismatch in the monthly summary: the same helper feeds both reports.",
    "Let me look at the type checker's complaints too, since they touch the same module.",
)
REMARKS = (
    "Also, keep the CSV column order unchanged; finance imports it into a spreadsheet.",
    "Can you check whether the summary report has the same problem?",
    "Please don't touch the ingest code in this change, that's a separate PR.",
    "Ok. Once that works, run the linters too before you tell me it's done.",
    "FYI the staging API is running locally on port 8000 if you need real data.",
)
TODO_REMINDER = (
    "<system-reminder>\nThe TodoWrite tool hasn't been used recently. If you're working on tasks "
    "that would benefit from tracking progress, consider using the TodoWrite tool to track "
    "progress. Only use it if it's relevant to the current work.\n</system-reminder>"
)
CLAUDE_MD_REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
    "# important-instruction-reminders\nDo what has been asked; nothing more, nothing less. "
    "NEVER create files unless they're absolutely necessary for achieving your goal. ALWAYS "
    "prefer editing an existing file to creating a new one.\n</system-reminder>"
)
TASK = (
    "The monthly CSV export drops every refund. Finance says rows with negative amounts "
    "(credits) are missing from reports/export.py output since last week. Please fix it, add a "
    "regression test, and make sure the type checkers and the web build still pass."
)


class _Planner:
    """Draws each turn's actions and keeps the session's state (the repo, what was read)."""

    def __init__(self, rng: random.Random, repo: Repo, profile: Profile, style: AgentStyle) -> None:
        self.rng, self.repo, self.profile, self.style = rng, repo, profile, style
        self.reads: list[tuple[str, int, int | None]] = []
        kinds = [k for k in profile.weights if style.has_todo or k != "todo"]
        self.kinds, self.weights = kinds, [profile.weights[k] for k in kinds]

    def turn(self) -> list[Action]:
        count = self.rng.choices((1, 2, 3), self.profile.calls_per_turn)[0]
        return [self.action(self.rng.choices(self.kinds, self.weights)[0]) for _ in range(count)]

    def action(self, kind: str) -> Action:
        if kind == "reread" and self.reads:
            return self._read(*self.rng.choice(self.reads))
        if kind in ("read", "reread"):
            return self._read(*self._new_read())
        builders = {
            "edit": self._edit,
            "grep": self._grep,
            "glob": self._glob,
            "list": self._list,
            "todo": self._todo,
        }
        if kind in builders:
            return builders[kind]()
        return Action("shell", run=self._run(kind), description=DESCRIPTIONS[kind])

    def _edit(self) -> Action:
        read = [p for p, _, _ in self.reads if p.endswith(".py")]
        path = self.rng.choice(read or self.repo.paths(".py"))
        edit = self.repo.apply_edit(self.rng, path)
        lines = tuple(self.repo.files[path])
        return Action("edit", path, lines, edit=edit, description="Keep credits in the export")

    def _grep(self) -> Action:
        rng = self.rng
        word = rng.choice(NOUNS) + "s"
        if rng.random() < 0.6:
            word = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
        hits = tuple(
            (path, number, text.strip())
            for path, lines in self.repo.files.items()
            for number, text in enumerate(lines, 1)
            if word in text
        )
        return Action("grep", pattern=word, hits=hits[:250], description=f"Find uses of {word}")

    def _glob(self) -> Action:
        places = (("ledgerline", ".py"), ("tests", ".py"), ("web/src", ".tsx"), ("native", ".rs"))
        folder, suffix = self.rng.choice(places)
        paths = tuple(p for p in self.repo.files if p.startswith(folder) and p.endswith(suffix))
        pattern = f"{folder}/**/*{suffix}"
        return Action("glob", pattern=pattern, paths=paths, description="Locate files")

    def _list(self) -> Action:
        folder = self.rng.choice(("ledgerline", "ledgerline/reports", "tests", "web/src"))
        inside = [p.removeprefix(folder + "/") for p in self.repo.files if p.startswith(folder)]
        paths = tuple(sorted({p.split("/")[0] for p in inside}))
        return Action("list", folder, paths=paths, description="See what is in the folder")

    def _todo(self) -> Action:
        steps = "Find the filter dropping credits; Fix the condition; Add a test; Run linters"
        return Action("todo", description=steps)

    def _new_read(self) -> tuple[str, int, int | None]:
        rng, repo = self.rng, self.repo
        suffix = rng.choices((".py", ".tsx", ".ts", ".rs"), (70, 12, 10, 8))[0]
        path = rng.choice(repo.paths(suffix))
        size = len(repo.files[path])
        cap = self.style.read_cap
        if self.profile.ranged_reads or (cap is not None and size > cap):
            count = rng.randint(40, 150) if self.profile.ranged_reads else cap or size
            start = rng.choice([1, *range(1, max(2, size - count), 50)])
            return path, start, count
        return path, 1, None

    def _read(self, path: str, start: int, count: int | None) -> Action:
        self.reads.append((path, start, count))
        return Action("read", path, tuple(self.repo.files[path]), start=start, count=count)

    def _run(self, kind: str) -> out.Run:
        rng, repo = self.rng, self.repo
        color = rng.random() < 0.3
        if kind == "pytest":
            failing = rng.randint(1, 3) if len(repo.edits) < 3 or rng.random() < 0.3 else 0
            return out.pytest_run(rng, repo, failing=failing, color=color)
        simple = {
            "pytest_quiet": lambda: out.pytest_quiet(rng, repo),
            "pip": lambda: out.pip_install(rng, color=color),
            "npm": lambda: out.npm_install(rng, color=color),
            "cargo": lambda: out.cargo_build(rng, repo, color=color),
            "check": lambda: out.type_check(
                rng, repo, rng.choice(("tsc", "mypy", "ruff", "eslint"))
            ),
            "git_status": lambda: out.git_status(rng, repo),
            "git_log": lambda: out.git_log(rng, repo, patch=False),
            "git_log_patch": lambda: out.git_log(rng, repo, patch=True),
            "git_diff": lambda: out.git_diff(rng, repo),
            "ls": lambda: out.ls_long(rng, repo),
            "find": lambda: out.find_files(rng, repo),
            "tree": lambda: out.tree(rng, repo),
            "curl": lambda: out.curl_json(rng),
            "progress": lambda: out.progress_script(rng),
        }
        return simple[kind]()


def _fill(rng: random.Random, template: str, repo: Repo) -> str:
    return template.format(
        noun=rng.choice(NOUNS),
        fn=f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}",
        path=rng.choice(repo.paths(".py")),
    )


def _assistant(
    rng: random.Random, repo: Repo, profile: Profile, style: AgentStyle, uses: list[Json]
) -> Json:
    content: list[Json] = []
    if style.thinks:
        thought = " ".join(_fill(rng, rng.choice(THOUGHTS), repo) for _ in range(rng.randint(1, 4)))
        signature = base64.b64encode(rng.randbytes(rng.randint(280, 700))).decode()
        content.append({"type": "thinking", "thinking": thought, "signature": signature})
    sentences = rng.randint(*profile.prose_sentences)
    if sentences:
        paragraphs = [_fill(rng, rng.choice(PROSE), repo) for _ in range(sentences)]
        content.append(
            {
                "type": "text",
                "text": "\n\n".join(
                    " ".join(paragraphs[i : i + 3]) for i in range(0, sentences, 3)
                ),
            }
        )
    return {"role": "assistant", "content": content + uses}


def _pasted_ci_log(rng: random.Random, repo: Repo) -> str:
    runs = [out.pip_install(rng, color=True), out.pytest_run(rng, repo, failing=2, color=True)]
    lines = [line for run in runs for line in run.output.split("\n")]
    stamped = [
        f"2026-11-22T10:{14 + i // 600:02d}:{i // 10 % 60:02d}.{rng.randint(0, 9999999):07d}Z {t}"
        for i, t in enumerate(lines)
    ]
    return "\n".join(stamped[-90:])


def _opening(rng: random.Random, repo: Repo, agent: str, profile_name: str) -> list[Json]:
    task = TASK
    if profile_name == "chatty":
        task += (
            "\n\nHere's the CI log from the failing run:\n\n```\n"
            + _pasted_ci_log(rng, repo)
            + "\n```"
        )
    blocks = [{"type": "text", "text": task}]
    if agent == "claude-code":
        blocks.insert(0, {"type": "text", "text": CLAUDE_MD_REMINDER})
    return [{"role": "user", "content": blocks}]


def _fixed_fields(agent: str, repo: Repo) -> tuple[Json, list[Json]]:
    if agent == "claude-code":
        return prefixes.claude_code(repo)
    builders = {
        "opencode": prefixes.opencode,
        "cursor": prefixes.cursor,
        "codex": prefixes.codex,
        "generic": prefixes.generic,
    }
    return builders[agent](repo), []


ROLLING_MARKERS = {"claude-code": 1, "opencode": 2, "cursor": 1, "codex": 0, "generic": 0}


def with_rolling_markers(messages: list[Json], count: int) -> list[Json]:
    """``messages`` with ``cache_control`` on the last block of each of the last ``count``
    messages (the others are shared, not copied)."""
    marked = list(messages)
    for index in range(max(0, len(messages) - count), len(messages)):
        message = messages[index]
        blocks = list(message["content"])
        blocks[-1] = {**blocks[-1], "cache_control": EPHEMERAL}
        marked[index] = {**message, "content": blocks}
    return marked


@dataclass(frozen=True)
class Session:
    agent: str
    profile: str
    requests: tuple[bytes, ...]  # requests[k]: the request after k tool round trips


def encode(body: Json) -> bytes:
    """Compact JSON with UTF-8 text, as the agents' JSON.stringify sends it."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _user_turn(
    rng: random.Random, agent: str, profile: Profile, index: int, results: list[Json]
) -> Json:
    content = list(results)
    if agent == "claude-code" and index % 7 == 6:
        content.append({"type": "text", "text": TODO_REMINDER})
    if profile.remark_every and rng.randrange(profile.remark_every) == 0:
        content.append({"type": "text", "text": rng.choice(REMARKS)})
    return {"role": "user", "content": content}


def _tool_blocks(
    rng: random.Random, style: AgentStyle, root: str, actions: list[Action]
) -> tuple[list[Json], list[Json]]:
    uses, results = [], []
    for action in actions:
        tool_id = style.new_id(rng)
        call: Call = style.render(action, root, tool_id)
        uses.append({"type": "tool_use", "id": tool_id, "name": call.name, "input": call.input})
        result: Json = {"type": "tool_result", "tool_use_id": tool_id, "content": call.output}
        if call.is_error:
            result["is_error"] = True
        results.append(result)
    return uses, results


def build_session(agent: str, profile: str, *, seed: int = 0, turns: int = TURNS) -> Session:
    """The ``turns + 1`` requests of one session of ``agent`` under ``profile``.

    Deterministic: the same arguments give the same bytes. Raises ``KeyError`` for an unknown
    agent or profile.
    """
    style, settings = STYLES[agent], PROFILE_SETTINGS[profile]
    repo = make_repo(random.Random(seed))
    rng = random.Random(f"{agent}/{profile}/{seed}")
    fields, env_messages = _fixed_fields(agent, repo)
    opening = _opening(rng, repo, agent, profile)
    messages = opening[:1] + env_messages + opening[1:]
    planner = _Planner(rng, repo, settings, style)
    requests = []
    for index in range(turns + 1):
        if index:
            uses, results = _tool_blocks(rng, style, repo.root, planner.turn())
            messages.append(_assistant(rng, repo, settings, style, uses))
            messages.append(_user_turn(rng, agent, settings, index, results))
        marked = with_rolling_markers(messages, ROLLING_MARKERS[agent])
        requests.append(encode({**fields, "messages": marked}))
    return Session(agent, profile, tuple(requests))
