"""A made-up repository for the agent corpus: source files an agent reads and edits.

A Python service (``ledgerline/``, ``tests/``), a TypeScript front end (``web/``) and a small
Rust extension (``native/``), every file generated from one seeded ``random.Random`` so the
same seed gives the same bytes. The code is plausible rather than meaningful: typed
signatures, docstrings, branches, loops, logging, the indentation real files have. Files are
lists of lines; an edit replaces lines and is remembered, so ``git diff`` can show it and a
later read shows the new content.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NOUNS = (
    "entry", "account", "amount", "currency", "period", "report", "row", "ledger", "balance",
    "invoice", "payment", "statement", "batch", "journal", "posting", "customer", "vendor",
    "rate", "fee", "settlement", "transfer", "export", "budget", "allocation", "refund",
)  # fmt: skip
VERBS = (
    "load", "parse", "build", "render", "compute", "validate", "normalize", "iter", "apply",
    "export", "fetch", "merge", "split", "group", "summarize", "reconcile", "resolve", "format",
)  # fmt: skip
PY_MODULES = (
    "models", "money", "ingest/bank_csv", "ingest/ofx", "reports/export", "reports/summary",
    "reports/aging", "api/routes", "api/schemas", "api/deps", "db/session", "db/queries",
    "services/reconcile", "services/fx", "cli", "settings", "audit", "periods",
)  # fmt: skip
TS_MODULES = (
    "api/client", "components/ReportTable", "components/PeriodPicker", "components/Ledger",
    "hooks/useReports", "state/store", "utils/money", "pages/Dashboard",
)  # fmt: skip
RS_MODULES = ("lib", "parse", "decimal", "ffi")


@dataclass(frozen=True)
class Edit:
    path: str
    line: int  # 1-based first replaced line
    old: tuple[str, ...]
    new: tuple[str, ...]


@dataclass
class Repo:
    """The files of one session's project, by path relative to ``root``."""

    root: str
    name: str
    files: dict[str, list[str]] = field(default_factory=dict)
    edits: list[Edit] = field(default_factory=list)
    commits: list[tuple[str, str, str]] = field(default_factory=list)  # sha, author, subject

    def abs(self, path: str) -> str:
        return f"{self.root}/{path}"

    def paths(self, suffix: str = "") -> list[str]:
        return [path for path in self.files if path.endswith(suffix)]

    def test_ids(self) -> list[str]:
        """pytest node ids of every test function in ``tests/``."""
        ids = []
        for path, lines in self.files.items():
            if path.startswith("tests/") and path.endswith(".py"):
                for text in lines:
                    if text.startswith("def test_"):
                        ids.append(f"{path}::{text[4 : text.index('(')]}")
        return ids

    def apply_edit(self, rng: random.Random, path: str) -> Edit:
        """Change a few lines in the body of a function of ``path``; remember the edit."""
        lines = self.files[path]
        candidates = [i for i, text in enumerate(lines) if text.startswith("        ")]
        start = rng.choice(candidates or [i for i, text in enumerate(lines) if text.strip()])
        old = tuple(lines[start : start + rng.randint(1, 3)])
        indent = old[0][: len(old[0]) - len(old[0].lstrip())]
        noun = rng.choice(NOUNS)
        new = (
            f"{indent}# {noun}s below zero are credits; keep them (issue #{rng.randint(80, 400)})",
            f"{indent}if {noun} is None or {noun}.is_zero():",
            f"{indent}    continue",
        )
        lines[start : start + len(old)] = new
        edit = Edit(path, start + 1, old, new)
        self.edits.append(edit)
        return edit


def _ident(rng: random.Random) -> str:
    return f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"


def _camel(rng: random.Random) -> str:
    return rng.choice(VERBS) + rng.choice(NOUNS).capitalize()


