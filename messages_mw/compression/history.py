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
Agents send compact JSON, so the remembered messages are kept joined by commas, as such an
array holds them, and one byte comparison finds them all; only the messages after the first
difference (or after whitespace between elements) are compared one at a time.

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
# What a history or a frame holds besides bytes, counted so that the memo's bound is the memory
# it keeps: measured once with tracemalloc (CPython 3.11, 64 bits). Per message: its slots and
# integers in ``bounds``, ``sizes``, ``outs`` and ``ends`` (a tuple of five integers, 240), and
# its output's header. Per tool call: its pair, id, block and the block's ``Raw`` values. Per
# output recorded for deduplication: its pair, call, id, ``Raw`` and place in the index. Per
# history: the struct, its tuples and its index.
_MESSAGE_OVERHEAD = 400
_USE_OVERHEAD = 700
_FIELD_OVERHEAD = 90
_OUTPUT_OVERHEAD = 400
_HISTORY_OVERHEAD = 1000
# Per frame: the struct, its bytes' headers and its fields' dictionary.
_FRAME_OVERHEAD = 600


class Message(msgspec.Struct, frozen=True):
    """One message a request added to its history: its JSON as the request sent it (``raw``,
    a JSON object), its JSON in that request's compressed body (``out``), and roughly the
    bytes it holds with the outputs it recorded (``size``; ``raw`` is counted by the history,
    which keeps it joined with the others, and so are its tool calls)."""

    raw: bytes
    out: bytes
    size: int

    @classmethod
    def of(cls, raw: bytes, out: bytes, outputs: Sequence[tuple[Raw, ToolCall]]) -> Message:
        size = len(out) + _MESSAGE_OVERHEAD
        if outputs:
            size += sum([len(output) for output, _ in outputs]) + _OUTPUT_OVERHEAD * len(outputs)
        return cls(raw, out, size)


class History(msgspec.Struct, frozen=True, eq=False):
    """The messages of one request, in order, and what walking them added to the walk's state:
    tool calls, outputs recorded for deduplication, and after each message how many of them
    there were and the byte counts (a :class:`~.walk.Walk`'s ``uses``, ``outputs`` and
    ``ends``), with an index of the outputs by length (see :meth:`.Walk.resume`).

    The messages' JSON is kept compactly joined, ``source[base:]`` holding them separated by
    commas (message ``k`` starts at ``bounds[k]`` from ``base``, and ``bounds[-1]`` is one past
    the end), so that a request that resends them is recognised by one byte comparison, not
    one per message. ``source`` is the request body itself when it held them so.

    Equal only to itself; a ``Struct``, not a dataclass, since one is made per request and a
    frozen dataclass is slow to make.
    """

    source: bytes
    base: int
    bounds: tuple[int, ...]
    outs: tuple[bytes, ...]
    uses: tuple[tuple[str | None, dict[str, Raw]], ...]
    outputs: tuple[tuple[Raw, ToolCall], ...]
    ends: tuple[End, ...]
    index: dict[int, tuple[int, ...]]
    # Before each message and after the last, the bytes held by the messages before it.
    sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        """Bytes held, roughly."""
        return len(self.source) + self.sizes[-1] + _HISTORY_OVERHEAD

    @classmethod
    def then(
        cls,
        earlier: History | None,
        count: int,
        fresh: Sequence[Message],
        walk: Walk,
        at: Place,
        *,
        compact: bool = False,
    ) -> History:
        """The history of ``earlier``'s first ``count`` messages, then ``fresh``, all of which
        ``walk`` has walked (or resumed after); ``at`` is where ``fresh`` begins in the
        request's ``messages`` array, and where that array's first element begins. ``compact``
        says the array is known to hold ``fresh`` there joined by commas (so that they need
        not be joined and compared again)."""
        bounds = [0] if earlier is None else list(earlier.bounds[: count + 1])
        sizes = [0] if earlier is None else list(earlier.sizes[: count + 1])
        raws = [message.raw for message in fresh]
        # What the walk recorded for these messages (tool calls, outputs) holds ``Raw`` values
        # decoded from the request: views that keep whole the buffer they were decoded from,
        # about these messages' bytes. Copying them out would cost a few per cent of a warm
        # request, so that buffer is counted instead, with the calls' objects, as held by the
        # first of the messages: a later history keeps it exactly when it keeps that message.
        held = sum(map(len, raws)) + len(raws)
        held += _USE_OVERHEAD * (len(walk.uses) - walk.ends[count][0])
        for message in fresh:
            bounds.append(bounds[-1] + len(message.raw) + 1)
            sizes.append(sizes[-1] + message.size + held)
            held = 0
        data, start, position = at
        if position == start + bounds[count] and (
            compact or data.startswith(b",".join(raws), position)
        ):
            # The request holds the messages compactly joined (see ``match``): keep it whole.
            source, base = data, start
        else:
            kept = b"" if earlier is None else earlier.joined(count, comma=True)
            source, base = b"".join([kept, b",".join(raws)]), 0
        outs = tuple([message.out for message in fresh])
        outs = outs if earlier is None else earlier.outs[:count] + outs
        uses, outputs, ends = tuple(walk.uses), tuple(walk.outputs), tuple(walk.ends)
        index = walk.output_index()
        return cls(source, base, tuple(bounds), outs, uses, outputs, ends, index, tuple(sizes))

    def joined(self, count: int, *, comma: bool = False) -> memoryview:
        """The first ``count`` messages' JSON, joined by commas (and one after them)."""
        end = self.base + self.bounds[count] - (0 if comma or not count else 1)
        return memoryview(self.source)[self.base : end]

    def resume(self, walk: Walk, count: int) -> None:
        """Bring a fresh ``walk`` to where walking the first ``count`` messages leads."""
        uses, outputs = self.ends[count][:2]
        stale = {len(output) for output, _ in self.outputs[outputs:]}
        walk.resume(
            self.uses[:uses], self.outputs[:outputs], self.ends[: count + 1], self.index, stale
        )

    def match(self, array: bytes, start: int) -> tuple[int, int, bool]:
        """How many of the remembered messages the JSON ``array`` starts with (its first
        element at ``start``), where what follows them starts, and whether a comma separates
        it from them. A decoder must read the rest: it is not JSON when a comma is followed by
        ``]`` or when anything but ``]`` follows without a comma."""
        count = self._count_compact(array, start)
        if not count:
            return self._match_each(array, start, 0, start)
        position, comma = _separator(array, start + self.bounds[count] - 1)
        if not comma:
            return count, position, comma
        return self._match_each(array, start, count, position)

    def _count_compact(self, array: bytes, start: int) -> int:
        """How many of the messages ``array`` holds from ``start`` on compactly joined, as
        they are in :attr:`source`. Agents change only the last messages (where they move
        their ``cache_control`` breakpoints), so those are tried first, each alone before all
        of them, then the count is bisected: each try is one byte comparison."""
        source, base, bounds = memoryview(self.source), self.base, self.bounds
        low, high = 0, len(bounds) - 1  # the count is in [low, high]
        for _ in range(_LAST_TRIES):
            if low == high:
                return low
            last = bounds[high - 1]  # where the last of ``high`` messages starts
            alone = source[base + last : base + bounds[high] - 1]
            if array.startswith(alone, start + last) and array.startswith(self.joined(high), start):
                return high
            high -= 1
        while low < high:
            middle = (low + high + 1) // 2
            if array.startswith(self.joined(middle), start):
                low = middle
            else:
                high = middle - 1
        return low

    def _match_each(
        self, array: bytes, start: int, count: int, position: int
    ) -> tuple[int, int, bool]:
        """:meth:`match` from message ``count`` on, found at ``position``, one message at a
        time: for arrays with whitespace between their elements."""
        source, base, bounds = memoryview(self.source), self.base, self.bounds
        comma = count > 0
        for index in range(count, len(bounds) - 1):
            raw = source[base + bounds[index] : base + bounds[index + 1] - 1]
            if not array.startswith(raw, position):
                break
            count += 1
            position, comma = _separator(array, position + len(raw))
            if not comma:
                break
        return count, position, comma


