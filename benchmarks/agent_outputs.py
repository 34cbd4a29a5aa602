"""What shell commands print, for the agent corpus: one function per kind of command.

Each returns a :class:`Run` (the command line, its combined stdout + stderr, its exit code),
generated from a seeded ``random.Random`` and the session's :class:`~benchmarks.agent_repo.Repo`.
The shapes follow the real tools: pytest's verbose PASSED lines and long tracebacks, npm and
pip logs with their deprecation warnings, download bars and (where a tool forces it) ANSI
colour, cargo/tsc/mypy/ruff/eslint diagnostics, git status/log/diff, ``ls -la``/``find``/``tree``
with ``node_modules`` noise, pretty-printed JSON from ``curl``, carriage-return
progress redraws from a data script.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from .agent_repo import NOUNS, VERBS, Repo

NPM_PACKAGES = (
    "react", "react-dom", "vite", "typescript", "eslint", "@types/react", "@babel/core",
    "@babel/parser", "@babel/traverse", "postcss", "esbuild", "rollup", "vitest", "chai",
    "lodash", "semver", "glob", "minimatch", "inflight", "rimraf", "uuid", "debug", "ms",
    "chalk", "ansi-styles", "supports-color", "picocolors", "nanoid", "source-map-js",
    "@eslint/js", "globals", "acorn", "ajv", "fast-deep-equal", "json-schema-traverse",
    "@rollup/rollup-linux-x64-gnu", "caniuse-lite", "browserslist", "electron-to-chromium",
    "@jridgewell/sourcemap-codec", "magic-string", "tinyspy", "pathe", "std-env", "yocto-queue",
)  # fmt: skip
PY_PACKAGES = (
    "fastapi", "starlette", "pydantic", "pydantic-core", "sqlalchemy", "greenlet", "httpx",
    "httpcore", "anyio", "sniffio", "idna", "certifi", "h11", "uvicorn", "click", "pytest",
    "pluggy", "iniconfig", "packaging", "mypy", "mypy-extensions", "ruff", "typing-extensions",
    "annotated-types", "python-dateutil", "six", "tzdata", "numpy", "pandas", "pytz",
)  # fmt: skip
CRATES = (
    "proc-macro2", "unicode-ident", "quote", "syn", "serde", "serde_derive", "libc", "memchr",
    "cfg-if", "once_cell", "itoa", "ryu", "serde_json", "autocfg", "num-traits", "rust_decimal",
    "arrayvec", "smallvec", "pyo3-build-config", "pyo3-ffi", "pyo3-macros", "pyo3", "indoc",
    "heck", "target-lexicon", "thiserror", "thiserror-impl", "bytes", "hashbrown", "equivalent",
)  # fmt: skip

GREEN, RED, YELLOW, BOLD, DIM, RESET = (
    "\x1b[32m",
    "\x1b[31m",
    "\x1b[33m",
    "\x1b[1m",
    "\x1b[2m",
    "\x1b[0m",
)


@dataclass(frozen=True)
class Run:
    command: str
    output: str
    exit_code: int = 0


def _version(rng: random.Random) -> str:
    return f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 20)}"


def _banner(text: str, fill: str = "=", width: int = 80) -> str:
    return f" {text} ".center(width, fill)


def pytest_run(rng: random.Random, repo: Repo, *, failing: int, color: bool = False) -> Run:
    """``pytest -v``: a PASSED line per test, then tracebacks for ``failing`` tests."""
    ids = repo.test_ids()
    chosen = ids if rng.random() < 0.5 else [i for i in ids if rng.random() < 0.4] or ids[:5]
    failed = set(rng.sample(chosen, min(failing, len(chosen))))
    lines = [
        _banner("test session starts"),
        "platform linux -- Python 3.12.7, pytest-8.4.2, pluggy-1.6.0 --"
        " /home/dev/ledgerline/.venv/bin/python",
        "cachedir: .pytest_cache",
        "rootdir: /home/dev/ledgerline",
        "configfile: pyproject.toml",
        "plugins: anyio-4.6.2, cov-6.2.1, asyncio-0.24.0",
        f"collected {len(chosen)} items",
        "",
    ]
    ok, bad = (f"{GREEN}PASSED{RESET}", f"{RED}FAILED{RESET}") if color else ("PASSED", "FAILED")
    for index, node in enumerate(chosen, 1):
        word = bad if node in failed else ok
        lines.append(f"{node} {word}".ljust(72) + f" [{index * 100 // len(chosen):3d}%]")
    lines.append("")
    if failed:
        lines.append(_banner("FAILURES"))
        for node in sorted(failed):
            lines += _traceback(rng, node)
        lines.append(_banner("short test summary info"))
        lines += [f"FAILED {node} - AssertionError: assert 0 == 1" for node in sorted(failed)]
    seconds = rng.uniform(0.8, 45.0)
    summary = f"{len(failed)} failed, " if failed else ""
    summary += f"{len(chosen) - len(failed)} passed in {seconds:.2f}s"
    lines.append(_banner(summary))
    command = "uv run pytest -v" + (" --color=yes" if color else "")
    if len(chosen) != len(ids):
        command += " " + " ".join(sorted({node.split("::")[0] for node in chosen}))
    return Run(command, "\n".join(lines), 1 if failed else 0)


def _traceback(rng: random.Random, node: str) -> list[str]:
    path, name = node.split("::")
    noun = rng.choice(NOUNS)
    line = rng.randint(20, 200)
    return [
        _banner(name, "_"),
        "",
        f"    def {name}():",
        f'        {noun} = make_entry(amount=Decimal("-{rng.randint(1, 900)}.50"))',
        f">       assert len(list(iter_rows([{noun}], ExportOptions()))) == 1",
        "E       AssertionError: assert 0 == 1",
        "E        +  where 0 = len([])",
        "",
        f"{path}:{line}: AssertionError",
        _banner("Captured log call", "-"),
        f"DEBUG    ledgerline.reports.export:export.py:63 skipping entry e-{rng.randint(1, 99)} "
        f"with amount -{rng.randint(1, 900)}.50",
    ]


def pytest_quiet(rng: random.Random, repo: Repo) -> Run:
    """``pytest -q`` on one file: dots and a summary line."""
    path = rng.choice([p for p in repo.paths(".py") if p.startswith("tests/")])
    count = sum(1 for node in repo.test_ids() if node.startswith(path))
    return Run(f"uv run pytest -q {path}", f"{'.' * count}  [100%]\n{count} passed in 0.41s")


def pip_install(rng: random.Random, *, color: bool) -> Run:
    lines = []
    for name in rng.sample(PY_PACKAGES, rng.randint(12, len(PY_PACKAGES))):
        version, size = _version(rng), rng.uniform(0.02, 18.0)
        if rng.random() < 0.35:
            lines.append(
                f"Requirement already satisfied: {name} in"
                f" ./.venv/lib/python3.12/site-packages ({version})"
            )
            continue
        lines.append(f"Collecting {name}=={version}")
        lines.append(
            f"  Downloading {name.replace('-', '_')}-{version}-py3-none-any.whl.metadata"
            f" ({rng.randint(2, 30)} kB)"
        )
        lines.append(
            f"Downloading {name.replace('-', '_')}-{version}-py3-none-any.whl ({size:.1f} MB)"
        )
        bar = "━" * 40
        if color:
            bar = f"\x1b[38;2;114;156;31m{bar}\x1b[0m"
        lines.append(f"   {bar} {size:.1f}/{size:.1f} MB {rng.uniform(2, 60):.1f} MB/s eta 0:00:00")
    lines.append("Installing collected packages: " + ", ".join(rng.sample(PY_PACKAGES, 10)))
    lines.append(
        "Successfully installed "
        + " ".join(f"{p}-{_version(rng)}" for p in rng.sample(PY_PACKAGES, 10))
    )
    return Run("pip install -r requirements-dev.txt", "\n".join(lines))


def npm_install(rng: random.Random, *, color: bool) -> Run:
    warn = f"{YELLOW}npm{RESET} {YELLOW}warn{RESET}" if color else "npm warn"
    lines = []
    for name in rng.sample(NPM_PACKAGES, rng.randint(6, 12)):
        lines.append(
            f"{warn} deprecated {name}@{_version(rng)}: This module is not supported, and leaks"
            " memory. Do not use it."
        )
    for _ in range(rng.randint(80, 260)):
        name = rng.choice(NPM_PACKAGES)
        lines.append(
            f"npm http fetch GET 200 https://registry.npmjs.org/{name}/-/{name.split('/')[-1]}-"
            f"{_version(rng)}.tgz {rng.randint(3, 900)}ms"
            f" (cache {rng.choice(('hit', 'miss', 'revalidated'))})"
        )
    added = rng.randint(300, 1500)
    lines += [
        "",
        f"added {added} packages, and audited {added + 1} packages in {rng.randint(4, 90)}s",
        "",
        f"{rng.randint(40, 300)} packages are looking for funding",
        "  run `npm fund` for details",
        "",
        f"{rng.randint(4, 9)} vulnerabilities ({rng.randint(1, 2)} low, 2 moderate, 1 high)",
        "",
        "To address all issues, run:",
        "  npm audit fix",
    ]
    return Run("cd web && npm install --loglevel http", "\n".join(lines))


def cargo_build(rng: random.Random, repo: Repo, *, color: bool) -> Run:
    green = f"{GREEN}{BOLD}" if color else ""
    reset = RESET if color else ""
    lines = [f"{green}   Compiling{reset} {c} v{_version(rng)}" for c in CRATES]
    failed = rng.random() < 0.5
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(repo.paths(".rs"))
        line = rng.randint(5, len(repo.files[path]))
        source = repo.files[path][line - 1]
        kind = "error[E0308]: mismatched types" if failed else "warning: unused variable: `totals`"
        lines += [
            kind,
            f"  --> {path.removeprefix('native/')}:{line}:{rng.randint(5, 40)}",
            "   |",
            f"{line:<3}|{source}",
            "   |         ^^^^^^ expected `Amount`, found `Result<Amount, ParseError>`",
            "   |",
            "   = note: expected struct `Amount`",
            "              found enum `Result<Amount, ParseError>`",
            "",
        ]
    if failed:
        lines.append("error: could not compile `ledgerline-native` (lib) due to 2 previous errors")
    else:
        lines.append(
            f"{green}    Finished{reset} `dev` profile [unoptimized + debuginfo] target(s)"
            f" in {rng.uniform(3, 60):.2f}s"
        )
    return Run("cd native && cargo build", "\n".join(lines), 101 if failed else 0)


CHECK_COMMANDS = {
    "tsc": "cd web && npx tsc --noEmit",
    "mypy": "uv run mypy ledgerline",
    "ruff": "uv run ruff check .",
    "eslint": "cd web && npx eslint src",
}


def _diagnostic(rng: random.Random, repo: Repo, tool: str, path: str) -> list[str]:
    """One finding of ``tool`` in ``path``, in the tool's own format."""
    line, col, noun = rng.randint(1, len(repo.files[path])), rng.randint(1, 40), rng.choice(NOUNS)
    if tool == "tsc":
        return [
            f"{path.removeprefix('web/')}({line},{col}): error TS2339: Property '{noun}'"
            " does not exist on type 'Report'."
        ]
    if tool == "mypy":
        return [
            f'{path}:{line}: error: Argument 1 to "{rng.choice(VERBS)}_{noun}" has'
            ' incompatible type "str"; expected "Decimal"  [arg-type]'
        ]
    if tool == "ruff":
        return [
            f"{path}:{line}:{col}: F841 Local variable `{noun}` is assigned to but never used",
            "   |",
            f"{line:<3}|{repo.files[path][line - 1]}",
            "   |     ^^^^^ F841",
            "   |",
            "   = help: Remove assignment to unused variable",
            "",
        ]
    return [
        f"/home/dev/ledgerline/{path}",
        f"  {line}:{col}  error  '{noun}' is defined but never used"
        "  @typescript-eslint/no-unused-vars",
        "",
    ]


