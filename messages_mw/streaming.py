"""Server-Sent Events: framing, and an incremental observer for relayed streams.

The gateway relays upstream SSE bytes untouched, chunk by chunk. :class:`StreamObserver` reads
along without re-serialising anything: it finds event boundaries with ``bytes.find`` and decodes
only the few events whose fields the gateway needs (``message_start``, ``message_delta``,
``message_stop``, ``error``). Everything here is pure: no I/O, no clocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec

from .protocol import DECODE_ERRORS, ObservedEvent, ObservedResponse, ObservedUsage

__all__ = [
    "MAX_EVENT_BYTES",
    "StreamObserver",
    "TokenUsage",
    "frame_event",
    "merge_usage",
    "message_usage",
    "observed_usage",
]

_event_decoder = msgspec.json.Decoder(ObservedEvent)
_message_decoder = msgspec.json.Decoder(ObservedResponse)

# Events worth decoding; every other event (deltas, pings, unknown future events) is only
# scanned for its boundary, which is what keeps observation cheap on long streams. The name
# sits in the event's first bytes when its ``event:`` line comes first, as Anthropic sends it.
_INTERESTING = re.compile(rb"message_start|message_delta|message_stop|error")
_HEAD_BYTES = 48
# The first line that can name an event, past any ``id:``, ``retry:`` or comment lines (a
# line may end with CR alone, which ``^`` does not see).
_FIRST_NAMING_LINE = re.compile(rb"(?:^|(?<=\r))(?:event|data):", re.MULTILINE)
_EVENT_LINE_START = ord("e")
# A content-block event or a ping in Anthropic's framing, which is most of any stream: never
# interesting, as each event's first _HEAD_BYTES are fixed here. One event per match: in a
# delta of generated output (text, thinking, a tool call's input), group 1 is its payload,
# the content of one JSON string, which the upstream bills as output. Other events (starts
# and stops, signatures, citations, blocks that arrive whole such as server tool results)
# hold none. Only valid while events are LF-separated: then an event ends at its first
# blank line.
_SKIPPED_EVENT = re.compile(
    rb'event: content_block_(?:delta|start|stop)\ndata: \{"type":"content_block_'
    rb'(?:delta|start|stop)"(?:,"index":\d+,"delta":\{"type":"(?:text_delta","text|'
    rb'thinking_delta","thinking|input_json_delta","partial_json)":"([^\n]*)"\}\}\n\n'
    rb"|[^\n]*\n\n)"
    rb'|event: ping\ndata: \{"type": ?"ping"\}\n\n'
)
# Several of them in one call, for a chunk that holds several (an upstream that sent them
# faster than they were read); the payloads of the generated deltas among them are read
# later, event by event, and only if the stream ends without its output count (see
# StreamObserver._defer).
_SKIPPED_RUN = re.compile(
    rb'(?:event: content_block_(?:delta|start|stop)\ndata: \{"type":"content_block_'
    rb'(?:delta|start|stop)"[^\n]*\n\n|event: ping\ndata: \{"type": ?"ping"\}\n\n)+'
)
# The chunks kept for their runs, at most this many bytes per stream; past it, runs are read
# at once.
_DEFERRED_BYTES = 256 * 1024
# What one kept run costs besides its chunk (a tuple in a list), counted against that bound.
_DEFERRED_ENTRY_BYTES = 64
# Bytes of JSON-escaped output per token, for a stream cut short (the mock provider's rule;
# English prose and code run at about 4).
_BYTES_PER_TOKEN = 4
# The event separators SSE allows: a blank line, each line ending in LF, CRLF or CR on its
# own ("\n\r\n" is an LF line then a CRLF one). A lone CR is told from a CRLF's first half
# only by the byte after it, so one at the end of what has come so far waits for it. No two
# forms can start at one position, so the leftmost match is the earliest.
SSE_SEPARATOR = re.compile(rb"\n\n|\r\n\r\n|\r\r|\n\r\n|\n\r(?=[^\n])|\r\n\r(?=[^\n])")

# Whole comment lines, each ending in LF, CRLF or CR (one told from a CRLF's first half by the
# byte after it).
_LEADING_COMMENT_LINES = re.compile(rb"(?::[^\r\n]*(?:\r\n|\n|\r(?=[^\n])))+")


# The longest a single SSE event may grow while it is held back to be read or relayed whole.
# Anthropic's largest (a server tool's result block) are far smaller; an upstream that never
# ends an event must not grow the gateway's memory without end.
MAX_EVENT_BYTES = 16 * 1024 * 1024


def frame_event(name: str, data: bytes) -> bytes:
    """Frame one SSE event the way Anthropic does: ``event:`` line, one ``data:`` line."""
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class TokenUsage(msgspec.Struct, omit_defaults=True):
    """Token counts of one response, as the upstream reported them (0 where it did not).

    ``cache_creation_1h_input_tokens`` is the part of ``cache_creation_input_tokens`` written
    to the 1-hour cache (priced higher); ``web_search_requests`` counts server-side web
    searches (priced per search). ``output_tokens_estimated`` says the output count is the
    gateway's estimate (see :meth:`StreamObserver.settled_usage`).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    web_search_requests: int = 0
    # True when ``output_tokens`` is the gateway's estimate, not the upstream's count: a stream
    # that ended (the client left, the upstream broke off) before its final message_delta.
    output_tokens_estimated: bool = False


