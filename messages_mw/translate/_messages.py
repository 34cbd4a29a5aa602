"""Anthropic ``system`` and ``messages`` -> Chat Completions ``messages``.

Turn by turn: an assistant turn becomes one assistant message (text joined, ``tool_use`` blocks
as ``tool_calls``, thinking dropped); a user turn becomes its ``tool_result`` blocks as ``tool``
messages, in order, then one user message with everything else; a ``role: "system"`` message
stays a system message where it is. Images and PDFs inside a ``tool_result`` (a ``tool``
message holds text only) go into that user message after the user's own blocks, each group
introduced by a text part naming its ``tool_use_id``. Text parts of one message are joined
with a blank line so that text-only content is a plain string, the one form every compatible
server accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from msgspec import UNSET

from ..errors import InvalidRequestError, UnsupportedByProviderError
from ._anthropic import (
    Block,
    Document,
    Image,
    Message,
    RedactedThinkingBlock,
    Request,
    SearchResult,
    Text,
    ThinkingBlock,
    ToolResult,
    ToolUse,
)
from ._openai import (
    ChatMessage,
    FileData,
    FilePart,
    FunctionCall,
    ImagePart,
    ImageUrl,
    Part,
    TextPart,
    ToolCall,
    encoder,
)
from .quirks import OpenAIQuirks

__all__ = ["SEPARATOR", "attachments_label", "convert_messages"]

SEPARATOR = "\n\n"
_DROPPED = (ThinkingBlock, RedactedThinkingBlock)


def attachments_label(tool_use_id: str) -> str:
    """The text that introduces a tool result's images or PDFs in the following user message."""
    return f"Attachments from tool result {tool_use_id}:"


@dataclass(slots=True)
class _Turn:
    role: str
    parts: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str = ""
    reasoning: list[str] = field(default_factory=list)


def convert_messages(request: Request, quirks: OpenAIQuirks) -> list[ChatMessage]:
    """All Chat Completions messages for ``request``; raises ``InvalidRequestError``."""
    turns: list[_Turn] = []
    if request.system is not None:
        _append(turns, _Turn("system", _system_parts(request.system, "system")), quirks)
    for number, message in enumerate(request.messages):
        for turn in _convert(message, f"messages.{number}", quirks):
            _append(turns, turn, quirks)
    if quirks.system_first:
        turns = _systems_first(turns, quirks)
    return [_finish(turn) for turn in turns]


def _systems_first(turns: list[_Turn], quirks: OpenAIQuirks) -> list[_Turn]:
    """One leading system message holding every system message's text, in order; the turns
    the system messages stood between meet, and are merged as any others (strict_roles)."""
    systems = [turn for turn in turns if turn.role == "system"]
    if not systems:
        return turns
    merged = [_Turn("system", [part for turn in systems for part in turn.parts])]
    for turn in turns:
        if turn.role != "system":
            _append(merged, turn, quirks)
    return merged


def _append(turns: list[_Turn], turn: _Turn, quirks: OpenAIQuirks) -> None:
    if not turn.parts and not turn.tool_calls and turn.role != "tool":
        return
    last = turns[-1] if turns else None
    if quirks.strict_roles and last and last.role == turn.role and turn.role != "tool":
        last.parts.extend(turn.parts)
        last.tool_calls.extend(turn.tool_calls)
        last.reasoning.extend(turn.reasoning)
    else:
        turns.append(turn)


def _finish(turn: _Turn) -> ChatMessage:
    if turn.role == "tool":
        return ChatMessage("tool", _content(turn.parts), tool_call_id=turn.tool_call_id)
    if turn.role == "assistant":
        content = _content(turn.parts) if turn.parts else None
        reasoning = "".join(turn.reasoning) if turn.reasoning else UNSET
        return ChatMessage(
            "assistant", content, tool_calls=turn.tool_calls or UNSET, reasoning_content=reasoning
        )
    return ChatMessage(turn.role, _content(turn.parts))


def _content(parts: list[Part]) -> str | list[Part]:
    texts = [part.text for part in parts if isinstance(part, TextPart)]
    return SEPARATOR.join(texts) if len(texts) == len(parts) else list(parts)


def _convert(message: Message, path: str, quirks: OpenAIQuirks) -> list[_Turn]:
    if message.role == "system":
        return [_Turn("system", _system_parts(message.content, f"{path}.content"))]
    if message.role == "assistant":
        return [_assistant_turn(message.content, path, quirks)]
    return _user_turns(message.content, path, quirks)