def type_check(rng: random.Random, repo: Repo, tool: str) -> Run:
    """tsc, mypy, ruff or eslint on the project: a few findings, or none, and the summary."""
    suffix = ".ts" if tool in ("tsc", "eslint") else ".py"
    paths = [p for p in repo.paths(suffix) + repo.paths(suffix + "x") if not p.startswith("tests/")]
    count = rng.randint(0, 18)
    lines = [text for _ in range(count) for text in _diagnostic(rng, repo, tool, rng.choice(paths))]
    if tool == "mypy":
        files = len({text.split(":")[0] for text in lines})
        lines.append(
            f"Found {count} errors in {files} files (checked 48 source files)"
            if count
            else "Success: no issues found in 48 source files"
        )
    elif tool == "ruff":
        lines.append(f"Found {count} errors." if count else "All checks passed!")
    elif tool == "eslint" and count:
        lines.append(f"✖ {count} problems ({count} errors, 0 warnings)")
    return Run(CHECK_COMMANDS[tool], "\n".join(lines), 1 if count else 0)


def git_status(rng: random.Random, repo: Repo) -> Run:
    changed = sorted({edit.path for edit in repo.edits})
    lines = ["On branch fix/export-negative-amounts", "Changes not staged for commit:",
             '  (use "git add <file>..." to update what will be committed)',
             '  (use "git restore <file>..." to discard changes in working directory)']  # fmt: skip
    lines += [f"\tmodified:   {path}" for path in changed] or ["\t(nothing)"]
    lines += [
        "",
        "Untracked files:",
        '  (use "git add <file>..." to include in what will be committed)',
        "\t.coverage",
        "\tscratch/",
        "",
    ]
    lines.append('no changes added to commit (use "git add" and/or "git commit -a")')
    return Run("git status", "\n".join(lines))