def merge_usage(usage: TokenUsage, observed: ObservedUsage | None) -> None:
    """Overwrite each field the upstream sent, keep the rest: the SDKs' accumulation rule
    (``message_delta`` usage is cumulative and may carry only some fields)."""
    if observed is None:
        return
    if observed.input_tokens is not None:
        usage.input_tokens = observed.input_tokens
    if observed.output_tokens is not None:
        usage.output_tokens = observed.output_tokens
    if observed.cache_creation_input_tokens is not None:
        usage.cache_creation_input_tokens = observed.cache_creation_input_tokens
    if observed.cache_read_input_tokens is not None:
        usage.cache_read_input_tokens = observed.cache_read_input_tokens
    cache_creation = observed.cache_creation
    if cache_creation is not None and cache_creation.ephemeral_1h_input_tokens is not None:
        usage.cache_creation_1h_input_tokens = cache_creation.ephemeral_1h_input_tokens
    tools = observed.server_tool_use
    if tools is not None and tools.web_search_requests is not None:
        usage.web_search_requests = tools.web_search_requests


def _split_event(block: bytes) -> tuple[bytes | None, bytes]:
    """Return the ``event:`` name and the joined ``data:`` payload of one event block."""
    name: bytes | None = None
    data: list[bytes] = []
    for line in block.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return name, b"\n".join(data)


def _is_interesting(data: bytes | bytearray, start: int, end: int) -> bool:
    """Whether the event in ``data[start:end]`` may be one the observer reads.

    With its ``event:`` line first only the line's start is searched. Other servers may put
    ``id:`` or ``retry:`` lines or comments first (protocol.md: parse and ignore them), or send
    no ``event:`` line, the type then being anywhere in the JSON: the event is searched from its
    first ``event:`` or ``data:`` line on, as far as needed.
    """
    if start < end and data[start] == _EVENT_LINE_START:
        return _INTERESTING.search(data, start, min(end, start + _HEAD_BYTES)) is not None
    first = _FIRST_NAMING_LINE.search(data, start, end)
    if first is None:
        return False
    head = first.start()
    if data[head] == _EVENT_LINE_START:
        return _INTERESTING.search(data, head, min(end, head + _HEAD_BYTES)) is not None
    return _INTERESTING.search(data, head, end) is not None


def _find_boundary(buffer: bytes | bytearray, start: int) -> tuple[int, int]:
    """Position and length of the earliest event separator, of any form, at or after
    ``start``. One regex search: a find per form would search to the buffer's end for a form
    the stream never uses, once per event (quadratic in a chunk of many events)."""
    found = SSE_SEPARATOR.search(buffer, start)
    return (-1, 0) if found is None else (found.start(), found.end() - found.start())


