"""One tool-output text rewritten: the agent's frame split off, the output inside it compressed.

Agents wrap a shell command's output in a frame of their own: Claude Code starts a failing run
with ``Exit code 1``; Codex starts every run with ``Exit code: 0``, ``Wall time: 0.4 seconds``
(and ``Total output lines: N`` when it cut the output) and ``Output:``, or sends a JSON object
``{"output": ..., "metadata": {"exit_code": 0, "duration_seconds": 1.2}}``. The frame is kept as
it is and only the output inside is compressed, so that a command filter sees the command's own
lines; the output is also what deduplication compares, since the wall time differs on every run.

:func:`rewrite_text` is a pure function of the text's JSON and of its :class:`Rule`, which is
why its result can be memoised (:mod:`.memo`).
"""

from __future__ import annotations

import re

import msgspec
from msgspec import Raw

from ..protocol import DECODE_ERRORS
from .text import TextOptions, compress_tool_text

__all__ = ["EMPTY_MARKER", "Frame", "Rewrite", "Rule", "rewrite_text", "split_frame"]

EMPTY_MARKER = "[messages_mw: output removed by compression]"
_TOOL_USE_ERROR = "<tool_use_error>"
_REMINDER_OPEN = "<system-reminder>"

# A wall time is printable ASCII but for quotes and backslashes, so that it reads the same in JSON.
_FRAME_RE = re.compile(
    r"Exit code:? -?\d+\n(?:Wall time: [ !#-\[\]-~]{0,64}\n)?(?:Total output lines: \d+\n)?"
    r"(?:Output:\n)?"
)
_JSON_FRAME_KEYS = frozenset({"output", "metadata"})
_string = msgspec.json.Decoder(str)
_object = msgspec.json.Decoder(dict[str, Raw])
_encoder = msgspec.json.Encoder()


class Rule:
    """How to rewrite a text: ``options`` ``None`` keeps its output exactly (file contents);
    ``command`` picks a command filter; ``framed`` looks for a shell frame; ``pasted`` is a user's
    text, left alone when it starts with a ``<system-reminder>``.

    Equal only to itself, so that a memo key holding it hashes and compares at C speed; a memo
    keeps one instance per distinct :attr:`fields` (see ``CompressionMemo.same_rule``).
    """

    __slots__ = ("command", "framed", "options", "pasted")

    def __init__(
        self,
        options: TextOptions | None,
        command: str | None = None,
        *,
        framed: bool = False,
        pasted: bool = False,
    ) -> None:
        self.options = options
        self.command = command
        self.framed = framed
        self.pasted = pasted

    @property
    def fields(self) -> tuple[TextOptions | None, str | None, bool, bool]:
        """Everything the rule says: rules with equal fields rewrite alike."""
        return (self.options, self.command, self.framed, self.pasted)

    def __repr__(self) -> str:
        return f"Rule{self.fields!r}"


class Frame(msgspec.Struct, frozen=True):
    """The agent's text around a command's output; ``quoted`` when the output sits in it as a
    JSON string (Codex's JSON form) rather than as plain text."""

    head: str
    tail: str = ""
    quoted: bool = False

    def wrap(self, output: str) -> str:
        """The framed text for ``output``."""
        inner = _encoder.encode(output).decode() if self.quoted else output
        return f"{self.head}{inner}{self.tail}"


class Rewrite(msgspec.Struct, frozen=True):
    """What one text becomes: ``json`` its new JSON string (``None``: keep it as it came);
    ``output`` the JSON of the compressed output inside its ``frame`` (the whole text when there
    is none), which deduplication compares; ``verbatim`` for agent errors, which are never
    replaced by a reference."""

    json: Raw | None
    output: Raw
    frame: Frame | None = None
    verbatim: bool = False

    def size(self, raw: Raw) -> int:
        """Bytes held besides ``raw``, the text it was made from (shared buffers count once)."""
        held = len(self.frame.head) + len(self.frame.tail) if self.frame is not None else 0
        if self.output is not raw:
            held += len(self.output)
        if self.json is not None and self.frame is not None:  # else it wraps ``output``
            held += len(self.json)
        return held


def split_frame(text: str) -> tuple[Frame | None, str]:
    """The shell frame around ``text``'s output and the output, or ``(None, text)``."""
    if text.startswith("Exit code"):
        match = _FRAME_RE.match(text)
        if match is not None:
            return Frame(match.group()), text[match.end() :]
    elif text.startswith('{"output"'):
        return _split_json_frame(text)
    return None, text


