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
* a shell tool: the bundle's text rules with its command line, so a command-aware filter applies,
  to the output inside the agent's frame (``Exit code 1``, Codex's exit code and wall time), which
  is kept as it is (see :mod:`.rewrite`);
* any other tool, or an unknown id: the bundle's text rules without a command.

``is_error: true`` changes nothing: it marks the output of a command that failed, and the command
filters keep every error text, path and line number. Only the agent's own error marker
(``<tool_use_error>``) keeps a text verbatim, and such a text is never replaced by a reference.

Then a result whose compressed output equals an earlier one's (at least :data:`DEDUPE_MIN_BYTES`
of JSON) becomes a short reference to the earlier ``tool_use_id``, inside its own frame, so that
it keeps its own exit code. A rewrite is dropped when it would not be shorter, and a rewrite that
would leave no text keeps a short marker instead (the API rejects empty text blocks). Thinking
blocks and signatures, tool inputs, images, documents, unknown blocks, roles (``system`` messages
included), ``system``, ``tools`` and every unknown field are carried as the raw JSON they arrived
as.

A :class:`~.memo.CompressionMemo` shared between requests remembers each text's rewrite (a pure
function of the text and its rule), so the history an agent resends is not compressed again;
deduplication is decided per request.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Raw

from .alignment import add_cache_breakpoints
from .bundles import Bundle
from .memo import CompressionMemo
from .rewrite import EMPTY_MARKER, Frame, Rewrite, Rule, rewrite_text

__all__ = [
    "DEDUPE_MIN_BYTES",
    "EMPTY_MARKER",
    "PASTED_MIN_BYTES",
    "CompressionResult",
    "compress_request",
]