def _py_statement(rng: random.Random, indent: str) -> list[str]:
    noun, other = rng.choice(NOUNS), rng.choice(NOUNS)
    pick = rng.randrange(9)
    if pick == 0:
        return [
            f"{indent}if {noun}.{other} is None:",
            f'{indent}    raise ValueError(f"{noun} {{{noun}.id}} has no {other}")',
        ]
    if pick == 1:
        return [
            f"{indent}for {noun} in {other}s:",
            f"{indent}    if not {noun}.active:",
            f"{indent}        continue",
            f"{indent}    totals[{noun}.{other}_id] += {noun}.amount",
        ]
    if pick == 2:
        return [f'{indent}log.debug("{_ident(rng)}: %s {noun}s for %s", len({noun}s), {other})']
    if pick == 3:
        return [f"{indent}# {rng.choice(VERBS).capitalize()} the {noun}s before the {other}s."]
    if pick == 4:
        return [
            f"{indent}{noun} = {_ident(rng)}(",
            f"{indent}    {other},",
            f"{indent}    currency=opts.currency,",
            f"{indent}    places=opts.decimal_places,",
            f"{indent})",
        ]
    if pick == 5:
        return [f"{indent}{noun}s = [{noun} for {noun} in {other}s if {noun}.period == period]"]
    if pick == 6:
        return [
            f"{indent}try:",
            f"{indent}    {noun} = {noun}s[{other}.key]",
            f"{indent}except KeyError:",
            f'{indent}    log.warning("unknown {noun} %r", {other}.key)',
            f"{indent}    return None",
        ]
    if pick == 7:
        return [f"{indent}{noun}_total = sum(({noun}.amount for {noun} in {noun}s), Decimal(0))"]
    return [f"{indent}{noun} = {other}.{_ident(rng)}(strict={rng.choice(('True', 'False'))})"]


def _py_function(rng: random.Random, name: str, indent: str = "") -> list[str]:
    noun, other = rng.choice(NOUNS), rng.choice(NOUNS)
    lines = [
        f"{indent}def {name}({noun}s: Sequence[{noun.capitalize()}], {other}: "
        f"{other.capitalize()} | None = None) -> list[{noun.capitalize()}]:",
        f'{indent}    """{name.replace("_", " ").capitalize()} for every {noun} in the {other}.',
        "",
        f"{indent}    Raises ValueError when a {noun} has no {rng.choice(NOUNS)}.",
        f'{indent}    """',
    ]
    for _ in range(rng.randint(2, 6)):
        lines += _py_statement(rng, indent + "    ")
    lines.append(f"{indent}    return {rng.choice(NOUNS)}s")
    return [*lines, ""]


def python_source(rng: random.Random, module: str, length: int) -> list[str]:
    lines = [
        f'"""{module.replace("/", " ").capitalize()}: {rng.choice(VERBS)} and '
        f'{rng.choice(VERBS)} {rng.choice(NOUNS)}s."""',
        "from __future__ import annotations",
        "",
        "import logging",
        "from collections import defaultdict",
        "from dataclasses import dataclass, field",
        "from decimal import Decimal",
        "from typing import Iterable, Iterator, Sequence",
        "",
        f"from ledgerline.models import {', '.join(n.capitalize() for n in rng.sample(NOUNS, 4))}",
        "",
        "log = logging.getLogger(__name__)",
        "",
    ]
    while len(lines) < length:
        if rng.random() < 0.25:
            cls = rng.choice(NOUNS).capitalize() + rng.choice(("Options", "Row", "Summary"))
            lines += ["", "@dataclass(frozen=True)", f"class {cls}:", f'    """One {cls}."""', ""]
            lines += [
                f"    {n}: {rng.choice(('str', 'Decimal', 'int'))}" for n in rng.sample(NOUNS, 4)
            ]
            lines += ["    tags: list[str] = field(default_factory=list)", "", ""]
            lines += _py_function(rng, f"{_ident(rng)}", "    ")
        else:
            lines += ["", *_py_function(rng, _ident(rng))]
    return lines


def python_test_source(rng: random.Random, module: str, count: int) -> list[str]:
    target = module.rsplit("/", 1)[-1]
    lines = [
        "from decimal import Decimal",
        "",
        "import pytest",
        "",
        f"from ledgerline.{module.replace('/', '.')} import {_ident(rng)}, {_ident(rng)}",
        "from tests.factories import make_entry",
        "",
    ]
    for index in range(count):
        noun = rng.choice(NOUNS)
        lines += [
            "",
            f"def test_{target}_{_ident(rng)}_{index}():",
            f'    {noun} = make_entry(amount=Decimal("{rng.randint(-500, 500)}.{index + 10}"))',
            f"    result = {_ident(rng)}([{noun}])",
            f"    assert result == [{noun}]",
        ]
    return lines