def _split_json_frame(text: str) -> tuple[Frame | None, str]:
    """Codex's ``{"output": ..., "metadata": {...}}``, re-encoded compactly around the output."""
    try:
        fields = _object.decode(text)
        output = _string.decode(fields["output"]) if fields.keys() >= _JSON_FRAME_KEYS else None
    except (msgspec.DecodeError, UnicodeError):
        return None, text
    if output is None:
        return None, text
    keys = list(fields)
    where = keys.index("output")
    head = [b"%s:%s" % (_encoder.encode(key), fields[key]) for key in keys[:where]]
    tail = [b"%s:%s" % (_encoder.encode(key), fields[key]) for key in keys[where + 1 :]]
    opening = b"{" + b"".join(part + b"," for part in head) + b'"output":'
    closing = b"".join(b"," + part for part in tail) + b"}"
    return Frame(opening.decode(), closing.decode(), quoted=True), output


def rewrite_text(raw: Raw, rule: Rule) -> Rewrite:
    """The rewrite of the JSON string ``raw`` under ``rule``; pure, and raises nothing. The
    result may hold ``raw`` itself (as its ``output`` when the text stays as it is)."""
    if rule.options is None and rule.framed:
        exact = _exact_in_frame(raw)
        if exact is not None:
            return exact
    text = _as_str(raw)
    if text is None or (rule.pasted and text.lstrip().startswith(_REMINDER_OPEN)):
        return Rewrite(None, raw)
    verbatim = _TOOL_USE_ERROR in text
    frame, output = split_frame(text) if rule.framed else (None, text)
    new = output if rule.options is None else shrink(output, rule.options, rule.command)
    if frame is None:
        if new is output:
            return Rewrite(None, raw, verbatim=verbatim)
        encoded = Raw(_encoder.encode(new))
        return Rewrite(encoded, encoded, verbatim=verbatim)
    output_json = _encoder.encode(new)
    if new is output:
        return Rewrite(None, Raw(output_json), frame, verbatim)
    framed = _framed_json(frame, new, output_json)
    shorter = Raw(framed) if len(framed) < len(raw) else None
    return Rewrite(shorter, Raw(output_json), frame, verbatim)


def _framed_json(frame: Frame, output: str, encoded: bytes) -> bytes:
    """The JSON of ``frame.wrap(output)``, given ``output``'s JSON ``encoded``. A JSON string
    escapes each character on its own, so a plain frame's JSON is its head's and the output's
    spliced; a quoted frame holds the output's JSON, which is escaped again."""
    if frame.quoted or frame.tail:
        return _encoder.encode(frame.wrap(output))
    return _encoder.encode(frame.head)[:-1] + memoryview(encoded)[1:]


# The same frame as it reads in JSON, at the start of the string: only its newlines escaped.
_RAW_FRAME_RE = re.compile(
    rb'"Exit code:? -?\d+\\n(?:Wall time: [ !#-\[\]-~]{0,64}\\n)?(?:Total output lines: \d+\\n)?'
    rb"(?:Output:\\n)?"
)


def _exact_in_frame(raw: Raw) -> Rewrite | None:
    """For output kept exactly, the frame found in the JSON itself, without decoding the text:
    the output's JSON is the rest of the string. ``None`` when that is not plain to see."""
    data = bytes(raw)
    match = _RAW_FRAME_RE.match(data)
    if match is None or b"<tool_use_error>" in data or b"\\u003c" in data:
        return None
    head = _as_str(Raw(match.group() + b'"'))
    output = Raw(b'"' + data[match.end() :])
    return None if head is None else Rewrite(None, output, Frame(head))


def shrink(text: str, options: TextOptions, command: str | None) -> str:
    """``text`` compressed, or ``text`` itself when that saves nothing; never empty or blank
    (the API rejects empty text blocks): a blank result is the omission marker, or ``text``
    itself when that is blank too or no longer than the marker."""
    new = compress_tool_text(text, options, command)
    if len(new) >= len(text):
        return text
    if not new.strip():
        return EMPTY_MARKER if len(EMPTY_MARKER) < len(text) and text.strip() else text
    return new


def _as_str(raw: Raw) -> str | None:
    try:
        return _string.decode(raw)
    except DECODE_ERRORS:
        return None
