"""Streamed tool calls -> sequential ``tool_use`` blocks with live ``input_json_delta``s.

Chat Completions identifies each streamed call by ``index`` and may, in principle, interleave
the argument fragments of parallel calls; Anthropic blocks are strictly sequential. A call's
block starts as soon as its name is known and its fragments are forwarded as they arrive.
When a new call shows up while the open call's arguments are not yet a complete JSON object,
the new call waits (its fragments buffered) until the open one completes, then it starts and
its buffer is flushed; it is never the other way round, so nothing is held to the end unless
the upstream really interleaves. A fragment for a call whose block was already closed can
only be whitespace after a complete object (dropped): text that arrives while a call's
arguments are incomplete waits for them (see :meth:`ToolStreams.open_incomplete`).
Arguments that do not open a JSON object (malformed, or a list) are held to the block's end
and sent as ``{"_raw": "<the text>"}``, as a whole answer gives them: the SDKs fail on tool
input that is not an object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import DECODE_ERRORS, InputJsonDelta, ToolUseBlock
from ._blocks import BlockWriter
from ._mapping import RAW_ARGUMENTS_KEY, arguments_text, tool_id
from ._openai import InToolCall, any_decoder, encoder

__all__ = ["ToolStreams"]


@dataclass(slots=True)
class _Call:
    key: int
    id: str | None = None
    name: str | None = None
    parts: list[str] = field(default_factory=list)
    length: int = 0  # of the parts together
    sent: int = 0
    started: bool = False
    closed: bool = False
    # Set once a piece was surely the arguments so far resent: the server does that.
    resends: bool = False

    def complete(self) -> bool:
        text = "".join(self.parts).rstrip()
        if not text.endswith("}"):
            return False
        try:
            any_decoder.decode(text)
        except DECODE_ERRORS:
            return False
        return True

    def add(self, fragment: str) -> None:
        """Add an arguments fragment, less what the call already has: some servers resend
        the arguments so far with every piece (DeepSeek, Qianfan), or all of them once more
        at the end (GLM), which appended would make the client's JSON invalid."""
        # Only a piece as long as everything so far, or one opening an object, can be a
        # resend: cheap tests first, as real pieces are a few characters each.
        resend = len(fragment) >= self.length or fragment.lstrip().startswith("{")
        if self.parts and resend:
            if self.complete():
                if _is_json(fragment):
                    return  # the whole arguments again: appended, the JSON would be broken
            elif len(fragment) >= self.length:
                so_far = "".join(self.parts)
                if fragment.startswith(so_far) and self._resent(so_far, fragment):
                    self.resends = True
                    fragment = fragment[len(so_far) :]
        if fragment:
            self.parts.append(fragment)
            self.length += len(fragment)

    def _resent(self, so_far: str, fragment: str) -> bool:
        """Whether ``fragment``, which starts with everything so far, resends it. Only after
        ':' or '[' may a real piece open an object that starts with everything so far
        ({"a":{"a":1}}, cut after the first ':'); that would take the same key nested in
        itself and a cut at exactly that point, while servers that resend cut there all the
        time. So there it is taken for a resend from a server seen resending, or when it is
        whole arguments by itself."""
        if not so_far.rstrip().endswith((":", "[")):
            return True
        return self.resends or _is_json(fragment)


def _other_arguments(known: _Call, delta: InToolCall) -> bool:
    """Whether ``delta`` brings whole arguments unlike those ``known`` has completed: a second
    call to the same function, from a server that sends neither index nor id (or numbers
    every call 0). The same arguments again are a resend of the call (GLM's, at the end)."""
    if delta.function is None:
        return False
    fragment = arguments_text(delta.function.arguments)
    if not fragment.lstrip().startswith("{") or not known.complete():
        return False
    try:
        arguments = any_decoder.decode(fragment)
    except DECODE_ERRORS:
        return False
    return bool(arguments != any_decoder.decode("".join(known.parts)))


def _is_json(text: str) -> bool:
    try:
        any_decoder.decode(text)
    except DECODE_ERRORS:
        return False
    return True


