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
* a search tool of the bundle (Claude Code's ``Grep``): the text rules as for ``rg``'s output,
  whose matches keep every line exactly;
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
deduplication is decided per request. It also keeps the session's messages with what they
became (:mod:`.history`), so that the messages a request shares with the previous one are found
by a byte comparison and copied, and only the new turn is walked.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Raw

from ..protocol import DECODE_ERRORS
from .alignment import add_cache_breakpoints
from .bundles import Bundle
from .history import Frame, History, Message, first_element
from .memo import CompressionMemo
from .rewrite import EMPTY_MARKER
from .walk import DEDUPE_MIN_BYTES, PASTED_MIN_CHARS, Walk

__all__ = [
    "DEDUPE_MIN_BYTES",
    "EMPTY_MARKER",
    "PASTED_MIN_CHARS",
    "CompressionResult",
    "compress_request",
]

_top = msgspec.json.Decoder(dict[str, Raw])
# The usual message shape, {role, content}, in one pass; anything else takes the general path.
_message = msgspec.json.Decoder(dict[str, str | list[dict[str, Raw]]])
_messages = msgspec.json.Decoder(list[dict[str, str | list[dict[str, Raw]]]])
_messages_general = msgspec.json.Decoder(list[dict[str, Raw]])
_elements = msgspec.json.Decoder(list[Raw])
_content = msgspec.json.Decoder(str | list[dict[str, Raw]])
_encoder = msgspec.json.Encoder()

# The start of ``messages`` that names a session's histories in the memo: long enough to tell
# most sessions apart, short enough to stay the same once a session has a few turns.
_HISTORY_KEY_BYTES = 1024
# The start of a body that names the frames in the memo that may fit it, and their key's kind.
_FRAME_KEY_BYTES = 256
_FRAME = "frame"
# The context_management edits that have Anthropic drop old tool results: clearing them
# (clear_tool_uses_20250919), and compaction (compact_20260112), after which the API drops
# every block before the compaction block the client sends back.
_DROPS_OLD_RESULTS = (b"clear_tool_uses", b"compact_")


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
    walk = Walk(bundle, memo)
    out: bytes | None = None
    framed = None
    if memo is not None:
        # Slices of the body become memo keys and the bytes that frames and histories keep.
        body = body if type(body) is bytes else bytes(body)
        framed = _walk_framed(body, walk, memo)
    if framed is not None:
        out = framed.output(body, walk.changed, align_cache=align_cache)
    elif (fields := _walk_decoded(body, walk, memo)) is not None:
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


def _walk_framed(body: bytes, walk: Walk, memo: CompressionMemo) -> _Framed | None:
    """``body``'s messages walked, when a frame in ``memo`` fits it; ``None`` (before the walk
    has begun) when none does."""
    for frame in memo.frames((_FRAME, body[:_FRAME_KEY_BYTES])):
        end = frame.array_end(body)
        if end is not None:
            messages = _walk_remembered(body, len(frame.head), end, walk, memo)
            return None if messages is None else _Framed(frame, messages, end)
    return None


class _Framed(msgspec.Struct, frozen=True):
    """A body that a frame fits, its messages array ending at ``end``, and its messages."""

    frame: Frame
    messages: tuple[bytes, ...]  # their JSON in the compressed body
    end: int

    def output(self, body: bytes, changed: bool, *, align_cache: bool) -> bytes | None:
        """The compressed body, as :func:`compress_request` encodes it; ``None`` when it is
        ``body``."""
        frame = self.frame
        if align_cache:
            fields = dict(frame.fields)  # alignment reads ``tools`` and ``system`` only
            if add_cache_breakpoints(fields, body) > 0:
                array = body[len(frame.head) : self.end]
                fields["messages"] = _joined(self.messages) if changed else Raw(array)
                return _encoder.encode(fields)
        return frame.wrap(self.messages) if changed else None


def _walk_decoded(body: bytes, walk: Walk, memo: CompressionMemo | None) -> dict[str, Any] | None:
    """The fields of ``body``, its messages walked, decoding all of it; ``None`` when it is not
    a JSON object. With a ``memo``, keeps the body's frame for the next request."""
    try:
        fields: dict[str, Any] = _top.decode(body)
    except DECODE_ERRORS:
        return None
    if _drops_old_results(fields):
        # Anthropic is to clear or drop old tool results: a repeated one must not become a
        # reference to one it drops, nor come from the memo's remembered messages, which may
        # hold some.
        # No frame is kept for such a body either, so none ever fits one (_walk_framed).
        walk.deduplicates = False
        memo = None
    raw = fields.get("messages")
    if memo is not None and raw is not None:
        array = bytes(raw)
        frame = Frame.around(body, array, fields)
        if frame is not None:
            memo.keep_frame((_FRAME, body[:_FRAME_KEY_BYTES]), frame)
        remembered = _walk_remembered(array, 0, len(array), walk, memo)
        if remembered is not None:
            if walk.changed:
                fields["messages"] = _joined(remembered)
            return fields
    messages = _decode_messages(raw)
    for message in messages:
        walk.message(message)
    if walk.changed:
        fields["messages"] = messages
    return fields


def _drops_old_results(fields: Mapping[str, Raw]) -> bool:
    """Whether the top-level fields ask Anthropic to clear or drop old tool results
    (``context_management``'s ``clear_tool_uses`` and ``compact`` edits). Read from that
    field alone, which an agent sends alike every turn: text in the messages could switch
    deduplication off at one turn and change what the earlier turns look like."""
    edits = fields.get("context_management")
    if edits is None:
        return False
    edits_bytes = bytes(edits)
    return any(edit in edits_bytes for edit in _DROPS_OLD_RESULTS)


def _joined(messages: tuple[bytes, ...]) -> Raw:
    """The JSON array of the messages' output, copied once."""
    parts = [b","] * (2 * len(messages) + 1)
    parts[0], parts[-1] = b"[", b"]"
    parts[1::2] = messages
    return Raw(b"".join(parts))


def _decode_messages(raw: Raw | None) -> list[dict[str, Any]]:
    if raw is None:
        return []
    try:
        return _messages.decode(raw)
    except DECODE_ERRORS:
        pass
    try:
        messages: list[dict[str, Any]] = _messages_general.decode(raw)
    except DECODE_ERRORS:
        return []
    for message in messages:
        for key in ("role", "content"):
            if key in message:
                try:
                    message[key] = _content.decode(message[key])
                except DECODE_ERRORS:
                    continue
    return messages


def _walk_remembered(
    data: bytes, at: int, end: int, walk: Walk, memo: CompressionMemo
) -> tuple[bytes, ...] | None:
    """Walk the ``messages`` array ``data[at:end]``, reusing the longest history in ``memo`` that
    it starts with, and keep the result as the session's history; the messages with their
    output, or ``None`` (before the walk has begun) when some message is not of the usual shape
    or the array is not JSON."""
    start = first_element(data, at)
    if start is None:
        return None
    key = (walk.bundle, data[at : at + _HISTORY_KEY_BYTES])
    best, count, position, comma, continued = None, 0, start, False, []
    for history in memo.histories(key):
        found, where, after_comma = history.match(data, start)
        if found:
            continued.append(history)
        if found > count:
            best, count, position, comma = history, found, where, after_comma
    # Not JSON (``[{},]``, ``[{} {}]``), unless the decoder says so: the general path decides.
    if count and comma == data.startswith(b"]", position):
        return None
    new = _decode_elements(data, position, end)
    if new is None:
        return None
    if best is not None:
        best.resume(walk, count)
        memo.hits += count
    canonical, elements = new
    fresh = [_walked(walk, raw, message, canonical) for raw, message in elements]
    if not fresh:
        return () if best is None else best.outs[:count]
    history = History.then(best, count, fresh, walk, (data, start, position), compact=canonical)
    # The histories it continues are of the same session, which will not send them again.
    memo.keep_history(key, history, continued)
    return history.outs


def _walked(walk: Walk, raw: bytes, message: dict[str, Any], canonical: bool) -> Message:
    """One new message walked, with what it becomes; ``canonical`` when ``raw`` is how the
    encoder writes ``message`` as decoded, which then changed only if a text was rewritten."""
    outputs, rewrites = len(walk.outputs), walk.rewrites
    walk.message(message)
    walk.mark()
    if canonical and walk.rewrites == rewrites:
        out = raw
    else:
        encoded = _encoder.encode(message)
        out = raw if encoded == raw else encoded
    return Message.of(raw, out, walk.outputs[outputs:])


def _decode_elements(
    data: bytes, position: int, end: int
) -> tuple[bool, list[tuple[bytes, dict[str, Any]]]] | None:
    """The messages from ``position`` on in the JSON array that ends at ``end`` in ``data``,
    each as its own bytes and as decoded from them, and whether those bytes are how the encoder
    writes it; ``None`` when one is not of the usual shape or the rest is not JSON."""
    rest = b"[" + data[position:end]
    try:
        messages = _messages.decode(rest)
    except DECODE_ERRORS:
        return None
    # Agents send compact JSON: then encoding each message gives its bytes, cheaper than
    # finding them by decoding the array a second time.
    raws = [_encoder.encode(message) for message in messages]
    joined = b",".join(raws)
    if rest.startswith(joined, 1) and rest.startswith(b"]", len(joined) + 1):
        return True, list(zip(raws, messages, strict=True))
    try:
        copies = [bytes(element) for element in _elements.decode(rest)]
        return False, [(copy, _message.decode(copy)) for copy in copies]
    except DECODE_ERRORS:
        return None