def _system_parts(content: str | list[Block], path: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    parts: list[Part] = []
    for number, block in enumerate(content):
        if not isinstance(block, Text):
            raise InvalidRequestError(f"{path}.{number}: system content may only hold text blocks")
        parts.append(TextPart(block.text))
    return parts


def _assistant_turn(content: str | list[Block], path: str, quirks: OpenAIQuirks) -> _Turn:
    turn = _Turn("assistant")
    keep_reasoning = quirks.reasoning_history == "reasoning_content"
    if isinstance(content, str):
        turn.parts.append(TextPart(content))
        return turn
    for number, block in enumerate(content):
        if isinstance(block, Text):
            turn.parts.append(TextPart(block.text))
        elif isinstance(block, ToolUse):
            arguments = encoder.encode(block.input).decode()
            turn.tool_calls.append(ToolCall(block.id, FunctionCall(block.name, arguments)))
        elif keep_reasoning and isinstance(block, ThinkingBlock):
            turn.reasoning.append(block.thinking)
        elif not isinstance(block, _DROPPED):
            raise UnsupportedByProviderError(
                f"{path}.content.{number}: {_tag(block)} blocks in assistant messages are not "
                "supported by this provider"
            )
    return turn


def _user_turns(content: str | list[Block], path: str, quirks: OpenAIQuirks) -> list[_Turn]:
    if isinstance(content, str):
        return [_Turn("user", [TextPart(content)])]
    results: list[_Turn] = []
    attachments: list[Part] = []
    parts: list[Part] = []
    for number, block in enumerate(content):
        where = f"{path}.content.{number}"
        if isinstance(block, ToolResult):
            text, media = _tool_result(block, where, quirks)
            results.append(_Turn("tool", [TextPart(text)], tool_call_id=block.tool_use_id))
            if media:
                attachments += [TextPart(attachments_label(block.tool_use_id)), *media]
        elif not isinstance(block, _DROPPED):
            parts += _user_parts(block, where, quirks)
    # The user's own blocks first: each label then owns exactly the media up to the next label.
    return [*results, _Turn("user", parts + attachments)]


def _tool_result(block: ToolResult, path: str, quirks: OpenAIQuirks) -> tuple[str, list[Part]]:
    """The ``tool`` message text and the media that must follow in a user message."""
    texts: list[str] = []
    media: list[Part] = []
    if isinstance(block.content, str):
        texts.append(block.content)
    for number, inner in enumerate(block.content if isinstance(block.content, list) else ()):
        for part in _user_parts(inner, f"{path}.content.{number}", quirks):
            if isinstance(part, TextPart):
                texts.append(part.text)
            else:
                media.append(part)
    text = SEPARATOR.join(texts)
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return text, media


def _user_parts(block: Block, path: str, quirks: OpenAIQuirks) -> list[Part]:
    if isinstance(block, Text):
        return [TextPart(block.text)]
    if isinstance(block, Image):
        return [_image_part(block, path, quirks)]
    if isinstance(block, Document):
        return _document_parts(block, path, quirks)
    if isinstance(block, SearchResult):
        texts = [block.title, block.source, *(text.text for text in block.content)]
        return [TextPart(SEPARATOR.join(text for text in texts if text))]
    raise InvalidRequestError(f"{path}: {_tag(block)} blocks are not allowed here")


def _image_part(block: Image, path: str, quirks: OpenAIQuirks) -> ImagePart:
    if not quirks.supports_images:
        raise UnsupportedByProviderError(f"{path}: images are not supported by this provider")
    source = block.source
    if source.type == "base64":
        media_type = source.media_type or "image/png"
        return ImagePart(ImageUrl(f"data:{media_type};base64,{_field(source.data, path, 'data')}"))
    if source.type == "url":
        return ImagePart(ImageUrl(_field(source.url, path, "url")))
    raise UnsupportedByProviderError(
        f"{path}.source.type: image sources of type '{source.type}' are not supported by "
        "this provider"
    )


def _document_parts(block: Document, path: str, quirks: OpenAIQuirks) -> list[Part]:
    source = block.source
    header = [text for text in (block.title, block.context) if text]
    if source.type == "text":
        return [TextPart(SEPARATOR.join([*header, _field(source.data, path, "data")]))]
    if source.type == "content":
        if isinstance(source.content, str):
            return [TextPart(SEPARATOR.join([*header, source.content]))]
        parts: list[Part] = [TextPart(SEPARATOR.join(header))] if header else []
        for number, inner in enumerate(source.content or ()):
            parts += _user_parts(inner, f"{path}.source.content.{number}", quirks)
        return parts
    if not quirks.supports_documents:
        raise UnsupportedByProviderError(f"{path}: documents are not supported by this provider")
    if source.type == "base64" and source.media_type == "application/pdf":
        data = f"data:application/pdf;base64,{_field(source.data, path, 'data')}"
        return [FilePart(FileData("document.pdf", data))]
    raise UnsupportedByProviderError(
        f"{path}.source.type: documents with source type '{source.type}' are not supported "
        "by this provider"
    )


def _field(value: str | None, path: str, name: str) -> str:
    if value is None:
        raise InvalidRequestError(f"{path}.source.{name}: Field required")
    return value


def _tag(block: Block) -> str:
    return str(block.__struct_config__.tag)