# Where a request's new messages start in its ``messages`` array: the request body (or the
# array), where the array's first element starts, and where the first new message starts.
Place = tuple[bytes, int, int]
# Messages at the end of a history tried one by one before bisecting (see ``_count_compact``).
_LAST_TRIES = 3


def _separator(array: bytes, position: int) -> tuple[int, bool]:
    """Where the element after ``position`` (the end of one) starts, and whether a comma
    comes first."""
    if array.startswith(b",{", position):  # compact JSON, the usual case
        return position + 1, True
    found = _BETWEEN.match(array, position)
    assert found is not None  # the pattern matches the empty string
    return found.end(), found.group(1) is not None


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
        at = only_place(body, array)
        if at < 0:
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
        """Bytes held, roughly: the body's bytes around the array, their fields (copies of
        about as many bytes) and their compact JSON, with the objects that hold them."""
        held = 2 * (len(self.head) + len(self.tail)) + len(self.json_head) + len(self.json_tail)
        return held + _FRAME_OVERHEAD + _FIELD_OVERHEAD * len(self.fields)

    def array_end(self, body: bytes) -> int | None:
        """Where the bytes between this frame's head and tail end in ``body``, when it has
        both and they may hold an array; a JSON array exactly when it decodes as one."""
        end = len(body) - len(self.tail)
        if end < len(self.head) + 2 or not body.startswith(self.head):
            return None
        if not body.endswith(self.tail) or not body.startswith(b"[", len(self.head)):
            return None
        return end

    def wrap(self, messages: Sequence[bytes]) -> bytes:
        """The compact JSON of the frame's fields with ``messages`` as the array's elements,
        as an encoder writes the fields: copied once (the fields too, which may be large)."""
        if not messages:
            return self.json_head + b"[]" + self.json_tail
        parts = [b","] * (2 * len(messages) + 3)
        parts[0], parts[1], parts[-2], parts[-1] = self.json_head, b"[", b"]", self.json_tail
        parts[2:-2:2] = messages
        return b"".join(parts)


def only_place(data: bytes, part: bytes) -> int:
    """Where ``part`` occurs in ``data`` when it occurs there once (overlaps count), else -1.

    Searching for a long ``part`` whole costs about as much per byte as decoding, so its first
    bytes are searched for and each place they occur is compared in full. Past a few such
    places (a body built to repeat them), the general search takes over, which bounds the
    comparing at a few times ``len(part)``.
    """
    probe = part[:_PROBE_BYTES]
    found, tries = -1, 0
    position = data.find(probe)
    while position >= 0:
        tries += 1
        if tries > _MAX_PROBE_TRIES:
            first = data.find(part)
            return first if first >= 0 and data.find(part, first + 1) < 0 else -1
        if data.startswith(part, position):
            if found >= 0:
                return -1
            found = position
        position = data.find(probe, position + 1)
    return found


_PROBE_BYTES = 64
_MAX_PROBE_TRIES = 8
_PLACEHOLDER = Raw(b"[]")
_encoder = msgspec.json.Encoder()
