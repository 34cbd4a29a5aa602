"""The parts of an Anthropic Messages request the translator reads, as typed Structs.

Content blocks are a tagged union on ``type``: a block of a type not listed here (server tool
blocks, MCP blocks, container uploads, next month's blocks) fails decoding, and the translator
answers it with a 400 naming the block, since a Chat Completions upstream cannot receive it.
Unknown *fields* are skipped (``cache_control``, ``citations``, ``caller``, …): none of them has
a Chat Completions equivalent.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from ..errors import InvalidRequestError, UnsupportedByProviderError
from ..protocol import DECODE_ERRORS
from ..validation import describe_decode_error

__all__ = [
    "Block",
    "Document",
    "Image",
    "Message",
    "Metadata",
    "OutputConfig",
    "OutputFormat",
    "RedactedThinkingBlock",
    "Request",
    "SearchResult",
    "Source",
    "Text",
    "Thinking",
    "ThinkingBlock",
    "Tool",
    "ToolChoice",
    "ToolResult",
    "ToolUse",
    "decode_request",
]


class Text(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class Source(msgspec.Struct):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    content: str | list[Block] | None = None


class Image(msgspec.Struct, tag="image", tag_field="type"):
    source: Source


class Document(msgspec.Struct, tag="document", tag_field="type"):
    source: Source
    title: str | None = None
    context: str | None = None


class SearchResult(msgspec.Struct, tag="search_result", tag_field="type"):
    source: str
    title: str
    content: list[Text]


class ToolUse(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResult(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[Block] | None = None
    is_error: bool | None = None


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type"):
    # Read only for upstreams that want their reasoning back (quirks.reasoning_history).
    thinking: str = ""


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    pass


Block = (
    Text
    | Image
    | Document
    | SearchResult
    | ToolUse
    | ToolResult
    | ThinkingBlock
    | RedactedThinkingBlock
)


class Message(msgspec.Struct):
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class Tool(msgspec.Struct):
    name: str
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(msgspec.Struct):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(msgspec.Struct):
    type: str
    budget_tokens: int | None = None


class Metadata(msgspec.Struct):
    user_id: str | None = None


class OutputFormat(msgspec.Struct):
    type: str
    schema: dict[str, Any] | None = None


class OutputConfig(msgspec.Struct):
    effort: str | None = None
    format: OutputFormat | None = None


class Request(msgspec.Struct):
    max_tokens: int
    messages: list[Message]
    system: str | list[Block] | None = None
    metadata: Metadata | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None
    mcp_servers: list[Any] | None = None


_decoder = msgspec.json.Decoder(Request)
_UNKNOWN_TAG = re.compile(r"^(?P<path>.+)\.type: Invalid value '(?P<tag>.*)'$", re.DOTALL)


def decode_request(body: bytes) -> Request:
    """Decode a request body; raises :class:`InvalidRequestError` naming the offending field.

    A block of a type this translator cannot carry is named by its path, e.g.
    ``messages.3.content.0: content blocks of type 'server_tool_use' are not supported by
    this provider``.
    """
    try:
        return _decoder.decode(body)
    except DECODE_ERRORS as exc:
        text = describe_decode_error(exc, body)
        unknown = _UNKNOWN_TAG.match(text)
        if unknown:  # only content blocks are tagged unions here
            raise UnsupportedByProviderError(
                f"{unknown['path']}: content blocks of type '{unknown['tag']}' are not "
                "supported by this provider"
            ) from exc
        raise InvalidRequestError(text) from exc
