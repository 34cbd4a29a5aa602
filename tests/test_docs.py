"""docs/configuration.md is checked against the code, so that it cannot drift from it.

The reference has one section per TOML table, headed by the table in backticks
(``## `[fallback.retry]` ``; ``<name>`` and ``"<model>"`` stand for a table's own keys, and
``## Top-level keys`` is ``GatewayConfig`` itself), each with rows
``| `key` | type | default | meaning |``. The tests walk every Struct reachable from
:class:`GatewayConfig` (through Struct fields, ``dict[str, Struct]``, ``tuple[Struct, ...]``
and optional Structs) and require:

1. one section per table, whose rows name exactly that Struct's fields: a field added to the
   code without a row fails, and so does a row left behind for a field that is gone (a check
   that the name merely appears somewhere in the doc would pass for a new field whose name
   happens to occur elsewhere, such as ``models`` or ``tags``);
2. each row's default to be the code's: a leading backticked TOML literal must equal the
   default (same type, so ``10.0`` is not ``10``); ``required`` means no default, ``unset``
   means ``None``; any other text is allowed only where the default is not a scalar (a table,
   or the built-in ``[[models]]`` list);
3. every ``toml`` block of the doc to load with :func:`load_config` and build a
   :class:`Gateway`, and the complete example (the last block) to use every table; every
   ``python`` block to run and leave a ``gateway`` that closes.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from messages_mw import Gateway
from messages_mw.config import GatewayConfig, load_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
TOP_LEVEL = "Top-level keys"

_HEADING = re.compile(r"^#{2,3} (.+)$")
_TABLE_IN_HEADING = re.compile(r"`\[\[?([^`\]]+)\]\]?`")
_PLACEHOLDER = re.compile(r'"?<[^>]+>"?')
_ROW = re.compile(r"^\|\s*`([A-Za-z0-9_]+)`\s*\|(.*)\|\s*$")
_CELL_SEPARATOR = re.compile(r"(?<!\\)\|")
_LITERAL = re.compile(r"`([^`]+)`")
_TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def _structs(info: mi.Type) -> Iterator[mi.StructType]:
    """The Struct types a field's type holds: itself, or a dict's values, a tuple's or list's
    items, a union's members."""
    if isinstance(info, mi.StructType):
        yield info
    elif isinstance(info, mi.UnionType):
        for member in info.types:
            yield from _structs(member)
    elif isinstance(info, mi.DictType):
        yield from _structs(info.value_type)
    elif isinstance(info, mi.VarTupleType | mi.ListType):
        yield from _structs(info.item_type)


def _child_path(path: str, name: str, info: mi.Type) -> str:
    """The canonical TOML path of a field's table: ``*`` stands for a table's own keys."""
    inner = info
    if isinstance(inner, mi.UnionType):
        inner = next(t for t in inner.types if not isinstance(t, mi.NoneType))
    joined = f"{path}.{name}" if path else name
    return f"{joined}.*" if isinstance(inner, mi.DictType) else joined


def config_tables() -> dict[str, mi.StructType]:
    """Every table reachable from GatewayConfig, by canonical path (``""``: the top level)."""
    tables: dict[str, mi.StructType] = {}

    def walk(path: str, struct: mi.StructType) -> None:
        tables[path] = struct
        for field in struct.fields:
            for child in _structs(field.type):
                walk(_child_path(path, field.name, field.type), child)

    root = mi.type_info(GatewayConfig)
    assert isinstance(root, mi.StructType)
    walk("", root)
    return tables


def doc_sections() -> dict[str, list[str]]:
    """The doc's sections by canonical table path (a heading may name several tables), each
    as the lines up to the next heading."""
    sections: dict[str, list[str]] = {}
    current: list[list[str]] = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = _HEADING.match(line)
        if heading is not None:
            current = []
            title = heading.group(1).strip()
            paths = [""] if title == TOP_LEVEL else _TABLE_IN_HEADING.findall(title)
            for raw in paths:
                path = _PLACEHOLDER.sub("*", raw)
                assert path not in sections, f"two sections for [{path}]"
                sections[path] = []
                current.append(sections[path])
            continue
        for lines in current:
            lines.append(line)
    return sections


def rows(lines: list[str]) -> dict[str, list[str]]:
    """The ``| `key` | type | default | meaning |`` rows of a section: key to its cells."""
    found: dict[str, list[str]] = {}
    for line in lines:
        match = _ROW.match(line)
        if match is None:
            continue
        key = match.group(1)
        cells = [cell.strip() for cell in _CELL_SEPARATOR.split(match.group(2))]
        assert len(cells) == 3, f"row {key!r} needs type, default and meaning: {line}"
        assert key not in found, f"two rows for {key!r}"
        found[key] = cells
    return found


def _default(field: mi.Field) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return msgspec.NODEFAULT


def _is_scalar(value: Any) -> bool:
    """Whether a default can be written as one TOML literal in a table cell."""
    if isinstance(value, msgspec.Struct):
        return False
    if isinstance(value, tuple | list):
        return all(_is_scalar(item) for item in value)
    if isinstance(value, dict):
        return not value
    return True


def _documented_fields() -> Iterator[tuple[str, mi.Field, list[str]]]:
    sections = doc_sections()
    for path, struct in config_tables().items():
        assert path in sections, f"no section for [{path}]"
        documented = rows(sections[path])
        for field in struct.fields:
            assert field.name in documented, f"[{path}]: no row for {field.name!r}"
            yield path, field, documented[field.name]


