"""A session's history remembered whole: each request resends the previous one's messages.

An agent's request repeats, byte for byte, all messages of its previous request but the last
one or two (where it moves its ``cache_control`` breakpoints), then adds the new turn. What the
walk makes of a message depends only on the message and on the messages before it, so a message
found again at the same place, after the same messages, compresses to the same bytes and adds
the same state: :class:`History` keeps each message with that outcome, and a later request
that starts with the same messages reuses them instead of decoding, walking and re-encoding
them. Only the messages after the first difference are walked, the walk resumed from there.

A message is recognised by comparing bytes in place in the new request's ``messages`` array,
which costs no decoding: a JSON object is self-delimiting, so an array that holds the
remembered object's bytes at the place an element starts holds exactly that element there.

The rest of a body (model, system prompt, tools) is usually the same on every request of a
session too. A :class:`Frame` keeps the bytes before and after an earlier body's ``messages``
array with its decoded fields, so that a body with the same bytes around its array is not decoded
at all: only the array between them is read (and only past the remembered messages).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from msgspec import Raw

if TYPE_CHECKING:
    from .walk import End, ToolCall, Walk

__all__ = ["Frame", "History", "Message", "first_element"]

# Between two elements of an array (or before ``]``): whitespace, maybe a comma, whitespace.
_BETWEEN = re.compile(rb"[ \t\n\r]*(?:(,)[ \t\n\r]*)?")
_WHITESPACE = re.compile(rb"[ \t\n\r]*")
# Per message, besides its bytes: the objects and tuple slots that hold it and its effects.
_MESSAGE_OVERHEAD = 300


@dataclass(frozen=True, slots=True)
class Message:
    """One message as an earlier request sent it (``raw``, a JSON object), its JSON in that
    request's compressed body (``out``), and roughly the bytes it holds with what it added to
    the walk (``size``)."""

    raw: bytes
    out: bytes
    size: int

    @classmethod
    def of(cls, raw: bytes, out: bytes, outputs: Sequence[tuple[Raw, ToolCall]]) -> Message:
        size = len(raw) + _MESSAGE_OVERHEAD + (0 if out is raw else len(out))
        return cls(raw, out, size + sum(len(output) for output, _ in outputs))


@dataclass(frozen=True, slots=True)
class History:
    """The messages of one request, in order, and what walking them added to the walk's state:
    tool calls, outputs recorded for deduplication, and after each message how many of them
    there were and the byte counts (a :class:`~.walk.Walk`'s ``uses``, ``outputs`` and
    ``ends``)."""

    messages: tuple[Message, ...]
    raws: tuple[bytes, ...]
    uses: tuple[tuple[str | None, dict[str, Raw]], ...]
    outputs: tuple[tuple[Raw, ToolCall], ...]
    ends: tuple[End, ...]
    # Before each message and after the last, the bytes held by the messages before it.
    sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        """Bytes held, roughly."""
        return self.sizes[-1]

    @classmethod
    def then(
        cls, earlier: History | None, count: int, fresh: Sequence[Message], walk: Walk
    ) -> History:
        """The history of ``earlier``'s first ``count`` messages, then ``fresh``, all of which
        ``walk`` has walked (or resumed after)."""
        sizes = [0] if earlier is None else list(earlier.sizes[: count + 1])
        for message in fresh:
            sizes.append(sizes[-1] + message.size)
        messages = (*(() if earlier is None else earlier.messages[:count]), *fresh)
        raws = (*(() if earlier is None else earlier.raws[:count]), *(m.raw for m in fresh))
        uses, outputs, ends = tuple(walk.uses), tuple(walk.outputs), tuple(walk.ends)
        return cls(messages, raws, uses, outputs, ends, tuple(sizes))

    def resume(self, walk: Walk, count: int) -> None:
        """Bring a fresh ``walk`` to where walking the first ``count`` messages leads."""
        uses, outputs = self.ends[count][:2]
        walk.resume(self.uses[:uses], self.outputs[:outputs], self.ends[: count + 1])

    def match(self, array: bytes, start: int) -> tuple[int, int, bool]:
        """How many of the remembered messages the JSON ``array`` starts with (its first
        element at ``start``), where what follows them starts, and whether a comma separates
        it from them. A decoder must read the rest: it is not JSON when a comma is followed by
        ``]`` or when anything but ``]`` follows without a comma."""
        position, count, comma, starts = start, 0, False, array.startswith
        for raw in self.raws:
            if not starts(raw, position):
                break
            position += len(raw)
            count += 1
            if starts(b",{", position):  # compact JSON, the usual case
                position += 1
                comma = True
                continue
            found = _BETWEEN.match(array, position)
            assert found is not None  # the pattern matches the empty string
            position, comma = found.end(), found.group(1) is not None
            if not comma:
                break
        return count, position, comma


def first_element(data: bytes, at: int = 0) -> int | None:
    """Where the first element of the JSON array at ``at`` in ``data`` starts (or its ``]``);
    ``None`` when there is no array there."""
    if not data.startswith(b"[", at):
        return None
    found = _WHITESPACE.match(data, at + 1)
    assert found is not None
    return found.end()


@dataclass(frozen=True, slots=True)
class Frame:
    """What an earlier body held around its ``messages`` array: the bytes before (``head``) and
    after it (``tail``); its top-level fields, ``messages`` among them with a placeholder value
    so as to keep the keys' order; and their compact JSON before and after the array."""

    head: bytes
    tail: bytes
    fields: dict[str, Raw]
    json_head: bytes
    json_tail: bytes

    @classmethod
    def around(cls, body: bytes, array: bytes, fields: dict[str, Raw]) -> Frame | None:
        """The frame of ``body``, whose top-level ``fields`` hold ``messages`` as ``array``, or
        ``None`` when those bytes occur twice in it: the one occurrence of the array is the
        value that counts (the last ``messages`` key's), so bytes equal to ``head`` and ``tail``
        around any JSON value frame that value as the ``messages`` of the body they make."""
        at = body.find(array)
        if at < 0 or body.find(array, at + 1) >= 0:
            return None
        keys = list(fields)
        where = keys.index("messages")
        before = {key: fields[key] for key in keys[:where]}
        after = {key: fields[key] for key in keys[where + 1 :]}
        json_head = _encoder.encode(before)[:-1] + (b',"messages":' if before else b'"messages":')
        json_tail = b"," + _encoder.encode(after)[1:] if after else b"}"
        kept = {key: value.copy() for key, value in fields.items()}
        kept["messages"] = _PLACEHOLDER
        if json_head + b"[]" + json_tail != _encoder.encode(kept):
            return None  # not how the encoder writes it: never expected, but then no frame
        return cls(body[:at], body[at + len(array) :], kept, json_head, json_tail)

    @property
    def size(self) -> int:
        """Bytes held, roughly: the body's bytes around the array, and their fields twice."""
        return 2 * (len(self.head) + len(self.tail)) + len(self.json_head) + len(self.json_tail)

    def array_end(self, body: bytes) -> int | None:
        """Where the bytes between this frame's head and tail end in ``body``, when it has
        both and they may hold an array; a JSON array exactly when it decodes as one."""
        end = len(body) - len(self.tail)
        if end < len(self.head) + 2 or not body.startswith(self.head):
            return None
        if not body.endswith(self.tail) or not body.startswith(b"[", len(self.head)):
            return None
        return end

    def wrap(self, messages: list[bytes]) -> bytes:
        """The compact JSON of the frame's fields with ``messages`` as the array's elements,
        as an encoder writes the fields: copied once."""
        parts = [b","] * (2 * len(messages) + 1)
        parts[0], parts[-1] = self.json_head + b"[", b"]" + self.json_tail
        parts[1::2] = messages
        return b"".join(parts)


_PLACEHOLDER = Raw(b"[]")
_encoder = msgspec.json.Encoder()