def typescript_source(rng: random.Random, module: str, length: int) -> list[str]:
    name = module.rsplit("/", 1)[-1]
    lines = [
        'import { useEffect, useMemo, useState } from "react";',
        'import type { LedgerEntry, Period, Report } from "../api/types";',
        'import { formatAmount } from "../utils/money";',
        "",
        f"export interface {name}Props {{",
        *(
            f"  {rng.choice(NOUNS)}: {rng.choice(('string', 'number', 'Period'))};"
            for _ in range(4)
        ),
        "}",
        "",
    ]
    while len(lines) < length:
        fn, noun = _camel(rng), rng.choice(NOUNS)
        lines += [
            f"export function {fn}({noun}s: LedgerEntry[], period: Period): Report[] {{",
            "  const result: Report[] = [];",
            f"  for (const {noun} of {noun}s) {{",
            f"    if ({noun}.period !== period.id) {{",
            "      continue;",
            "    }",
            f"    result.push({{ id: {noun}.id, amount: formatAmount({noun}.amount) }});",
            "  }",
            f'  console.debug("{fn}", result.length);',
            "  return result;",
            "}",
            "",
        ]
    return lines


def rust_source(rng: random.Random, module: str, length: int) -> list[str]:
    lines = [
        "use std::collections::HashMap;",
        "use std::fmt;",
        "",
        "use crate::decimal::Amount;",
        "",
    ]
    while len(lines) < length:
        noun, verb = rng.choice(NOUNS), rng.choice(VERBS)
        lines += [
            f"/// {verb.capitalize()} a {noun} from its raw fields.",
            f"pub fn {verb}_{noun}(raw: &[u8], totals: &mut HashMap<String, Amount>)"
            " -> Result<Amount, ParseError> {",
            "    let text = std::str::from_utf8(raw).map_err(|_| ParseError::Encoding)?;",
            "    let amount: Amount = text.trim().parse()?;",
            f'    *totals.entry("{noun}".to_string()).or_default() += amount;',
            "    Ok(amount)",
            "}",
            "",
        ]
    return lines


def make_repo(rng: random.Random) -> Repo:
    """A fresh project: every module, test file and config file, with a short git history."""
    repo = Repo(root="/home/dev/ledgerline", name="ledgerline")
    for module in PY_MODULES:
        repo.files[f"ledgerline/{module}.py"] = python_source(rng, module, rng.randint(90, 620))
        test_path = f"tests/{module.rsplit('/', 1)[0] + '/' if '/' in module else ''}"
        test_path += f"test_{module.rsplit('/', 1)[-1]}.py"
        repo.files[test_path] = python_test_source(rng, module, rng.randint(8, 40))
    for module in TS_MODULES:
        suffix = (
            ".tsx" if "/" in module and module.split("/")[0] in ("components", "pages") else ".ts"
        )
        repo.files[f"web/src/{module}{suffix}"] = typescript_source(
            rng, module, rng.randint(60, 320)
        )
    for module in RS_MODULES:
        repo.files[f"native/src/{module}.rs"] = rust_source(rng, module, rng.randint(60, 260))
    repo.files["pyproject.toml"] = [
        "[project]", 'name = "ledgerline"', 'version = "2.14.0"', 'requires-python = ">=3.11"',
        "dependencies = [", '    "fastapi>=0.115",', '    "sqlalchemy>=2.0",', '    "httpx>=0.27",',
        '    "pydantic>=2.9",', "]",
    ]  # fmt: skip
    repo.files["web/package.json"] = [
        "{", '  "name": "ledgerline-web",', '  "private": true,', '  "scripts": {',
        '    "build": "tsc -b && vite build",', '    "lint": "eslint src",', '    "test": "vitest"',
        "  }", "}",
    ]  # fmt: skip
    for _ in range(60):
        sha = "".join(rng.choice("0123456789abcdef") for _ in range(40))
        author = rng.choice(("Dana Whitfield", "Ravi Menon", "Jo Park", "Alex Romero"))
        subject = (
            f"{rng.choice(PY_MODULES).split('/')[0]}: {rng.choice(VERBS)} {rng.choice(NOUNS)}s"
        )
        repo.commits.append((sha, author, subject))
    return repo