class ToolStreams:
    """The tool calls of one streamed message; writes their blocks through ``blocks``."""

    def __init__(self, blocks: BlockWriter, message_id: str) -> None:
        self._blocks = blocks
        self._message_id = message_id
        self._calls: dict[int, _Call] = {}
        self._keys: dict[int, int] = {}
        # Each id's call: a fragment naming an earlier call's id belongs to it, wherever the
        # server numbered it.
        self._by_id: dict[str, _Call] = {}
        self._queue: list[_Call] = []
        self._open: _Call | None = None

    @property
    def has_calls(self) -> bool:
        return bool(self._calls)

    def open_incomplete(self) -> bool:
        """Whether a call's block is open and its arguments are not yet complete JSON."""
        call = self._open
        return call is not None and not call.closed and not call.complete()

    def feed(self, delta: InToolCall) -> None:
        call = self._call_for(delta)
        if not call.id and delta.id:
            call.id = delta.id
            self._by_id.setdefault(delta.id, call)
        fragment = ""
        if delta.function is not None:
            call.name = call.name or delta.function.name or None
            fragment = arguments_text(delta.function.arguments)
            if fragment:
                call.add(fragment)
        if call.closed:
            return
        if call.started:
            self._send(call)
            if self._queue and "}" in fragment and call.complete():
                self._close_and_advance(call)
        elif call.name and call not in self._queue:  # "" is no name yet (some send one)
            self._begin(call)

    def close_open(self) -> None:
        """Close the open call's block and play out the waiting ones (something else starts)."""
        if self._open is None:
            return
        self._close(self._open)
        while self._queue:
            call = self._queue.pop(0)
            self._start(call)
            self._close(call)

    def finish(self) -> None:
        """At the end of the message: close everything, and emit calls that never got a name."""
        self.close_open()
        for call in self._calls.values():
            if not call.started:
                self._start(call)
                self._close(call)

    def _call_for(self, delta: InToolCall) -> _Call:
        # A missing index is its own slot (-1). A new id at a known index is a new call: some
        # servers number every call 0. So is a new name, for servers that send neither index
        # nor id (a repeated name may be the same call resent, so only a different one counts).
        slot = -1 if delta.index is None else delta.index
        if delta.id and (named := self._by_id.get(delta.id)) is not None:
            # Servers that number every call 0 and interleave their fragments still name
            # each fragment's call by its id: a late one goes back to its own call.
            self._keys[slot] = named.key
            return named
        key = self._keys.get(slot)
        if key is not None:
            known = self._calls[key]
            name = delta.function.name if delta.function is not None else None
            new_id = delta.id and known.id and delta.id != known.id
            new_name = name and known.name and name != known.name
            if not (new_id or new_name or _other_arguments(known, delta)):
                return known
        key = self._keys[slot] = len(self._calls)
        call = self._calls[key] = _Call(key)
        return call

    def _begin(self, call: _Call) -> None:
        current = self._open
        if current is not None and not current.complete():
            self._queue.append(call)
            return
        if current is not None:
            self._close(current)
        self._start(call)
        self._open = call

    def _close_and_advance(self, call: _Call) -> None:
        self._close(call)
        waiting = self._queue.pop(0)
        self._start(waiting)
        self._open = waiting
        if self._queue and waiting.complete():
            self._close_and_advance(waiting)

    def _start(self, call: _Call) -> None:
        block_id = tool_id(call.id, self._message_id, call.key)
        self._blocks.start(ToolUseBlock(id=block_id, name=call.name or "", input={}))
        call.started = True
        self._send(call)

    def _send(self, call: _Call) -> None:
        if call.sent < len(call.parts):
            if call.sent == 0 and not "".join(call.parts).lstrip().startswith("{"):
                # Not (yet) an object: an SDK fails on input that parses as nothing else, so
                # it is held, and sent at the close as the JSON path gives it (tool_input).
                return
            self._blocks.delta(InputJsonDelta(partial_json="".join(call.parts[call.sent :])))
            call.sent = len(call.parts)

    def _close(self, call: _Call) -> None:
        if call.sent < len(call.parts):
            held = "".join(call.parts)
            if held.strip():
                raw = encoder.encode({RAW_ARGUMENTS_KEY: held}).decode()
                self._blocks.delta(InputJsonDelta(partial_json=raw))
            call.sent = len(call.parts)
        self._blocks.stop()
        call.closed = True
        if self._open is call:
            self._open = None
