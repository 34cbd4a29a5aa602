"""Anthropic Messages request -> Chat Completions request (a pure function of the body).

See ``README.md`` in this package for the field-by-field table: what is mapped, what is
dropped because Chat Completions has no equivalent, and what is answered with a 400.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

from msgspec import UNSET, UnsetType

from ..errors import InvalidRequestError, UnsupportedByProviderError
from ._anthropic import OutputFormat, Request, ToolChoice, decode_request
from ._messages import convert_messages
from ._openai import (
    ChatRequest,
    FunctionDef,
    JsonSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    StreamOptions,
    ToolDef,
    encoder,
)
from .quirks import OpenAIQuirks

__all__ = ["MAX_STOP_SEQUENCES", "ChatTranslation", "to_chat_completions", "translate_request"]

MAX_STOP_SEQUENCES = 4
_T = TypeVar("_T")
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


class ChatTranslation(NamedTuple):
    """A Chat Completions body, and whether the client asked for thinking: Anthropic answers
    with thinking blocks only then, so a reasoning model's reasoning is shown only then."""

    body: bytes
    thinking: bool


def to_chat_completions(body: bytes, *, model: str, quirks: OpenAIQuirks, stream: bool) -> bytes:
    """Translate an Anthropic request body into a Chat Completions body for ``model``.

    Called once per upstream attempt, before anything is sent. ``stream`` decides ``stream``
    and ``stream_options`` (the body's own ``stream`` is not read). Raises
    :class:`~messages_mw.errors.InvalidRequestError` naming the field, Anthropic style
    (``messages.2.content.1: images are not supported by this provider``), for anything the
    upstream cannot express; nothing is sent in that case.
    """
    return translate_request(body, model=model, quirks=quirks, stream=stream).body


def translate_request(
    body: bytes, *, model: str, quirks: OpenAIQuirks, stream: bool
) -> ChatTranslation:
    """:func:`to_chat_completions`, also saying whether the client asked for thinking."""
    request = decode_request(body)
    tools, tool_choice, parallel = _tools(request)
    limit = request.max_tokens
    if quirks.max_output_tokens is not None:
        limit = min(limit, quirks.max_output_tokens)
    usage_chunk = StreamOptions(include_usage=True) if stream and quirks.stream_usage else UNSET
    chat = ChatRequest(
        model=model,
        messages=convert_messages(request, quirks),
        max_tokens=limit if quirks.max_tokens_field == "max_tokens" else UNSET,
        max_completion_tokens=limit if quirks.max_tokens_field != "max_tokens" else UNSET,
        stream=True if stream else UNSET,
        stream_options=usage_chunk,
        temperature=_given(request.temperature),
        top_p=_given(request.top_p),
        stop=_stop(request.stop_sequences),
        user=_given(request.metadata.user_id if request.metadata else None),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        reasoning_effort=_reasoning_effort(request, quirks),
        response_format=_response_format(request),
    )
    thinking = request.thinking is not None and request.thinking.type != "disabled"
    return ChatTranslation(encoder.encode(chat), thinking)


def _given(value: _T | None) -> _T | UnsetType:
    return UNSET if value is None else value


def _stop(sequences: list[str] | None) -> list[str] | UnsetType:
    if not sequences:
        return UNSET
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise UnsupportedByProviderError(
            f"stop_sequences: this provider accepts at most {MAX_STOP_SEQUENCES} stop "
            f"sequences, got {len(sequences)}"
        )
    return sequences


def _tools(
    request: Request,
) -> tuple[list[ToolDef] | UnsetType, str | NamedToolChoice | UnsetType, bool | UnsetType]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``; the last two only with tools,
    since OpenAI rejects them on a request without tools."""
    if request.mcp_servers:
        raise UnsupportedByProviderError(
            "mcp_servers: MCP servers are not supported by this provider"
        )
    if not request.tools:
        return UNSET, UNSET, UNSET
    definitions: list[ToolDef] = []
    for number, tool in enumerate(request.tools):
        if tool.type not in (None, "custom"):
            raise UnsupportedByProviderError(
                f"tools.{number}: tools of type '{tool.type}' are not supported by this provider"
            )
        if tool.input_schema is None:
            raise InvalidRequestError(f"tools.{number}.input_schema: Field required")
        description = _given(tool.description)
        definitions.append(ToolDef(FunctionDef(tool.name, tool.input_schema, description)))
    choice = request.tool_choice
    if choice is None:
        return definitions, UNSET, UNSET
    parallel: bool | UnsetType = False if choice.disable_parallel_tool_use else UNSET
    return definitions, _tool_choice(choice), parallel


def _tool_choice(choice: ToolChoice) -> str | NamedToolChoice:
    if choice.type == "tool":
        if choice.name is None:
            raise InvalidRequestError("tool_choice.name: Field required")
        return NamedToolChoice(NamedFunction(choice.name))
    mapped = _CHOICES.get(choice.type)
    if mapped is None:
        raise InvalidRequestError(
            "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', "
            f"got '{choice.type}'"
        )
    return mapped


def _reasoning_effort(request: Request, quirks: OpenAIQuirks) -> str | UnsetType:
    thinking = request.thinking
    if quirks.reasoning != "reasoning_effort" or thinking is None or thinking.type == "disabled":
        return UNSET
    if thinking.type == "enabled" and thinking.budget_tokens is not None:
        budget = thinking.budget_tokens
        return "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    effort = request.output_config.effort if request.output_config else None
    return _EFFORTS.get(effort or "", "medium")


def _response_format(request: Request) -> ResponseFormat | UnsetType:
    config_format = request.output_config.format if request.output_config else None
    path = "output_config.format" if config_format is not None else "output_format"
    wanted: OutputFormat | None = config_format or request.output_format
    if wanted is None:
        return UNSET
    if wanted.type != "json_schema" or wanted.schema is None:
        raise UnsupportedByProviderError(
            f"{path}: only {{'type': 'json_schema', 'schema': ...}} is supported by this provider"
        )
    return ResponseFormat(JsonSchemaFormat(name="response", schema=wanted.schema))