def git_log(rng: random.Random, repo: Repo, *, patch: bool) -> Run:
    count = rng.randint(3, 6) if patch else rng.randint(10, 40)
    lines = []
    for index, (sha, author, subject) in enumerate(repo.commits[:count]):
        lines += [
            f"commit {sha}",
            f"Author: {author} <{author.split()[0].lower()}@ledgerline.dev>",
            f"Date:   Mon Nov {23 - index % 20} 1{index % 10}:2{index % 6}:0{index % 9} 2026 +0100",
            "",
            f"    {subject}",
            "",
        ]
        if patch:
            path = rng.choice(repo.paths(".py"))
            lines += _hunk(rng, repo, path, rng.randint(1, len(repo.files[path])), 4)
    command = f"git log -p -n {count}" if patch else f"git log -n {count}"
    return Run(command, "\n".join(lines))


def _hunk(rng: random.Random, repo: Repo, path: str, at: int, changed: int) -> list[str]:
    lines = repo.files[path]
    start = max(1, at - 3)
    out = [
        f"diff --git a/{path} b/{path}",
        f"index {rng.getrandbits(28):07x}..{rng.getrandbits(28):07x} 100644",
        f"--- a/{path}",
        f"+++ b/{path}",
        f"@@ -{start},{changed + 6} +{start},{changed + 6} @@",
    ]
    for index in range(start - 1, min(len(lines), start + changed + 5)):
        mark = "-" if at - 1 <= index < at - 1 + changed // 2 else " "
        out.append(f"{mark}{lines[index]}")
    out += [f"+    {rng.choice(NOUNS)} = {rng.choice(VERBS)}_{rng.choice(NOUNS)}(opts)"]
    return out