def test_every_table_has_a_section_listing_exactly_its_fields() -> None:
    tables = config_tables()
    sections = doc_sections()
    assert sorted(tables) == sorted(sections), "sections and config tables differ"
    for path, struct in tables.items():
        documented = sorted(rows(sections[path]))
        fields = sorted(field.name for field in struct.fields)
        where = f"[{path}]" if path else TOP_LEVEL
        assert documented == fields, f"{where}: rows {documented} but fields {fields}"


def test_documented_defaults_match_the_code() -> None:
    checked = 0
    for path, field, (_, default_cell, _) in _documented_fields():
        name = f"{path}.{field.name}" if path else field.name
        default = _default(field)
        if default_cell.startswith("`"):
            literal = _LITERAL.match(default_cell)
            assert literal is not None, name
            written = tomllib.loads(f"v = {literal.group(1)}")["v"]
            expected = msgspec.json.decode(msgspec.json.encode(default))  # tuples as lists
            assert default is not msgspec.NODEFAULT, f"{name}: documented default, none in code"
            assert type(written) is type(expected), f"{name}: {written!r} vs {expected!r}"
            assert written == expected, f"{name}: documented {written!r}, code {expected!r}"
            checked += 1
        elif default_cell.startswith("required"):
            assert default is msgspec.NODEFAULT, f"{name}: documented required, code {default!r}"
        elif default_cell.startswith("unset"):
            assert default is None, f"{name}: documented unset, code {default!r}"
        elif name in _DESCRIBED_DEFAULTS:
            words, value = _DESCRIBED_DEFAULTS[name]
            assert default_cell.startswith(words), f"{name}: documented {default_cell!r}"
            assert default == value, f"{name}: code {default!r}"
        else:
            assert default is not msgspec.NODEFAULT, name
            assert not _is_scalar(default), f"{name}: write its default {default!r} as a literal"
    assert checked > 50


# Defaults too long to write as a literal, in the words the table uses.
_DESCRIBED_DEFAULTS = {
    "fallback.retry.retry_statuses": (
        "408, 409, 429 and 500-599",
        (408, 409, 429, *range(500, 600)),
    )
}


def _toml_blocks() -> list[str]:
    return _TOML_BLOCK.findall(DOC.read_text(encoding="utf-8"))


async def _build_and_close(config: GatewayConfig) -> None:
    gateway = Gateway(config)
    await gateway.aclose()


@pytest.mark.parametrize("index", range(len(_toml_blocks())))
def test_toml_examples_load_and_build_a_gateway(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a usage_file in the example is written
    path = tmp_path / "gateway.toml"
    path.write_text(_toml_blocks()[index], encoding="utf-8")
    config = load_config(path)
    asyncio.run(_build_and_close(config))


def test_python_examples_run() -> None:
    blocks = _PYTHON_BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert blocks, "the doc has no python example"
    for block in blocks:
        namespace: dict[str, Any] = {}
        exec(compile(block, str(DOC), "exec"), namespace)
        gateway = namespace["gateway"]
        assert isinstance(gateway, Gateway)
        asyncio.run(gateway.aclose())


def _uses(data: Any, parts: list[str]) -> bool:
    if not parts:
        return True
    if isinstance(data, list):
        return any(_uses(item, parts) for item in data)
    if not isinstance(data, dict):
        return False
    head, rest = parts[0], parts[1:]
    if head == "*":
        return any(_uses(value, rest) for value in data.values())
    return head in data and _uses(data[head], rest)


def test_complete_example_uses_every_table() -> None:
    blocks = _toml_blocks()
    assert blocks, "the doc has no toml example"
    example = tomllib.loads(blocks[-1])
    unused = [path for path in config_tables() if path and not _uses(example, path.split("."))]
    assert not unused, f"the complete example leaves out {unused}"


README = DOC.parent.parent / "README.md"


def test_the_readmes_own_auth_example_authenticates_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The example's key ("letmein") is the gateway's, never sent upstream: what Anthropic gets
    # must be the configured key, or every request of a host that copies it is a 401.
    from fastapi.testclient import TestClient

    from .servers import Reply, ScriptedUpstream, message_json, serve

    (block,) = [b for b in _PYTHON_BLOCK.findall(README.read_text("utf-8")) if "def my_auth" in b]
    upstream = ScriptedUpstream(default=Reply(body=message_json()))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-upstream")
    with serve(upstream) as url:
        # The one change: this upstream instead of api.anthropic.com.
        local = block.replace(
            "UpstreamConfig(api_key=", f"UpstreamConfig(base_url={url!r}, api_key="
        )
        assert local != block
        namespace: dict[str, Any] = {}
        exec(compile(local, str(README), "exec"), namespace)
        with TestClient(namespace["app"]) as client:
            body = {
                "model": "claude-sonnet-4-6",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
            }
            refused = client.post(
                "/anthropic/v1/messages", json=body, headers={"x-api-key": "nope"}
            )
            answered = client.post(
                "/anthropic/v1/messages", json=body, headers={"x-api-key": "letmein"}
            )
    assert refused.status_code == 401 and answered.status_code == 200
    (sent,) = upstream.received
    assert sent.headers.get("x-api-key") == "sk-upstream"
    assert "letmein" not in sent.headers.values()
