"""The mock provider's replies: composing a deterministic message and framing it as SSE.

Everything here is a pure function of a :class:`ReplyPlan`, so the same request always gives the
same bytes. Output "tokens" are whitespace-delimited words of text and thinking, and one per four
characters of tool input JSON; ``max_tokens`` and ``stop_sequences`` are applied to that count the
way the real API applies them to model tokens.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import msgspec

from ..protocol import (
    CacheCreation,
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    InputJsonDelta,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageStartEvent,
    MessageStopEvent,
    PingEvent,
    SignatureDelta,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    Usage,
)
from ..streaming import frame_event

__all__ = [
    "PING_CHUNK",
    "PacedChunk",
    "ReplyPlan",
    "compose_message",
    "encode_message",
    "sse_chunks",
]

_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")
_WORDS_PER_DELTA = 3
_JSON_CHARS_PER_DELTA = 16

_encoder = msgspec.json.Encoder()

PacedChunk = tuple[int, bytes]
"""One SSE event and the output tokens it carries (the pacing weight before it is sent)."""


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """What the mock would say if nothing stopped it, and the request's limits.

    ``thinking`` None means no thinking block; ``show_thinking`` False sends the block with empty
    text (``display: "omitted"``) while its words still count as output tokens.
    """

    message_id: str
    model: str
    input_tokens: int
    max_tokens: int
    stop_sequences: tuple[str, ...]
    text: str
    thinking: str | None = None
    show_thinking: bool = True
    signature: str = ""
    tool: ToolUseBlock | None = None


def _words(text: str) -> list[str]:
    """Split into words that keep their trailing whitespace, so joining gives ``text`` back."""
    return [piece for piece in _WORD_BOUNDARY.split(text) if piece]


def _tool_input_tokens(block: ToolUseBlock) -> int:
    """Output tokens a tool call costs: one per four characters of its input JSON."""
    return max(1, math.ceil(len(_encoder.encode(block.input)) / 4))


def _cut_at_stop_sequence(text: str, stop_sequences: tuple[str, ...]) -> tuple[str, str | None]:
    """Return the text before the earliest stop sequence, and that sequence (or None)."""
    best: tuple[int, str] | None = None
    for sequence in stop_sequences:
        position = text.find(sequence) if sequence else -1
        if position >= 0 and (best is None or position < best[0]):
            best = (position, sequence)
    if best is None:
        return text, None
    return text[: best[0]], best[1]


class _Composer:
    """Spends the ``max_tokens`` budget block by block, in generation order."""

    def __init__(self, plan: ReplyPlan) -> None:
        self.plan = plan
        self.budget = plan.max_tokens
        self.content: list[ContentBlock] = []
        self.stop_reason = "end_turn"
        self.stop_sequence: str | None = None

    def spend(self, words: list[str]) -> tuple[str, bool]:
        """Take as many words as the budget allows; True when the budget ran out first."""
        taken = words[: self.budget]
        self.budget -= len(taken)
        if len(taken) < len(words):
            self.stop_reason = "max_tokens"
            return "".join(taken), True
        return "".join(taken), False

    def add_thinking(self, thinking: str) -> bool:
        text, truncated = self.spend(_words(thinking))
        shown = text if self.plan.show_thinking else ""
        self.content.append(ThinkingBlock(thinking=shown, signature=self.plan.signature))
        return not truncated

    def add_text(self) -> None:
        text, sequence = _cut_at_stop_sequence(self.plan.text, self.plan.stop_sequences)
        text, truncated = self.spend(_words(text))
        if not truncated and sequence is not None:
            self.stop_reason, self.stop_sequence = "stop_sequence", sequence
        if text:
            self.content.append(TextBlock(text=text))

    def add_tool(self, tool: ToolUseBlock) -> None:
        cost = _tool_input_tokens(tool)
        if cost > self.budget:
            self.budget, self.stop_reason = 0, "max_tokens"
            return
        self.budget -= cost
        self.content.append(tool)
        self.stop_reason = "tool_use"


def compose_message(plan: ReplyPlan) -> Message:
    """Build the complete reply, honouring ``max_tokens`` (0 gives empty content) and stop
    sequences (which apply to text only, and are not included in it)."""
    composer = _Composer(plan)
    if plan.max_tokens == 0:
        composer.stop_reason = "max_tokens"
    elif plan.thinking is None or composer.add_thinking(plan.thinking):
        if plan.tool is not None:
            composer.add_tool(plan.tool)
        else:
            composer.add_text()
    usage = Usage(
        input_tokens=plan.input_tokens,
        output_tokens=plan.max_tokens - composer.budget,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=0,
        cache_creation=CacheCreation(),
        service_tier="standard",
    )
    return Message(
        id=plan.message_id,
        role="assistant",
        model=plan.model,
        content=composer.content,
        stop_reason=composer.stop_reason,
        stop_sequence=composer.stop_sequence,
        usage=usage,
    )


def encode_message(message: Message) -> bytes:
    """The non-streaming response body."""
    return _encoder.encode(message)


def _frame(event: StreamEvent) -> bytes:
    name = type(event).__struct_config__.tag
    assert isinstance(name, str)  # every StreamEvent is tagged with its SSE event name
    return frame_event(name, _encoder.encode(event))


PING_CHUNK = _frame(PingEvent())


def _delta(index: int, delta: TextDelta | ThinkingDelta | SignatureDelta | InputJsonDelta) -> bytes:
    return _frame(ContentBlockDeltaEvent(index=index, delta=delta))


def _text_deltas(index: int, text: str, *, thinking: bool) -> list[PacedChunk]:
    words = _words(text)
    chunks: list[PacedChunk] = []
    for start in range(0, len(words), _WORDS_PER_DELTA):
        group = words[start : start + _WORDS_PER_DELTA]
        piece = "".join(group)
        delta = ThinkingDelta(thinking=piece) if thinking else TextDelta(text=piece)
        chunks.append((len(group), _delta(index, delta)))
    return chunks


def _tool_deltas(index: int, block: ToolUseBlock) -> list[PacedChunk]:
    # Like the API: an empty first fragment, then fragments that split anywhere, even in strings.
    text = _encoder.encode(block.input).decode()
    chunks: list[PacedChunk] = [(0, _delta(index, InputJsonDelta(partial_json="")))]
    for start in range(0, len(text), _JSON_CHARS_PER_DELTA):
        piece = text[start : start + _JSON_CHARS_PER_DELTA]
        chunks.append(
            (math.ceil(len(piece) / 4), _delta(index, InputJsonDelta(partial_json=piece)))
        )
    return chunks


def _block_chunks(index: int, block: ContentBlock, hidden_tokens: int) -> list[PacedChunk]:
    """Start, deltas and stop for one block; ``hidden_tokens`` is omitted thinking's weight."""
    if isinstance(block, ThinkingBlock):
        start: ContentBlock = ThinkingBlock(thinking="", signature="")
        deltas = _text_deltas(index, block.thinking, thinking=True)
        deltas.append((hidden_tokens, _delta(index, SignatureDelta(signature=block.signature))))
    elif isinstance(block, TextBlock):
        start, deltas = TextBlock(text=""), _text_deltas(index, block.text, thinking=False)
    elif isinstance(block, ToolUseBlock):
        start, deltas = (
            ToolUseBlock(id=block.id, name=block.name, input={}),
            _tool_deltas(index, block),
        )
    else:
        start, deltas = block, []
    opening = (0, _frame(ContentBlockStartEvent(index=index, content_block=start)))
    return [opening, *deltas, (0, _frame(ContentBlockStopEvent(index=index)))]


