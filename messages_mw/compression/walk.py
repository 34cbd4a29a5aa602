"""One request's walk over its messages, in order: what :func:`~.engine.compress_request` does
to each message, given only what earlier messages said (see :mod:`.engine` for the rules).

The walk records what each message adds to its state (tool calls, outputs for deduplication,
byte counts), so that :mod:`.history` can remember a message with its effect and replay it when
a later request of the session repeats it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import msgspec
from msgspec import Raw

from ..protocol import DECODE_ERRORS
from .bundles import Bundle
from .commands import MAX_COMMAND_CHARS
from .memo import CompressionMemo, bundle_rules
from .rewrite import Frame, Rewrite, Rule, rewrite_text

__all__ = ["DEDUPE_MIN_BYTES", "PASTED_MIN_CHARS", "End", "ToolCall", "Walk"]

DEDUPE_MIN_BYTES = 512
# Measured in characters of the text, whatever its JSON spelling: Claude Code sends one
# prompt as a text block while it carries the cache breakpoint and as a plain string after,
# and both must compress alike, or the next turn misses the cached prefix.
PASTED_MIN_CHARS = 2048

_inner_blocks = msgspec.json.Decoder(list[dict[str, Raw]])
_string = msgspec.json.Decoder(str)
_encoder = msgspec.json.Encoder()

_TOOL_RESULT = Raw(b'"tool_result"')
_TOOL_USE = Raw(b'"tool_use"')
_TEXT = Raw(b'"text"')
_QUOTE = ord('"')
_NULL = Raw(b"null")

# After a message: tool calls and outputs recorded so far, bytes before and after, rewrites.
End = tuple[int, int, int, int, int]


# Equal-length outputs compared one by one before they are indexed by hash (see Walk.by_hash).
_COMPARED_WITHOUT_HASHING = 8


class Walk:
    """The state of one request's walk: only what earlier messages said.

    Texts travel as their raw JSON and are decoded only when a rule may rewrite them, so file
    contents kept as they are cost a length check and, for deduplication, a byte comparison.
    """

    def __init__(self, bundle: Bundle, memo: CompressionMemo | None) -> None:
        self.bundle = bundle
        self.memo = memo
        # Whether a repeated tool result may become a reference to its earlier copy (not
        # where Anthropic is asked to clear old results: see the engine).
        self.deduplicates = True
        rules = bundle_rules(bundle) if memo is None else memo.rules(bundle)
        self.text_rule, self.search_rule, self.pasted_rule = rules
        self.tool_uses: dict[str | None, dict[str, Raw]] = {}
        # Each shell call's rule, by its tool_use block's id(): a result's every text block
        # uses it, and working it out means parsing the command line.
        self.shell_rules: dict[int, Rule] = {}
        # Where in :attr:`outputs` earlier results' compressed output is, by length, so that
        # only equal-length ones compare: those this walk recorded, and those it resumed after
        # (a history's index, shared, where only positions below ``resumed_outputs`` count).
        self.recorded: dict[int, list[int]] = {}
        # For a length many outputs share, the first position of each output by its hash:
        # comparing with every equal-length output was quadratic in a request of many. Built
        # once a length has recurred _COMPARED_WITHOUT_HASHING times, so that most outputs
        # are never hashed.
        self.by_hash: dict[int, dict[int, int]] = {}
        self.resumed: dict[int, tuple[int, ...]] = {}
        self.resumed_outputs = 0
        self.stale: set[int] = set()
        self.rewrites = 0
        self.bytes_before = 0
        self.bytes_after = 0
        # Everything the walk added, in order, and after each message how much of it there
        # was, for :mod:`.history` to remember and :meth:`resume` to start from.
        self.uses: list[tuple[str | None, dict[str, Raw]]] = []
        self.outputs: list[tuple[Raw, ToolCall]] = []
        self.ends: list[End] = [(0, 0, 0, 0, 0)]

    @property
    def changed(self) -> bool:
        """Whether any text was rewritten so far."""
        return self.rewrites > 0

    def mark(self) -> None:
        """Note the end of a message (for :attr:`ends`)."""
        end = (
            len(self.uses),
            len(self.outputs),
            self.bytes_before,
            self.bytes_after,
            self.rewrites,
        )
        self.ends.append(end)

    def resume(
        self,
        uses: Sequence[tuple[str | None, dict[str, Raw]]],
        outputs: Sequence[tuple[Raw, ToolCall]],
        ends: Sequence[End],
        index: dict[int, tuple[int, ...]],
        stale: set[int],
    ) -> None:
        """Start from the state that walking some messages led to, as :attr:`uses`,
        :attr:`outputs` and :attr:`ends` said after the last of them, without walking them.
        ``index`` is :meth:`output_index` of a walk whose outputs began with ``outputs``; its
        positions past them hold outputs of the lengths in ``stale``."""
        self.uses, self.outputs, self.ends = list(uses), list(outputs), list(ends)
        self.tool_uses.update(self.uses)
        self.resumed, self.resumed_outputs, self.stale = index, len(self.outputs), stale
        _, _, self.bytes_before, self.bytes_after, self.rewrites = self.ends[-1]

    def output_index(self) -> dict[int, tuple[int, ...]]:
        """Where each recorded output is in :attr:`outputs`, by length, in order, for a walk
        that resumes after them (see :meth:`resume`)."""
        index = dict(self.resumed)
        for length in self.stale:
            index[length] = tuple(p for p in index[length] if p < self.resumed_outputs)
        for length, positions in self.recorded.items():
            index[length] = (*index.get(length, ()), *positions)
        return index

    def message(self, message: dict[str, Any]) -> None:
        role, content = message.get("role"), message.get("content")
        if role == "assistant" and isinstance(content, list):
            for block in content:
                if block.get("type") == _TOOL_USE:
                    tool_use_id = _as_str(block.get("id"))
                    self.tool_uses[tool_use_id] = block
                    self.uses.append((tool_use_id, block))
        elif role == "user" and isinstance(content, list):
            for block in content:
                kind = block.get("type")
                if kind == _TOOL_RESULT:
                    self.tool_result(block)
                elif kind == _TEXT and "citations" not in block:
                    self.pasted_block(block)
        elif role == "user" and isinstance(content, str) and len(content) >= PASTED_MIN_CHARS:
            pasted = self.pasted(Raw(_encoder.encode(content)))
            if pasted is not None:
                message["content"] = pasted

    def pasted_block(self, block: dict[str, Raw]) -> None:
        raw = block.get("text")
        # Its JSON has at least a byte per character: a shorter one needs no decoding.
        if raw is not None and len(raw) >= PASTED_MIN_CHARS:
            text = _as_str(raw)
            if text is not None and len(text) >= PASTED_MIN_CHARS:
                pasted = self.pasted(raw)
                if pasted is not None:
                    block["text"] = pasted

    def pasted(self, raw: Raw) -> Raw | None:
        """The compressed JSON of a user's large pasted text (callers check its size), or
        ``None`` to keep it."""
        if self.pasted_rule is None:
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
        result = ToolCall(tool_use_id, use, self.rule(use))
        if memoryview(raw)[0] == _QUOTE:
            new = self.result_text(raw, result, tool_use_id, dedupe=tool_use_id is not None)
            if new is not raw:
                block["content"] = new
            return
        try:
            inner = _inner_blocks.decode(raw)
        except DECODE_ERRORS:
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
        if name in bundle.shell_tools:
            return None
        if name in bundle.search_tools:
            return self.search_rule
        return _EXACT if bundle.reads_files_by_name(name) else self.text_rule

    def shell_rule(self, use: dict[str, Raw]) -> Rule:
        """The rule for a shell call's output, which its command line decides; remembered by
        the memo for calls of a usual size, since agents rerun the same commands."""
        known = self.shell_rules.get(id(use))
        if known is not None:
            return known
        name_raw, tool_input = use.get("name", _NULL), use.get("input", _NULL)
        if self.memo is None or len(tool_input) > _CACHED_INPUT_BYTES:
            rule = self.command_rule(name_raw, tool_input)
        else:
            key = (self.bundle, bytes(name_raw), bytes(tool_input))
            rule = self.memo.shell_rule(key, lambda: self.command_rule(name_raw, tool_input))
        self.shell_rules[id(use)] = rule
        return rule

    def command_rule(self, name_raw: Raw, tool_input: Raw) -> Rule:
        bundle = self.bundle
        command = bundle.command(_as_str(name_raw) or "", tool_input)
        if command is None:
            return self.text_rule
        # The parser reads no further (MAX_COMMAND_CHARS); each of the call's outputs is
        # compressed with this line, so a longer one would only cost more per output.
        command = command[:MAX_COMMAND_CHARS]
        options = None if bundle.reads_files(command) else bundle.text
        return Rule(options, command, framed=True)

    def rewrite(self, raw: Raw, result: ToolCall, where: Hashable) -> Rewrite:
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

    def result_text(self, raw: Raw, result: ToolCall, where: Hashable, *, dedupe: bool) -> Raw:
        """The final JSON string for one tool-result text (``raw`` itself when unchanged)."""
        dedupe = dedupe and self.deduplicates
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

    def deduplicate(self, new: Raw, output: Raw, frame: Frame | None, result: ToolCall) -> Raw:
        """A reference to an earlier result with the same ``output``, or ``new`` after recording
        it. A framed result keeps its own ``frame`` (its exit code) around the reference."""
        earlier = self.earlier_same(output)
        if earlier is None:
            position = len(self.outputs)
            self.recorded.setdefault(len(output), []).append(position)
            hashed = self.by_hash.get(len(output))
            if hashed is not None:
                hashed.setdefault(hash(bytes(output)), position)
            self.outputs.append((output, result))
            return new
        text = self.reference(earlier, "output identical" if frame else "identical")
        reference = Raw(_encoder.encode(frame.wrap(text) if frame else text))
        return reference if len(reference) < len(new) else new

    def earlier_same(self, output: Raw) -> ToolCall | None:
        """The first earlier result whose compressed output is ``output``."""
        outputs, length = self.outputs, len(output)
        hashed = self.by_hash.get(length)
        if hashed is None:
            resumed = self.resumed.get(length, ())
            earlier = [p for p in resumed if p < self.resumed_outputs]
            earlier += self.recorded.get(length, ())
            if len(earlier) <= _COMPARED_WITHOUT_HASHING:
                # A file read twice: comparing costs less than hashing both.
                for position in earlier:
                    if outputs[position][0] == output:
                        return outputs[position][1]
                return None
            hashed = self.by_hash[length] = {}
            for position in earlier:  # in order: the first of equal outputs is kept
                hashed.setdefault(hash(bytes(outputs[position][0])), position)
        found = hashed.get(hash(bytes(output)))
        if found is not None and outputs[found][0] == output:
            return outputs[found][1]
        return None

    def reference(self, earlier: ToolCall, what: str) -> str:
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
            self.rewrites += 1


class ToolCall(msgspec.Struct, frozen=True):
    """The tool call that produced one tool result, and the rule for its text."""

    tool_use_id: str | None
    use: dict[str, Raw] | None
    rule: Rule | None  # None: a shell call, whose command line decides


_EXACT = Rule(None)
# Larger tool inputs (a script in a heredoc) are read again on each use rather than kept.
_CACHED_INPUT_BYTES = 1024
_TOOL_USE_ERROR = b'"<tool_use_error>'


def _as_str(raw: Raw | None) -> str | None:
    if raw is None:
        return None
    try:
        return _string.decode(raw)
    except DECODE_ERRORS:
        return None