def git_diff(rng: random.Random, repo: Repo) -> Run:
    lines = []
    for edit in repo.edits or []:
        first = max(1, edit.line - 3)
        lines += [
            f"diff --git a/{edit.path} b/{edit.path}",
            f"--- a/{edit.path}",
            f"+++ b/{edit.path}",
            f"@@ -{first},{len(edit.old) + 6} +{first},{len(edit.new) + 6} @@",
        ]
        context = repo.files[edit.path]
        lines += [f" {text}" for text in context[max(0, edit.line - 4) : edit.line - 1]]
        lines += [f"-{text}" for text in edit.old] + [f"+{text}" for text in edit.new]
        lines += [
            f" {text}"
            for text in context[edit.line - 1 + len(edit.new) : edit.line + len(edit.new) + 2]
        ]
    if not lines:
        path = rng.choice(repo.paths(".py"))
        lines = _hunk(rng, repo, path, rng.randint(1, len(repo.files[path])), 6)
    return Run("git diff", "\n".join(lines))


def _node_modules_paths(rng: random.Random, count: int) -> list[str]:
    paths = []
    for _ in range(count):
        name = rng.choice(NPM_PACKAGES)
        leaf = rng.choice(
            ("index.js", "package.json", "README.md", "LICENSE", "dist/index.cjs", "lib/util.js")
        )
        paths.append(f"./web/node_modules/{name}/{leaf}")
    return paths


