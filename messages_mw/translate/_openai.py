"""msgspec Structs for the OpenAI Chat Completions wire format.

Two families, as in :mod:`messages_mw.protocol`: the request we *produce* (fields left ``UNSET``
are not encoded at all, while ``None`` is encoded as ``null``), and the response and stream
chunks we *read*, where every field is optional and unknown fields are skipped, because
"OpenAI-compatible" servers differ in what they send.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "FileData",
    "FilePart",
    "FunctionCall",
    "FunctionDef",
    "ImagePart",
    "ImageUrl",
    "InBody",
    "InError",
    "InMessage",
    "InPart",
    "InToolCall",
    "InUsage",
    "JsonSchemaFormat",
    "NamedFunction",
    "NamedToolChoice",
    "Part",
    "ResponseFormat",
    "StreamOptions",
    "TextPart",
    "ToolCall",
    "ToolDef",
    "any_decoder",
    "body_decoder",
    "encoder",
]


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageUrl(msgspec.Struct):
    url: str


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: ImageUrl


class FileData(msgspec.Struct):
    filename: str
    file_data: str


class FilePart(msgspec.Struct, tag="file", tag_field="type"):
    file: FileData


Part = TextPart | ImagePart | FilePart


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, tag="function", tag_field="type"):
    id: str
    function: FunctionCall


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[Part] | None
    tool_calls: list[ToolCall] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET
    reasoning_content: str | UnsetType = UNSET


class FunctionDef(msgspec.Struct):
    name: str
    parameters: dict[str, Any]
    description: str | UnsetType = UNSET


class ToolDef(msgspec.Struct, tag="function", tag_field="type"):
    function: FunctionDef


class NamedFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct, tag="function", tag_field="type"):
    function: NamedFunction


class StreamOptions(msgspec.Struct):
    include_usage: bool


class JsonSchemaFormat(msgspec.Struct):
    name: str
    schema: dict[str, Any]


class ResponseFormat(msgspec.Struct, tag="json_schema", tag_field="type"):
    json_schema: JsonSchemaFormat


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[ChatMessage]
    max_tokens: int | UnsetType = UNSET
    max_completion_tokens: int | UnsetType = UNSET
    stream: bool | UnsetType = UNSET
    stream_options: StreamOptions | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    stop: list[str] | UnsetType = UNSET
    user: str | UnsetType = UNSET
    tools: list[ToolDef] | UnsetType = UNSET
    tool_choice: str | NamedToolChoice | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    reasoning_effort: str | UnsetType = UNSET
    response_format: ResponseFormat | UnsetType = UNSET


class InFunction(msgspec.Struct):
    name: str | None = None
    # A JSON string per the spec; a few servers send the object itself.
    arguments: str | dict[str, Any] | None = None


class InToolCall(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: InFunction | None = None


class InPart(msgspec.Struct):
    type: str = "text"
    text: str | None = None


class InMessage(msgspec.Struct):
    """``choices[].message`` of a response, and ``choices[].delta`` of a stream chunk."""

    # A string per the spec; a list of parts from a few servers (Mistral's reasoning models).
    content: str | list[InPart] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[InToolCall] | None = None

    @property
    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content

    @property
    def reasoning_text(self) -> str | None:
        # Some servers fill both names with the same text during their rename; read one.
        return self.reasoning_content if self.reasoning_content else self.reasoning


class InChoice(msgspec.Struct):
    index: int | None = 0  # null from some servers: the first choice, as absent
    message: InMessage | None = None
    delta: InMessage | None = None
    finish_reason: str | None = None
    # vLLM's: the stop string that ended the answer (a token id when a stop token did).
    stop_reason: str | int | None = None


class InPromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class InUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: InPromptDetails | None = None

    def empty(self) -> bool:
        """Whether it gives neither count (``"usage": {}``, or both null)."""
        return self.prompt_tokens is None and self.completion_tokens is None

    def fully_reported(self) -> bool:
        """Whether it gives both counts: what it leaves out is estimated."""
        return self.prompt_tokens is not None and self.completion_tokens is not None


class InError(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class InBody(msgspec.Struct):
    """A response body, a stream chunk or an error body: the fields any of them may carry.

    Error shapes seen in the wild: OpenAI's ``{"error": {...}}``, a bare string under
    ``error``, vLLM's top-level ``{"object": "error", "message", "type", "code"}``, and
    FastAPI's ``{"detail": ...}``.
    """

    choices: list[InChoice] | None = None
    usage: InUsage | None = None
    model: str | None = None
    error: InError | str | None = None
    object: str | None = None
    message: str | None = None
    type: str | None = None
    code: str | int | None = None
    detail: Any = None

    def first_choice(self) -> InChoice | None:
        for choice in self.choices or ():
            if not choice.index:  # 0, or null
                return choice
        return None

    def error_detail(self) -> InError | None:
        if isinstance(self.error, InError):
            return self.error
        if isinstance(self.error, str):
            return InError(message=self.error)
        if self.object == "error":
            return InError(message=self.message, type=self.type, code=self.code)
        return None


encoder = msgspec.json.Encoder()
body_decoder = msgspec.json.Decoder(InBody)
any_decoder = msgspec.json.Decoder()