class StreamObserver:
    """Reads a relayed SSE stream for usage, ids, stop reason and errors.

    Call :meth:`feed` with every chunk, in order, as it is relayed. Malformed events are
    ignored: observation must never break a stream the client is receiving.
    """

    def __init__(self) -> None:
        self.usage = TokenUsage()
        self.message_id: str | None = None
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.saw_message_start = False
        self.saw_message_stop = False
        # Whether the stream ended where its client sees an end: at a message_stop or an
        # error event named on an ``event:`` line. The SDKs drop events without one.
        self._ended_for_client = False
        # Whether a message_delta reported output_tokens: the final count, once a stream ends.
        self.saw_final_output = False
        # The payload bytes of the generated-output deltas skipped unread, for settled_usage,
        # and the runs of such events not read yet: (chunk, start, end), and their bytes.
        self._generated_bytes = 0
        self._deferred: list[tuple[bytes, int, int]] = []
        self._deferred_bytes = 0
        # Events decoded (those the gateway reads); a test of whether a tail was one.
        self.events_read = 0
        self._buffer = bytearray()
        # Anthropic separates events with LF only; look for CR forms once a CR shows up.
        self._cr_seen = False

    @property
    def unfinished_bytes(self) -> int:
        """How many bytes fed so far belong to an event not yet complete (the tail); 0 when
        everything fed ended on a complete event."""
        return len(self._buffer)

    def take_leading_comments(self) -> int:
        """Drop the complete comment lines that start the unfinished tail and return their
        length. Keep-alives (``: ping``) that an upstream or a proxy sends on their own, with
        no blank line after them, may go to the client at once: a comment line can make
        nothing that follows it parse wrong."""
        found = _LEADING_COMMENT_LINES.match(self._buffer)
        if found is None:
            return 0
        del self._buffer[: found.end()]
        return found.end()

    @property
    def finished(self) -> bool:
        """True once the stream ended as the grammar requires, or with an ``error`` event,
        named as the SDKs need it (``event: message_stop``, ``event: error``)."""
        return self._ended_for_client

    def feed(self, chunk: bytes) -> None:
        """Observe the next relayed chunk; never raises for malformed stream content."""
        if not self._cr_seen:
            if b"\r" not in chunk:
                self._feed_lf(chunk)
                return
            self._cr_seen = True
        buffer = self._buffer
        # No separator ends before the tail already held: resume where one could straddle it.
        resume = max(0, len(buffer) - 3)
        buffer += chunk
        if _find_boundary(buffer, resume)[0] == -1:
            return
        start = 0
        while True:
            position, length = _find_boundary(buffer, start)
            if position == -1:
                break
            if _is_interesting(buffer, start, position):
                self._observe(bytes(buffer[start:position]))
            elif length == 2:
                # An LF-framed event in a stream that has shown a CR: counted as _feed_lf
                # counts it, so the estimate does not depend on where chunks split.
                self._generated_bytes += _payload_bytes(buffer, start, position + 2)
            start = position + length
        if start:
            del buffer[:start]

    def _feed_lf(self, chunk: bytes) -> None:
        # The common case, and what feed() does for "\n\n" alone, without copying a chunk that
        # starts on an event boundary into the buffer first.
        buffer = self._buffer
        if buffer:
            # A long event arrives in many chunks: look for its end only in the new bytes (and
            # the last one held), or every chunk would rescan it whole.
            resume = len(buffer) - 1
            buffer += chunk
            if buffer.find(b"\n\n", resume) == -1:
                return
            data: bytes | bytearray = buffer
        else:
            data = chunk
        skip = _SKIPPED_EVENT.match
        start = generated = 0
        size = len(data)
        while True:
            skipped = skip(data, start)
            if skipped is not None:
                payload_start, payload_end = skipped.span(1)  # (-1, -1): nothing generated
                generated += payload_end - payload_start
                start = skipped.end()
                if start == size:  # the usual chunk, paced by generation: ends on such an event
                    break
                skipped = _SKIPPED_RUN.match(data, start)
                if skipped is not None:
                    end = skipped.end()
                    self._defer(data, start, end)
                    start = end
                    if start == size:
                        break
            position = data.find(b"\n\n", start)
            if position == -1:
                break
            if _is_interesting(data, start, position):
                self._observe(bytes(data[start:position]))
            start = position + 2
        if generated:
            self._generated_bytes += generated
        if data is buffer:
            del buffer[:start]
        elif start < len(chunk):
            buffer += memoryview(chunk)[start:]

    def _defer(self, data: bytes | bytearray, start: int, end: int) -> None:
        """Keep the run ``data[start:end]`` to read its generated payloads only if they are
        ever needed (a stream that ends complete never needs them); a run in the observer's
        own buffer, which changes, or past the bound, is read now. The bound counts each
        chunk kept whole, as a kept run keeps its whole chunk alive."""
        if type(data) is not bytes or self._deferred_bytes > _DEFERRED_BYTES:
            self._generated_bytes += _payload_bytes(data, start, end)
            return
        deferred = self._deferred
        if not deferred or deferred[-1][0] is not data:
            self._deferred_bytes += len(data)
        deferred.append((data, start, end))
        self._deferred_bytes += _DEFERRED_ENTRY_BYTES
        if self._deferred_bytes > _DEFERRED_BYTES:
            self._read_deferred()

    def _read_deferred(self) -> None:
        for data, start, end in self._deferred:
            self._generated_bytes += _payload_bytes(data, start, end)
        self._deferred.clear()

    def settled_usage(self) -> TokenUsage:
        """:attr:`usage` once the stream is over, with the output estimated if it ended after
        ``message_start`` but before a ``message_delta`` reported the output tokens.

        The upstream bills what it generated until the stream stopped, while ``message_start``
        reports next to no output (1 token, as Anthropic sends it): taken as it stands, a
        client could read a whole answer, leave before its last events, and have next to no
        output counted against its token and spend limits. The estimate is the payload of the
        generated-output deltas relayed (text, thinking, tool input, as JSON-escaped bytes),
        about one token per 4 bytes, when that exceeds the reported count
        (``output_tokens_estimated`` then says so). Events in other framings than Anthropic's
        (CR or CRLF line ends, ``id:`` lines first, other key orders) are not counted.
        """
        usage = self.usage
        if self.saw_message_start and not self.saw_final_output:
            self._read_deferred()
            estimate = self._generated_bytes // _BYTES_PER_TOKEN
            if estimate > usage.output_tokens:
                usage.output_tokens, usage.output_tokens_estimated = estimate, True
        return usage

    def _observe(self, block: bytes) -> None:
        name, data = _split_event(block)
        try:
            event = _event_decoder.decode(data)
        except DECODE_ERRORS:
            return
        self.events_read += 1
        kind = name.decode("utf-8", "replace") if name else event.type
        if kind == "message_start" and event.message is not None:
            self.saw_message_start = True
            self.message_id = event.message.id
            self.model = event.message.model
            merge_usage(self.usage, event.message.usage)
        elif kind == "message_delta":
            merge_usage(self.usage, event.usage)
            if event.usage is not None and event.usage.output_tokens is not None:
                self.saw_final_output = True
            if event.delta is not None and event.delta.stop_reason is not None:
                self.stop_reason = event.delta.stop_reason
        elif kind == "message_stop":
            self.saw_message_stop = True
            self._ended_for_client = self._ended_for_client or name is not None
        elif kind == "error":
            self.error_type = (event.error and event.error.type) or "api_error"
            self.error_message = event.error.message if event.error else None
            self._ended_for_client = self._ended_for_client or name is not None