def find_files(rng: random.Random, repo: Repo) -> Run:
    pattern = rng.choice(("*.ts", "*.json", "*.md"))
    own = [f"./{p}" for p in repo.files if p.endswith(pattern[1:])]
    noise = sorted(set(_node_modules_paths(rng, rng.randint(150, 700))))
    hits = [p for p in own + noise if p.endswith(pattern[1:])] or own + noise[:50]
    return Run(f"find . -name '{pattern}'", "\n".join(hits))


def ls_long(rng: random.Random, repo: Repo) -> Run:
    directory = rng.choice(("", "ledgerline", "web", "web/node_modules", "tests"))
    names = sorted(
        {
            p.removeprefix(directory + "/").split("/")[0]
            for p in repo.files
            if p.startswith(directory)
        }
    )
    if directory == "web/node_modules":
        names = sorted(
            {n.split("/")[0] for n in NPM_PACKAGES}
            | {f".{n}" for n in ("bin", "vite", "package-lock.json")}
        )
    lines = [f"total {rng.randint(40, 900)}"]
    for name in [".", "..", *names]:
        is_dir = "." not in name.strip(".") or name in (".", "..")
        mode = "drwxr-xr-x" if is_dir else "-rw-r--r--"
        size = 4096 if is_dir else rng.randint(120, 48000)
        lines.append(
            f"{mode}  {rng.randint(1, 9):>2} dev dev {size:>6} Nov {rng.randint(1, 23):>2}"
            f" {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} {name}"
        )
    return Run(f"ls -la {directory}".rstrip(), "\n".join(lines))


def tree(rng: random.Random, repo: Repo) -> Run:
    """``tree -L 4``: the project with ``web/node_modules`` in it."""
    noise = {p.removeprefix("./") for p in _node_modules_paths(rng, rng.randint(100, 400))}
    lines, seen, files = ["."], set(), 0
    for path in sorted(set(repo.files) | noise):
        parts = path.split("/")[:4]
        files += len(parts) == path.count("/") + 1
        for depth in range(len(parts)):
            prefix = "/".join(parts[: depth + 1])
            if prefix not in seen:
                seen.add(prefix)
                lines.append("│   " * depth + "├── " + parts[depth])
    lines += ["", f"{len(seen) - files} directories, {files} files"]
    return Run("tree -L 4", "\n".join(lines))


def curl_json(rng: random.Random) -> Run:
    rows = [
        {
            "entry_id": f"e-{rng.randint(1000, 99999)}",
            "posted_on": f"2026-10-{rng.randint(1, 31):02d}",
            "account": {
                "code": f"{rng.randint(1000, 9999)}",
                "name": f"{rng.choice(NOUNS).title()} {rng.choice(NOUNS)}s",
            },
            "counterparty": rng.choice(("ACME GmbH", "Northwind Ltd", "Globex", None)),
            "memo": f"{rng.choice(VERBS)} {rng.choice(NOUNS)} {rng.randint(1, 999)}",
            "amount": f"{rng.randint(-9000, 9000)}.{rng.randint(0, 99):02d}",
            "currency": rng.choice(("EUR", "USD", "GBP")),
            "tags": rng.sample(NOUNS, rng.randint(0, 3)),
        }
        for _ in range(rng.randint(8, 90))
    ]
    body = {"period": "2026-10", "count": len(rows), "next": None, "results": rows}
    indent = rng.choice((2, 4))
    tool = "jq ." if indent == 2 else "python -m json.tool"
    return Run(
        f"curl -s 'http://localhost:8000/api/v1/entries?period=2026-10' | {tool}",
        json.dumps(body, indent=indent),
    )


def progress_script(rng: random.Random) -> Run:
    """A backfill script with a tqdm bar: hundreds of carriage-return redraws of one line."""
    total, parts = rng.randint(200, 2000), []
    for done in range(0, total + 1, max(1, total // rng.randint(80, 300))):
        filled = done * 30 // total
        parts.append(
            f"\rbackfill: {done * 100 // total:3d}%|{'█' * filled}{' ' * (30 - filled)}|"
            f" {done}/{total} [00:{done % 60:02d}<00:{(total - done) % 60:02d},"
            f" {rng.randint(80, 400)}it/s]"
        )
    bars = "".join(parts)
    text = f"Loading periods 2024-01..2026-10\n{bars}\nbackfilled {total} entries, 0 errors\n"
    return Run("uv run python scripts/backfill_fx.py --since 2024-01", text)
