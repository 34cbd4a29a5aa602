"""Opt-in cache alignment: prompt-cache breakpoints for clients that never ask for caching.

Only a body with no ``cache_control`` anywhere (blocks, tools, system, or the top-level automatic
one) is touched, so a client that manages its own breakpoints keeps exactly its own. That is
read from the body's structure: the same bytes as a string value (a grep for them) are none. Two
breakpoints at most are added, on the prefixes every turn of a session repeats unchanged:

* the last tool definition (skipping ``defer_loading`` tools), when the tools' JSON is at least
  :data:`MIN_PREFIX_BYTES` (roughly the API's minimum cacheable prefix of 1,024 tokens);
* the last ``system`` block, when tools plus system reach that size; a string ``system`` becomes
  one text block, which the API renders identically. A block with empty text is never marked.

The API allows four breakpoints per request; with none present and two added at most, the limit
holds by construction, and :data:`MAX_BREAKPOINTS` bounds it anyway. The result depends only on
``tools`` and ``system``, so every turn of a session gets the same breakpoints.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import msgspec
from msgspec import Raw

from ..protocol import DECODE_ERRORS

__all__ = ["MAX_BREAKPOINTS", "MIN_PREFIX_BYTES", "add_cache_breakpoints"]

MAX_BREAKPOINTS = 4
MIN_PREFIX_BYTES = 4096

# Without these bytes, and without an escape that could spell them, no key is cache_control.
# With them, the body's structure decides: a string value "cache_control" (a grep for it, a
# file about caching) is no breakpoint, and must not switch alignment off from that turn on.
_CACHE_CONTROL_TOKEN = b'"cache_control"'
_ESCAPE = b"\\u"
_EPHEMERAL = Raw(b'{"type":"ephemeral"}')
_TEXT = Raw(b'"text"')
_TRUE = Raw(b"true")

_blocks = msgspec.json.Decoder(list[Raw])
_block = msgspec.json.Decoder(dict[str, Raw])
_messages = msgspec.json.Decoder(list[dict[str, Raw]])
_system = msgspec.json.Decoder(str | list[Raw])
_string = msgspec.json.Decoder(str)
_encoder = msgspec.json.Encoder()


def add_cache_breakpoints(fields: dict[str, Any], body: bytes) -> int:
    """Mark the tools and system prefixes of a body that has no breakpoint; return how many
    breakpoints were added (0, 1 or 2). ``fields`` is the body's top level as ``{name: Raw}``
    (``body`` its original bytes) and is edited in place. Raises nothing."""
    if (_CACHE_CONTROL_TOKEN in body or _ESCAPE in body) and _has_breakpoint(body):
        return 0
    added = 0
    tools = fields.get("tools")
    tools_size = len(tools) if isinstance(tools, Raw) else 0
    if isinstance(tools, Raw) and tools_size >= MIN_PREFIX_BYTES:
        marked = _mark_last_tool(tools)
        if marked is not None:
            fields["tools"] = marked
            added += 1
    system = fields.get("system")
    if (
        isinstance(system, Raw)
        and added < MAX_BREAKPOINTS
        and tools_size + len(system) >= MIN_PREFIX_BYTES
    ):
        marked = _mark_system(system)
        if marked is not None:
            fields["system"] = marked
            added += 1
    return added


def _has_breakpoint(body: bytes) -> bool:
    """Whether the client set a breakpoint in ``body`` (as it sent it; compression may have
    rewritten its messages since): the top-level automatic one, or ``cache_control`` on a
    tool, a system block, a message block or a block inside a tool result."""
    try:
        fields = _block.decode(body)
        if "cache_control" in fields:
            return True
        tools = fields.get("tools")
        if isinstance(tools, Raw) and _any_marked(_blocks.decode(tools)):
            return True
        system = fields.get("system")
        if isinstance(system, Raw):
            value = _system.decode(system)
            if isinstance(value, list) and _any_marked(value):
                return True
        messages = fields.get("messages")
        if isinstance(messages, Raw):
            for message in _messages.decode(messages):
                content = message.get("content")
                if _is_array(content) and _any_marked(_blocks.decode(content)):
                    return True
    except DECODE_ERRORS:
        return True  # cannot tell: leave the body as the client made it
    return False


def _any_marked(blocks: list[Raw]) -> bool:
    for raw in blocks:
        block = _block.decode(raw)
        if "cache_control" in block:
            return True
        inner = block.get("content")  # a tool result's own blocks
        if _is_array(inner) and _any_marked(_blocks.decode(inner)):
            return True
    return False


def _is_array(raw: Raw | None) -> TypeGuard[Raw]:
    return raw is not None and bytes(memoryview(raw)[:1]) == b"["


def _mark_last_tool(tools: Raw) -> Raw | None:
    try:
        items = _blocks.decode(tools)
        for index in range(len(items) - 1, -1, -1):
            tool = _block.decode(items[index])
            if "cache_control" in tool:
                # Spelled with an escape, the raw check for a marker missed it: the client
                # set one, so alignment must not touch the body.
                return None
            if tool.get("defer_loading") != _TRUE:
                tool["cache_control"] = _EPHEMERAL
                items[index] = Raw(_encoder.encode(tool))
                return Raw(_encoder.encode(items))
    except DECODE_ERRORS:
        return None
    return None


def _mark_system(system: Raw) -> Raw | None:
    try:
        value = _system.decode(system)
        if isinstance(value, str):
            if not value.strip():
                return None
            block = {"type": "text", "text": value, "cache_control": _EPHEMERAL}
            return Raw(_encoder.encode([block]))
        if not value:
            return None
        last = _block.decode(value[-1])
        if last.get("type") != _TEXT or not _string.decode(last.get("text", b'""')).strip():
            return None
        if "cache_control" in last:  # an escaped spelling the raw check missed
            return None
    except DECODE_ERRORS:
        return None
    last["cache_control"] = _EPHEMERAL
    value[-1] = Raw(_encoder.encode(last))
    return Raw(_encoder.encode(value))
