"""msgspec Structs for the Anthropic Messages API wire format.

Two families live here:

* **Typed wire structs** (``Message``, the content-block union, ``Usage``, the SSE events): what
  the gateway produces itself (the mock provider, translated responses) and the shapes it reads
  back. Content blocks and SSE events are tagged unions on ``type``.
* **Observation structs** (``ObservedEvent``, ``ObservedResponse``): the few fields the gateway
  reads out of upstream traffic (usage, ids, errors). Every other field is skipped, never
  rejected, so new upstream fields and event types pass through untouched.

Request validation lives in :mod:`messages_mw.validation`; it decodes only what the gateway
relies on. Nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

# What decoding untrusted JSON with msgspec can raise: malformed or invalid input, invalid
# UTF-8 inside a string (a UnicodeDecodeError, not a DecodeError) and nesting deeper than the
# interpreter's recursion limit. Catching fewer lets a client's bytes become a 500.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    msgspec.DecodeError,
    UnicodeDecodeError,
    RecursionError,
)

# What no HTTP header value may hold (RFC 9110): controls other than tab, DEL, and anything
# beyond latin-1. A value with one cannot be sent: a hook's or a config's must be refused
# where it is given, not fail every request as an unreachable upstream.
FORBIDDEN_IN_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")

__all__ = [
    "DECODE_ERRORS",
    "FORBIDDEN_IN_HEADER_VALUE",
    "CacheCreation",
    "CitationsDelta",
    "ContentBlock",
    "ContentBlockDeltaEvent",
    "ContentBlockStartEvent",
    "ContentBlockStopEvent",
    "CountTokensResponse",
    "Delta",
    "DocumentBlock",
    "ErrorDetail",
    "ErrorEvent",
    "ImageBlock",
    "InputJsonDelta",
    "Message",
    "MessageDelta",
    "MessageDeltaEvent",
    "MessageDeltaUsage",
    "MessageStartEvent",
    "MessageStopEvent",
    "ModelInfo",
    "ModelList",
    "ObservedEvent",
    "ObservedMessage",
    "ObservedResponse",
    "PingEvent",
    "RedactedThinkingBlock",
    "ServerToolUseBlock",
    "SignatureDelta",
    "StreamEvent",
    "TextBlock",
    "TextDelta",
    "ThinkingBlock",
    "ThinkingDelta",
    "ToolResultBlock",
    "ToolUseBlock",
    "Usage",
]


class CacheCreation(msgspec.Struct):
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class Usage(msgspec.Struct, omit_defaults=True):
    """Token usage. ``input_tokens`` excludes cached tokens, as Anthropic reports it; the two
    counts are always encoded, even when zero (the SDKs read them unconditionally)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None
    service_tier: str | None = None


class TextBlock(msgspec.Struct, tag="text", tag_field="type", omit_defaults=True):
    text: str
    citations: list[dict[str, Any]] | None = None
    cache_control: dict[str, Any] | None = None


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type"):
    thinking: str
    signature: str


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    data: str


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class ServerToolUseBlock(msgspec.Struct, tag="server_tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class ImageBlock(msgspec.Struct, tag="image", tag_field="type", omit_defaults=True):
    source: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class DocumentBlock(msgspec.Struct, tag="document", tag_field="type", omit_defaults=True):
    source: dict[str, Any]
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type", omit_defaults=True):
    tool_use_id: str
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None


ContentBlock = (
    TextBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ToolUseBlock
    | ServerToolUseBlock
    | ImageBlock
    | DocumentBlock
    | ToolResultBlock
)


class Message(msgspec.Struct, tag="message", tag_field="type"):
    """A complete assistant response (``stop_reason`` and ``stop_sequence`` always present)."""

    id: str
    role: Literal["assistant"]
    model: str
    content: list[ContentBlock]
    stop_reason: str | None
    stop_sequence: str | None
    usage: Usage


class CountTokensResponse(msgspec.Struct):
    input_tokens: int


class ModelInfo(msgspec.Struct, tag="model", tag_field="type"):
    id: str
    display_name: str
    created_at: str


class ModelList(msgspec.Struct):
    data: list[ModelInfo]
    has_more: bool
    first_id: str | None
    last_id: str | None


class TextDelta(msgspec.Struct, tag="text_delta", tag_field="type"):
    text: str


class InputJsonDelta(msgspec.Struct, tag="input_json_delta", tag_field="type"):
    partial_json: str


class ThinkingDelta(msgspec.Struct, tag="thinking_delta", tag_field="type"):
    thinking: str


class SignatureDelta(msgspec.Struct, tag="signature_delta", tag_field="type"):
    signature: str


class CitationsDelta(msgspec.Struct, tag="citations_delta", tag_field="type"):
    citation: dict[str, Any]


Delta = TextDelta | InputJsonDelta | ThinkingDelta | SignatureDelta | CitationsDelta


class MessageStartEvent(msgspec.Struct, tag="message_start", tag_field="type"):
    message: Message


class ContentBlockStartEvent(msgspec.Struct, tag="content_block_start", tag_field="type"):
    index: int
    content_block: ContentBlock


class ContentBlockDeltaEvent(msgspec.Struct, tag="content_block_delta", tag_field="type"):
    index: int
    delta: Delta


class ContentBlockStopEvent(msgspec.Struct, tag="content_block_stop", tag_field="type"):
    index: int


class MessageDelta(msgspec.Struct):
    stop_reason: str | None
    stop_sequence: str | None


class MessageDeltaUsage(msgspec.Struct, omit_defaults=True):
    output_tokens: int
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDeltaEvent(msgspec.Struct, tag="message_delta", tag_field="type"):
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(msgspec.Struct, tag="message_stop", tag_field="type"):
    pass


class PingEvent(msgspec.Struct, tag="ping", tag_field="type"):
    pass


class ErrorDetail(msgspec.Struct):
    type: str
    message: str


class ErrorEvent(msgspec.Struct, tag="error", tag_field="type"):
    error: ErrorDetail


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | PingEvent
    | ErrorEvent
)


class ObservedCacheCreation(msgspec.Struct):
    ephemeral_1h_input_tokens: int | None = None


class ObservedServerToolUse(msgspec.Struct):
    web_search_requests: int | None = None


class ObservedUsage(msgspec.Struct):
    """Usage as read from upstream traffic: every field optional, since ``message_delta``
    carries only the ones that changed and the SDKs overwrite field by field. Of the nested
    objects only what prices differently is read: 1-hour cache writes and web searches."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: ObservedCacheCreation | None = None
    server_tool_use: ObservedServerToolUse | None = None


class ObservedMessage(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    usage: ObservedUsage | None = None
    stop_reason: str | None = None


class ObservedError(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class ObservedEvent(msgspec.Struct):
    """The fields of an SSE event's ``data`` that the gateway reads; the rest are skipped."""

    type: str | None = None
    message: ObservedMessage | None = None
    usage: ObservedUsage | None = None
    delta: ObservedMessage | None = None
    error: ObservedError | None = None


class ObservedResponse(msgspec.Struct):
    """The fields of a non-streaming response body that the gateway reads."""

    id: str | None = None
    model: str | None = None
    usage: ObservedUsage | None = None
    stop_reason: str | None = None
    error: ObservedError | None = None
