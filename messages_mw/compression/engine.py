"""Compress a Messages request's tool output without ever breaking prompt caching.

:func:`compress_request` walks ``messages`` in order and rewrites only text that tools produced
(``tool_result`` content) and large text blocks a user pasted. Every rewrite is a pure function of
the block and of what precedes it in the request: the tool call that produced a result, and the
results before it (for deduplication). Nothing depends on what follows, on a block's distance from
the end or on ``cache_control``, so when an agent resends turn N's request plus new turns, turn
N's part compresses to the same bytes again and its cache entry still matches.

What each ``tool_result`` gets, by the ``tool_use`` that produced it (found by id among earlier
assistant messages):

* a file-read tool of the bundle, an edit tool, or a shell command that only reads files
  (``cat``, ``sed -n``, ``nl``...): kept exactly, since later edits quote the text byte for byte;
* a shell tool: the bundle's text rules with its command line, so a command-aware filter applies;
* any other tool, or an unknown id: the bundle's text rules without a command;
* ``is_error: true``: kept verbatim but for the size cap (an error is what the agent must read;
  the agent's own ``<tool_use_error>`` texts are kept whole by the text rules), and never replaced
  by a reference, though a later identical result may refer to it.

Then a result identical to an earlier one (at least :data:`DEDUPE_MIN_BYTES` of JSON, compared
after compression) becomes a short reference to the earlier ``tool_use_id``. A rewrite is dropped
when it would not be shorter, and a rewrite that would leave no text keeps a short marker instead
(the API rejects empty text blocks). Thinking blocks and signatures, tool inputs, images, documents,
unknown blocks, roles (``system`` messages included), ``system``, ``tools`` and every unknown
field are carried as the raw JSON they arrived as.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Raw

from .alignment import add_cache_breakpoints
from .bundles import Bundle
from .text import TextOptions, compress_tool_text

__all__ = [
    "DEDUPE_MIN_BYTES",
    "EMPTY_MARKER",
    "PASTED_MIN_BYTES",
    "CompressionResult",
    "compress_request",
]

DEDUPE_MIN_BYTES = 512
PASTED_MIN_BYTES = 2048
EMPTY_MARKER = "[messages_mw: output removed by compression]"

_top = msgspec.json.Decoder(dict[str, Raw])
# The usual message shape, {role, content}, in one pass; anything else takes the general path.
_messages = msgspec.json.Decoder(list[dict[str, str | list[dict[str, Raw]]]])
_messages_general = msgspec.json.Decoder(list[dict[str, Raw]])
_content = msgspec.json.Decoder(str | list[dict[str, Raw]])
_inner_blocks = msgspec.json.Decoder(list[dict[str, Raw]])
_string = msgspec.json.Decoder(str)
_encoder = msgspec.json.Encoder()

_TOOL_RESULT = Raw(b'"tool_result"')
_TOOL_USE = Raw(b'"tool_use"')
_TEXT = Raw(b'"text"')
_TRUE = Raw(b"true")
_QUOTE = ord('"')
_NULL = Raw(b"null")


@dataclass(frozen=True, slots=True)
class CompressionResult:
    """What :func:`compress_request` did to one request body.

    ``tool_bytes_*`` count the JSON-encoded text of every ``tool_result`` (and of every
    user-pasted text block large enough to be considered), before and after, as it travels on
    the wire; ``tokens_saved`` estimates one token per 4 of those bytes saved, as the mock
    provider counts input tokens (whitespace dropped by re-encoding the body is not counted).
    """

    body: bytes | None
    bundle: str
    bytes_before: int
    bytes_after: int
    tool_bytes_before: int
    tool_bytes_after: int
    tokens_saved: int
    seconds: float


def compress_request(
    body: bytes, bundle: Bundle, *, align_cache: bool = False
) -> CompressionResult:
    """Compress the tool output in a Messages request body with ``bundle``'s rules.

    Called by the compression hook once per request, synchronously (callers run big bodies in a
    thread); it holds no state between calls. Returns ``body=None`` when nothing changed or the
    body cannot be understood, in which case the caller forwards the original bytes. With
    ``align_cache``, a body without any ``cache_control`` gets breakpoints on its tools and
    system prompt (see :mod:`.alignment`). Raises nothing for a JSON body.
    """
    started = time.perf_counter()
    walk = _Walk(bundle)
    out: bytes | None = None
    try:
        fields: dict[str, Any] = _top.decode(body)
    except msgspec.DecodeError:
        fields = {}
    else:
        messages = _decode_messages(fields.get("messages"))
        for message in messages:
            walk.message(message)
        if walk.changed:
            fields["messages"] = messages
        aligned = align_cache and add_cache_breakpoints(fields, body) > 0
        if walk.changed or aligned:
            out = _encoder.encode(fields)
    return CompressionResult(
        body=out,
        bundle=bundle.name,
        bytes_before=len(body),
        bytes_after=len(body) if out is None else len(out),
        tool_bytes_before=walk.bytes_before,
        tool_bytes_after=walk.bytes_after,
        tokens_saved=max(0, walk.bytes_before - walk.bytes_after) // 4,
        seconds=time.perf_counter() - started,
    )


def _decode_messages(raw: Raw | None) -> list[dict[str, Any]]:
    if raw is None:
        return []
    try:
        return _messages.decode(raw)
    except msgspec.DecodeError:
        pass
    try:
        messages: list[dict[str, Any]] = _messages_general.decode(raw)
    except msgspec.DecodeError:
        return []
    for message in messages:
        for key in ("role", "content"):
            if key in message:
                try:
                    message[key] = _content.decode(message[key])
                except msgspec.DecodeError:
                    continue
    return messages


class _Walk:
    """The state of one request's walk: only what earlier messages said.

    Texts travel as their raw JSON and are decoded only when a rule may rewrite them, so file
    contents kept as they are cost a length check and, for deduplication, a byte comparison.
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        options = bundle.text
        self.error_options = TextOptions(
            strip_ansi=False,
            collapse_progress=False,
            tidy_whitespace=False,
            collapse_repeats=False,
            minify_json=False,
            command_filters=False,
            cap_chars=options.cap_chars,
            head_lines=options.head_lines,
            tail_lines=options.tail_lines,
        )
        self.tool_uses: dict[str, tuple[str, Raw]] = {}
        # Earlier results' final JSON by length, so that only equal-length ones are compared.
        self.earlier: dict[int, list[tuple[Raw, _Result]]] = {}
        self.changed = False
        self.bytes_before = 0
        self.bytes_after = 0

    def message(self, message: dict[str, Any]) -> None:
        role, content = message.get("role"), message.get("content")
        if role == "assistant" and isinstance(content, list):
            for block in content:
                self.note_tool_use(block)
        elif role == "user" and isinstance(content, list):
            for block in content:
                kind = block.get("type")
                if kind == _TOOL_RESULT:
                    self.tool_result(block)
                elif kind == _TEXT and "citations" not in block:
                    self.pasted_block(block)
        elif role == "user" and isinstance(content, str) and len(content) >= PASTED_MIN_BYTES:
            pasted = self.pasted(Raw(_encoder.encode(content)))
            if pasted is not None:
                message["content"] = pasted

    def note_tool_use(self, block: dict[str, Raw]) -> None:
        if block.get("type") != _TOOL_USE:
            return
        tool_id, name = _as_str(block.get("id")), _as_str(block.get("name"))
        if tool_id is not None and name is not None:
            self.tool_uses[tool_id] = (name, block.get("input", _NULL))

    def pasted_block(self, block: dict[str, Raw]) -> None:
        raw = block.get("text")
        if raw is not None:
            pasted = self.pasted(raw)
            if pasted is not None:
                block["text"] = pasted

    def pasted(self, raw: Raw) -> Raw | None:
        """The compressed JSON of a user's large pasted text, or ``None`` to keep it."""
        options = self.bundle.pasted_text
        if options is None or len(raw) < PASTED_MIN_BYTES:
            return None
        text = _as_str(raw)
        if text is None or text.lstrip().startswith("<system-reminder>"):
            return None
        new = _rewrite(raw, text, options, None)
        self.count(raw, new)
        return None if new is raw else new

    def tool_result(self, block: dict[str, Raw]) -> None:
        raw = block.get("content")
        if raw is None:
            return
        tool_use_id = _as_str(block.get("tool_use_id"))
        origin = self.tool_uses.get(tool_use_id) if tool_use_id is not None else None
        is_error = block.get("is_error") == _TRUE
        options, command = self.rule(origin, is_error)
        result = _Result(tool_use_id, origin, options, command, is_error)
        if memoryview(raw)[0] == _QUOTE:
            new = self.result_text(raw, result, dedupe=True)
            if new is not raw:
                block["content"] = new
            return
        try:
            inner = _inner_blocks.decode(raw)
        except msgspec.DecodeError:
            return
        changed = False
        for item in inner:
            text = item.get("text")
            if item.get("type") == _TEXT and text is not None and "citations" not in item:
                new = self.result_text(text, result, dedupe=len(inner) == 1)
                if new is not text:
                    item["text"], changed = new, True
        if changed:
            block["content"] = Raw(_encoder.encode(inner))

    def rule(
        self, origin: tuple[str, Raw] | None, is_error: bool
    ) -> tuple[TextOptions | None, str | None]:
        """The text options for a result (``None``: keep it exactly) and its command line."""
        bundle = self.bundle
        if origin is None:
            return (self.error_options if is_error else bundle.text), None
        name, tool_input = origin
        if name in bundle.file_read_tools:
            return None, None
        command = bundle.command(name, tool_input)
        if command is not None and bundle.reads_files(command):
            return None, None
        if is_error:
            return self.error_options, None
        return bundle.text, command

    def result_text(self, raw: Raw, result: _Result, *, dedupe: bool) -> Raw:
        """The final JSON string for one tool-result text (``raw`` itself when unchanged)."""
        new = raw
        if result.options is not None:
            text = _as_str(raw)
            if text is not None:
                new = _rewrite(raw, text, result.options, result.command)
        if dedupe and len(new) >= DEDUPE_MIN_BYTES and result.tool_use_id is not None:
            new = self.deduplicate(new, result)
        self.count(raw, new)
        return new

    def deduplicate(self, raw: Raw, result: _Result) -> Raw:
        """A reference to an earlier identical result, or ``raw`` after recording it."""
        same_length = self.earlier.setdefault(len(raw), [])
        for earlier_raw, earlier in same_length:
            if earlier_raw == raw:
                if result.is_error:
                    return raw
                reference = Raw(_encoder.encode(self.reference(earlier)))
                return reference if len(reference) < len(raw) else raw
        same_length.append((raw, result))
        return raw

    def reference(self, earlier: _Result) -> str:
        where = f"the tool result of {earlier.tool_use_id} above"
        if earlier.origin is not None:
            where += f" ({self.bundle.describe(*earlier.origin)})"
        return f"[messages_mw: identical to {where}]"

    def count(self, before: Raw, after: Raw) -> None:
        self.bytes_before += len(before)
        self.bytes_after += len(after)
        if after is not before:
            self.changed = True


class _Result(msgspec.Struct, frozen=True):
    """What produced one tool result, and the rule that applies to its text."""

    tool_use_id: str | None
    origin: tuple[str, Raw] | None
    options: TextOptions | None
    command: str | None
    is_error: bool


def _rewrite(raw: Raw, text: str, options: TextOptions, command: str | None) -> Raw:
    """The JSON of ``text`` compressed, or ``raw`` when that saves nothing; never blank."""
    new = compress_tool_text(text, options, command)
    if len(new) >= len(text):
        return raw
    if not new.strip() and text.strip():
        if len(EMPTY_MARKER) >= len(text):
            return raw
        new = EMPTY_MARKER
    return Raw(_encoder.encode(new))


def _as_str(raw: Raw | None) -> str | None:
    if raw is None:
        return None
    try:
        return _string.decode(raw)
    except msgspec.DecodeError:
        return None