DEDUPE_MIN_BYTES = 512
PASTED_MIN_BYTES = 2048

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
    body: bytes,
    bundle: Bundle,
    *,
    align_cache: bool = False,
    memo: CompressionMemo | None = None,
) -> CompressionResult:
    """Compress the tool output in a Messages request body with ``bundle``'s rules.

    Called by the compression hook once per request, synchronously (callers run big bodies in a
    thread). It keeps no state between calls but what ``memo`` remembers, which never changes
    the result, only how fast it comes: share one memo between a gateway's requests (it is
    thread-safe), and a session's resent history costs a lookup instead of a compression.
    Returns ``body=None`` when nothing changed or the body cannot be understood, in which case
    the caller forwards the original bytes. With ``align_cache``, a body without any
    ``cache_control`` gets breakpoints on its tools and system prompt (see :mod:`.alignment`).
    Raises nothing for a JSON body.
    """
    started = time.perf_counter()
    walk = _Walk(bundle, memo)
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

    def __init__(self, bundle: Bundle, memo: CompressionMemo | None) -> None:
        self.bundle = bundle
        self.memo = memo
        if memo is None:
            pasted = bundle.pasted_text
            self.text_rule = Rule(bundle.text)
            self.pasted_rule = None if pasted is None else Rule(pasted, pasted=True)
        else:
            self.text_rule, self.pasted_rule = memo.rules(bundle)
        self.tool_uses: dict[str | None, dict[str, Raw]] = {}
        # Earlier results' compressed output by length, so that only equal-length ones compare.
        self.earlier: dict[int, list[tuple[Raw, _Result]]] = {}
        self.changed = False
        self.bytes_before = 0
        self.bytes_after = 0

    def message(self, message: dict[str, Any]) -> None:
        role, content = message.get("role"), message.get("content")
        if role == "assistant" and isinstance(content, list):
            for block in content:
                if block.get("type") == _TOOL_USE:
                    self.tool_uses[_as_str(block.get("id"))] = block
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

    def pasted_block(self, block: dict[str, Raw]) -> None:
        raw = block.get("text")
        if raw is not None and len(raw) >= PASTED_MIN_BYTES:
            pasted = self.pasted(raw)
            if pasted is not None:
                block["text"] = pasted

    def pasted(self, raw: Raw) -> Raw | None:
        """The compressed JSON of a user's large pasted text, or ``None`` to keep it."""
        if self.pasted_rule is None or len(raw) < PASTED_MIN_BYTES:
            return None
        rule = self.pasted_rule
        rewrite = rewrite_text(raw, rule) if self.memo is None else self.memo.rewrite(raw, rule)
        new = raw if rewrite.json is None else rewrite.json
        self.count(raw, new)
        return None if new is raw else new

    def tool_result(self, block: dict[str, Raw]) -> None:
        raw = block.get("content")
        if raw is None:
            return
        tool_use_id = _as_str(block.get("tool_use_id"))
        use = None if tool_use_id is None else self.tool_uses.get(tool_use_id)
        result = _Result(tool_use_id, use, self.rule(use))
        if memoryview(raw)[0] == _QUOTE:
            new = self.result_text(raw, result, tool_use_id, dedupe=tool_use_id is not None)
            if new is not raw:
                block["content"] = new
            return
        try:
            inner = _inner_blocks.decode(raw)
        except msgspec.DecodeError:
            return
        changed = False
        dedupe = len(inner) == 1 and tool_use_id is not None
        for index, item in enumerate(inner):
            text = item.get("text")
            if item.get("type") == _TEXT and text is not None and "citations" not in item:
                where = None if tool_use_id is None else (tool_use_id, index)
                new = self.result_text(text, result, where, dedupe=dedupe)
                if new is not text:
                    item["text"], changed = new, True
        if changed:
            block["content"] = Raw(_encoder.encode(inner))

    def rule(self, use: dict[str, Raw] | None) -> Rule | None:
        """How to rewrite the output of the ``tool_use`` block ``use``; ``None`` for a shell
        tool, whose command line decides (see :meth:`shell_rule`)."""
        bundle = self.bundle
        name = None if use is None else _as_str(use.get("name"))
        if name is None:
            return self.text_rule
        if name in bundle.file_read_tools:
            return _EXACT
        return None if name in bundle.shell_tools else self.text_rule

    def shell_rule(self, use: dict[str, Raw]) -> Rule:
        bundle = self.bundle
        name = _as_str(use.get("name")) or ""
        command = bundle.command(name, use.get("input", _NULL))
        if command is None:
            return self.text_rule
        options = None if bundle.reads_files(command) else bundle.text
        return Rule(options, command, framed=True)

    def rewrite(self, raw: Raw, result: _Result, where: Hashable) -> Rewrite:
        """One tool-result text rewritten; ``where`` names it for the memo (``None``: the text
        itself does)."""
        rule, use, memo = result.rule, result.use, self.memo
        if rule is None and use is not None:
            if memo is None or where is None:
                return rewrite_text(raw, self.shell_rule(use))
            call = (use.get("name", _NULL), use.get("input", _NULL))
            return memo.call_rewrite((self.bundle, where), call, raw, lambda: self.shell_rule(use))
        rule = rule or self.text_rule
        if memo is None:
            return rewrite_text(raw, rule)
        if where is None:
            return memo.rewrite(raw, rule)
        return memo.call_rewrite((rule, where), (), raw, lambda: rule)

    def result_text(self, raw: Raw, result: _Result, where: Hashable, *, dedupe: bool) -> Raw:
        """The final JSON string for one tool-result text (``raw`` itself when unchanged)."""
        if result.rule is not _EXACT:
            rewrite = self.rewrite(raw, result, where)
            new = raw if rewrite.json is None else rewrite.json
            if dedupe and len(rewrite.output) >= DEDUPE_MIN_BYTES and not rewrite.verbatim:
                new = self.deduplicate(new, rewrite.output, rewrite.frame, result)
        elif dedupe and len(raw) >= DEDUPE_MIN_BYTES:
            verbatim = memoryview(raw)[: len(_TOOL_USE_ERROR)] == _TOOL_USE_ERROR
            new = raw if verbatim else self.deduplicate(raw, raw, None, result)
        else:
            new = raw
        self.count(raw, new)
        return new

    def deduplicate(self, new: Raw, output: Raw, frame: Frame | None, result: _Result) -> Raw:
        """A reference to an earlier result with the same ``output``, or ``new`` after recording
        it. A framed result keeps its own ``frame`` (its exit code) around the reference."""
        same_length = self.earlier.get(len(output))
        if same_length is None:
            self.earlier[len(output)] = [(output, result)]
            return new
        for earlier_output, earlier in same_length:
            if earlier_output == output:
                text = self.reference(earlier, "output identical" if frame else "identical")
                reference = Raw(_encoder.encode(frame.wrap(text) if frame else text))
                return reference if len(reference) < len(new) else new
        same_length.append((output, result))
        return new

    def reference(self, earlier: _Result, what: str) -> str:
        where = f"the tool result of {earlier.tool_use_id} above"
        if earlier.use is not None:
            label = self.describe(earlier.use)
            where += f" ({label})" if label else ""
        return f"[messages_mw: {what} to {where}]"

    def describe(self, use: dict[str, Raw]) -> str:
        """A short label for a tool call (see :meth:`Bundle.describe`); ``""`` without a name."""
        name_raw, tool_input = use.get("name", _NULL), use.get("input", _NULL)

        def describe() -> str:
            name = _as_str(name_raw)
            return "" if name is None else self.bundle.describe(name, tool_input)

        if self.memo is None:
            return describe()
        return self.memo.label((self.bundle, bytes(name_raw), bytes(tool_input)), describe)

    def count(self, before: Raw, after: Raw) -> None:
        self.bytes_before += len(before)
        self.bytes_after += len(after)
        if after is not before:
            self.changed = True


class _Result(msgspec.Struct, frozen=True):
    """The tool call that produced one tool result, and the rule for its text."""

    tool_use_id: str | None
    use: dict[str, Raw] | None
    rule: Rule | None  # None: a shell call, whose command line decides


_EXACT = Rule(None)
_TOOL_USE_ERROR = b'"<tool_use_error>'


def _as_str(raw: Raw | None) -> str | None:
    if raw is None:
        return None
    try:
        return _string.decode(raw)
    except msgspec.DecodeError:
        return None