def _hidden_thinking_tokens(message: Message) -> int:
    """Output tokens no delta carries: thinking sent with empty text (display "omitted")."""
    visible = 0
    for block in message.content:
        if isinstance(block, ThinkingBlock):
            visible += len(_words(block.thinking))
        elif isinstance(block, TextBlock):
            visible += len(_words(block.text))
        elif isinstance(block, ToolUseBlock):
            visible += _tool_input_tokens(block)
    return max(0, message.usage.output_tokens - visible)


def sse_chunks(message: Message) -> list[PacedChunk]:
    """Frame ``message`` as the exact Anthropic event sequence, one event per chunk:
    message_start, ping, each block's start/deltas/stop, message_delta, message_stop."""
    usage = message.usage
    start_usage = msgspec.structs.replace(usage, output_tokens=1)
    opening = msgspec.structs.replace(
        message, content=[], stop_reason=None, stop_sequence=None, usage=start_usage
    )
    chunks: list[PacedChunk] = [(0, _frame(MessageStartEvent(message=opening))), (0, PING_CHUNK)]
    hidden = _hidden_thinking_tokens(message)
    for index, block in enumerate(message.content):
        chunks += _block_chunks(index, block, hidden)
    final_usage = MessageDeltaUsage(
        output_tokens=usage.output_tokens,
        input_tokens=usage.input_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
    )
    delta = MessageDelta(stop_reason=message.stop_reason, stop_sequence=message.stop_sequence)
    chunks.append((0, _frame(MessageDeltaEvent(delta=delta, usage=final_usage))))
    chunks.append((0, _frame(MessageStopEvent())))
    return chunks