def _payload_bytes(data: bytes | bytearray, start: int, end: int) -> int:
    """The payload bytes of the generated-output deltas among the events in
    ``data[start:end]``, read as :meth:`StreamObserver._feed_lf` reads a lone event (so the
    count does not depend on how the events were chunked); stops at the first event that is
    not one it skips."""
    total = 0
    skip = _SKIPPED_EVENT.match
    while start < end and (skipped := skip(data, start, end)) is not None:
        payload_start, payload_end = skipped.span(1)
        total += payload_end - payload_start
        start = skipped.end()
    return total


def observed_usage(chunks: Iterable[bytes]) -> TokenUsage:
    """The usage a stream's ``chunks`` report, read as :class:`StreamObserver` reads it, and
    settled as if the stream ended there (:meth:`StreamObserver.settled_usage`)."""
    observer = StreamObserver()
    for chunk in chunks:
        observer.feed(chunk)
    return observer.settled_usage()


def message_usage(body: bytes) -> TokenUsage | None:
    """The usage a whole JSON message ``body`` reports; ``None`` if it reports none or is not
    a JSON object."""
    try:
        observed = _message_decoder.decode(body)
    except DECODE_ERRORS:
        return None
    if observed.usage is None:
        return None
    usage = TokenUsage()
    merge_usage(usage, observed.usage)
    return usage
