"""The built-in mock provider: deterministic Anthropic answers without a network or a key.

It serves the demo mode, the tests and the benchmarks. Every reply is a pure function of the
request body (even the message id is a hash of it), so the same bytes in give the same bytes out.
The reply echoes the last user text, or calls the first offered tool with an input built from its
schema, optionally after a thinking block; ``max_tokens`` and ``stop_sequences`` are honoured.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
from collections.abc import AsyncGenerator, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qs

import msgspec

from ..config import DEFAULT_MODELS, MockConfig, ModelConfig
from ..errors import InvalidRequestError, MethodNotAllowedError, NotFoundError, base62_id
from ..protocol import DECODE_ERRORS, CountTokensResponse, ModelInfo, ModelList, ToolUseBlock
from ..validation import decode_count_tokens_request, decode_messages_request, describe_decode_error
from ._mock_replies import (
    PING_CHUNK,
    PacedChunk,
    ReplyPlan,
    compose_message,
    encode_message,
    sse_chunks,
)
from ._mock_schema import sample_tool_input
from .base import ProviderRequest, ProviderResponse

__all__ = ["MockProvider", "estimate_input_tokens"]

_T = TypeVar("_T")

_IMAGE_TOKENS = 1_600
_DOCUMENT_PAGE_TOKENS = 2_000
_BASE64_BYTES_PER_PAGE = 100_000
_BYTES_PER_TOKEN = 4
_SNIPPET_CHARS = 120
_MIN_THINKING_BUDGET = 1_024
_VERSION_WITHOUT_SAMPLING = "2026-10-21"
_SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))
_JSON_HEADERS = (("content-type", "application/json"),)


class _Part(msgspec.Struct):
    """Any content block; ``source`` and ``content`` stay raw until a block type needs them."""

    type: str = ""
    # Any JSON: another block type (a future one) may hold something else under "text".
    text: Any = None
    source: msgspec.Raw = msgspec.Raw()
    content: msgspec.Raw = msgspec.Raw()


class _Turn(msgspec.Struct):
    role: str
    content: str | list[_Part]


class _Source(msgspec.Struct):
    type: str = ""
    data: str = ""
    content: msgspec.Raw = msgspec.Raw()


class _ToolDef(msgspec.Struct):
    name: str | None = None
    input_schema: msgspec.Raw = msgspec.Raw()
    # Absent or "custom" for a client tool; a server tool's (web_search_20250305, ...) is
    # run by the API itself, never handed to the client as a tool_use.
    type: str | None = None


class _ToolChoice(msgspec.Struct):
    type: str = "auto"
    name: str | None = None


class _ThinkingConfig(msgspec.Struct):
    type: str = ""
    display: str | None = None
    budget_tokens: Any = msgspec.UNSET


class _Prompt(msgspec.Struct):
    """The prompt parts of a messages or count_tokens body, kept raw for byte counting."""

    messages: msgspec.Raw = msgspec.Raw()
    system: msgspec.Raw = msgspec.Raw()
    tools: msgspec.Raw = msgspec.Raw()
    tool_choice: _ToolChoice | None = None
    thinking: _ThinkingConfig | None = None
    # Only whether they are there: API version 2026-10-21 refuses them.
    temperature: Any = msgspec.UNSET
    top_p: Any = msgspec.UNSET
    top_k: Any = msgspec.UNSET


_prompt_decoder = msgspec.json.Decoder(_Prompt)
_turns_decoder = msgspec.json.Decoder(list[_Turn])
_tools_decoder: msgspec.json.Decoder[list[_ToolDef] | None] = msgspec.json.Decoder(
    list[_ToolDef] | None
)
_nested_decoder: msgspec.json.Decoder[str | list[_Part] | None] = msgspec.json.Decoder(
    str | list[_Part] | None
)
_source_decoder = msgspec.json.Decoder(_Source)
_schema_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()
_DEFAULT_SETTINGS = MockConfig()


def _decode_or_400(
    decoder: msgspec.json.Decoder[_T], data: bytes | msgspec.Raw, at: str = ""
) -> _T:
    """``data`` decoded; ``at`` is where it sits in the body, for the error's field path."""
    try:
        return decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise InvalidRequestError(describe_decode_error(exc, data, at)) from exc


def _decode_or_none(decoder: msgspec.json.Decoder[_T], data: msgspec.Raw) -> _T | None:
    try:
        return decoder.decode(data)
    except DECODE_ERRORS:
        return None


def _nested_parts(raw: msgspec.Raw) -> list[_Part]:
    parts = _decode_or_none(_nested_decoder, raw)
    return parts if isinstance(parts, list) else []


def _source_cost(kind: str, raw: msgspec.Raw) -> tuple[int, int]:
    """(JSON bytes replaced by a fixed cost, tokens of that cost) for one media source."""
    source = _decode_or_none(_source_decoder, raw)
    if source is None or source.type == "text":
        return 0, 0
    if source.type == "content":
        return _media_cost(_nested_parts(source.content))
    if kind == "image":
        return len(raw), _IMAGE_TOKENS
    pages = max(1, math.ceil(len(source.data) / _BASE64_BYTES_PER_PAGE))
    return len(raw), pages * _DOCUMENT_PAGE_TOKENS


def _media_cost(parts: Iterable[_Part]) -> tuple[int, int]:
    """Walk blocks (and blocks nested in tool_result and similar) for images and documents."""
    replaced = tokens = 0
    for part in parts:
        if part.type in ("image", "document") and part.source:
            part_bytes, part_tokens = _source_cost(part.type, part.source)
        elif part.content:
            part_bytes, part_tokens = _media_cost(_nested_parts(part.content))
        else:
            continue
        replaced += part_bytes
        tokens += part_tokens
    return replaced, tokens


def estimate_input_tokens(body: bytes) -> int:
    """Estimate the input tokens of a messages or count_tokens body, locally and cheaply.

    Method: the JSON text of ``system``, ``messages`` and ``tools`` (with any line breaks
    and indentation between its tokens taken out) counts one token per 4 bytes (roughly
    what Claude's tokenizer gives for English prose and JSON), so every block
    type counts: text, tool definitions, tool_use inputs, tool_result content at any nesting,
    thinking, search results, text documents. Binary media are replaced by fixed costs instead
    of their base64 bytes: 1,600 tokens per image (about a 1.15-megapixel image, the largest
    size the API keeps without downscaling), and 2,000 tokens per PDF page (the middle of
    Anthropic's 1,500-3,000 per page) with one page per 100 KB of base64, at least one; URL
    and file sources count as one page. The same body always gives the same count. It is a
    rough estimate: real counts vary with language and model. Raises
    :class:`~messages_mw.errors.InvalidRequestError` for a body that is not a JSON object.
    """
    prompt = _decode_or_400(_prompt_decoder, _compact(body))
    return _estimate(prompt, _turns(prompt))


def _compact(body: bytes) -> bytes:
    """``body`` without the blanks between JSON tokens when it is laid out on several lines
    (curl users, some clients), so that layout does not change the estimate: one line of
    JSON (what SDKs send) is taken as it is, sparing a pass over the body."""
    if b"\n" not in body:
        return body
    try:
        return msgspec.json.format(body, indent=-1)
    except msgspec.DecodeError:
        # Decoding it again reports where it is broken.
        return body


def _turns(prompt: _Prompt) -> list[_Turn]:
    """The prompt's messages; a text block's text must be a string, as Anthropic holds it
    (another block type's ``text``, a future one's, may be anything)."""
    turns = _decode_or_400(_turns_decoder, prompt.messages, "messages")
    for at, turn in enumerate(turns):
        for index, part in enumerate(() if isinstance(turn.content, str) else turn.content):
            if part.type == "text" and not isinstance(part.text, str):
                kind = type(part.text).__name__.replace("NoneType", "null")
                raise InvalidRequestError(
                    f"messages.{at}.content.{index}.text: Expected `str`, got `{kind}`"
                )
    return turns


def _estimate(prompt: _Prompt, turns: list[_Turn]) -> int:
    json_bytes = len(prompt.system) + len(prompt.messages) + len(prompt.tools)
    parts = (part for turn in turns if isinstance(turn.content, list) for part in turn.content)
    media_bytes, media_tokens = _media_cost(parts)
    return max(1, math.ceil(max(0, json_bytes - media_bytes) / _BYTES_PER_TOKEN) + media_tokens)


def _prompt_digest(prompt: _Prompt, model: str) -> bytes:
    """A hash of what the reply depends on, so a streamed and a non-streamed call of the same
    prompt share tool ids and signatures (only the message id, a hash of the body, differs)."""
    digest = hashlib.sha256(b"mock-prompt\0" + model.encode())
    for part in (prompt.system, prompt.messages, prompt.tools):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _last_user_turn(turns: list[_Turn]) -> _Turn | None:
    return next((turn for turn in reversed(turns) if turn.role == "user"), None)


def _is_tool_reply(turn: _Turn | None) -> bool:
    return (
        turn is not None
        and not isinstance(turn.content, str)
        and any(part.type == "tool_result" for part in turn.content)
    )


def _user_text(turn: _Turn) -> str:
    if isinstance(turn.content, str):
        return turn.content
    texts = (part.text for part in turn.content if part.type == "text")
    return " ".join(text for text in texts if text and isinstance(text, str))


def _reply_text(model: str, turn: _Turn | None) -> str:
    if turn is None:
        return f"Hello from the mock model {model}."
    if _is_tool_reply(turn):
        return f"Mock reply from {model}: thanks, the tool result arrived. All done."
    snippet = " ".join(_user_text(turn).split())
    if len(snippet) > _SNIPPET_CHARS:
        snippet = snippet[:_SNIPPET_CHARS] + "..."
    return f"Mock reply from {model}. You said: {snippet or '(no text)'}"


def _chosen_tool(prompt: _Prompt, last_user: _Turn | None) -> _ToolDef | None:
    """The tool to call: the named one for tool_choice "tool", else the first offered. Under
    "auto" a turn answering a tool call gets text, which ends an agent's loop; "any" and
    "tool" force a call every turn, as they force the model."""
    choice = prompt.tool_choice or _ToolChoice()
    tools = [
        tool
        for tool in _decode_or_400(_tools_decoder, prompt.tools or b"null", "tools") or []
        if tool.name
    ]
    if not tools or choice.type == "none":
        return None
    if choice.type not in ("any", "tool") and _is_tool_reply(last_user):
        return None
    if choice.type != "tool":
        return next((tool for tool in tools if _is_client_tool(tool)), None)
    for tool in tools:
        if tool.name == choice.name:
            # A server tool the mock cannot run: it answers in text instead.
            return tool if _is_client_tool(tool) else None
    raise InvalidRequestError(f"tool_choice.name: Tool '{choice.name}' not found in tools")


def _is_client_tool(tool: _ToolDef) -> bool:
    return tool.type in (None, "custom")


def _tool_call(prompt: _Prompt, last_user: _Turn | None, digest: bytes) -> ToolUseBlock | None:
    tool = _chosen_tool(prompt, last_user)
    if tool is None or tool.name is None:
        return None
    schema = _decode_or_none(_schema_decoder, tool.input_schema) if tool.input_schema else None
    return ToolUseBlock(base62_id("toolu_", digest), tool.name, sample_tool_input(schema))


def _check_as_the_api_does(prompt: _Prompt, max_tokens: int, version: str | None) -> None:
    """Refuse what Anthropic's API refuses with a 400 and the gateway lets through (it is
    never stricter than the upstream): code tried against the demo should not first fail
    against the real API. ``version`` is the request's ``anthropic-version``."""
    if version == _VERSION_WITHOUT_SAMPLING:
        for name in ("temperature", "top_p", "top_k"):
            if getattr(prompt, name) is not msgspec.UNSET:
                raise InvalidRequestError(f"{name}: Extra inputs are not permitted")
    thinking = prompt.thinking
    if thinking is None or thinking.type not in ("enabled", "adaptive"):
        return
    if thinking.type == "enabled":
        budget = thinking.budget_tokens
        if budget is msgspec.UNSET:
            raise InvalidRequestError("thinking.enabled.budget_tokens: Field required")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise InvalidRequestError(
                "thinking.enabled.budget_tokens: Input should be a valid integer"
            )
        if budget < _MIN_THINKING_BUDGET:
            raise InvalidRequestError(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to"
                f" {_MIN_THINKING_BUDGET}"
            )
        if budget >= max_tokens:
            raise InvalidRequestError("`max_tokens` must be greater than `thinking.budget_tokens`")
    if prompt.tool_choice is not None and prompt.tool_choice.type in ("any", "tool"):
        raise InvalidRequestError("Thinking may not be enabled when tool_choice forces tool use.")


def _plan(body: bytes, version: str | None = None) -> tuple[ReplyPlan, bool]:
    """Decode a messages body into what the mock will answer, and whether to stream it."""
    request = decode_messages_request(body)
    prompt = _decode_or_400(_prompt_decoder, _compact(body))
    _check_as_the_api_does(prompt, request.max_tokens, version)
    turns = _turns(prompt)
    last_user = _last_user_turn(turns)
    digest = _prompt_digest(prompt, request.model)
    thinking = prompt.thinking
    thinks = thinking is not None and thinking.type in ("enabled", "adaptive")
    plan = ReplyPlan(
        message_id=base62_id("msg_", hashlib.sha256(body).digest()),
        model=request.model,
        input_tokens=_estimate(prompt, turns),
        max_tokens=request.max_tokens,
        stop_sequences=tuple(request.stop_sequences or ()),
        text=_reply_text(request.model, last_user),
        thinking=f"The user wrote {len(turns)} message(s). Echo the last one." if thinks else None,
        show_thinking=thinking is None or thinking.display != "omitted",
        signature=base64.b64encode(digest).decode(),
        tool=_tool_call(prompt, last_user, digest),
    )
    return plan, request.stream


async def _silence(seconds: float, ping_interval: float) -> AsyncGenerator[bytes, None]:
    """Sleep ``seconds``, yielding a ping after each ``ping_interval`` of silence."""
    while seconds > ping_interval:
        await asyncio.sleep(ping_interval)
        seconds -= ping_interval
        yield PING_CHUNK
    await asyncio.sleep(seconds)


async def _paced(
    chunks: list[PacedChunk], settings: MockConfig, ping_interval: float
) -> AsyncGenerator[bytes, None]:
    if settings.latency_ms:
        await asyncio.sleep(settings.latency_ms / 1000)
    rate = settings.tokens_per_second
    for tokens, chunk in chunks:
        if rate and tokens:
            async for ping in _silence(tokens / rate, ping_interval):
                yield ping
        yield chunk


class MockProvider:
    """A :class:`~messages_mw.providers.base.Provider` that answers locally.

    ``settings`` paces the output (``latency_ms`` before the first byte, ``tokens_per_second``
    between deltas, and for non-streaming replies before the body); ``models`` is what
    ``GET /v1/models`` lists. ``ping_interval`` is the longest silence in a stream before a
    ``ping`` event. ``send`` raises :class:`~messages_mw.errors.InvalidRequestError` for a bad
    body and :class:`~messages_mw.errors.NotFoundError` for unknown paths and for a model
    ``GET /v1/models/{id}`` does not list. Messages and count_tokens answer for any model
    name, listed or not: clients send dated snapshots and aliases no list keeps up with,
    and tests their own names.
    Cancelling ``send`` or the stream leaves nothing behind: the mock holds no resources.
    """

    # What kind of upstream this is, for telemetry (the GenAI conventions' provider name).
    provider_type = "messages_mw.mock"

    def __init__(
        self,
        settings: MockConfig = _DEFAULT_SETTINGS,
        models: tuple[ModelConfig, ...] = DEFAULT_MODELS,
        *,
        ping_interval: float = 10.0,
    ) -> None:
        self._settings = settings
        self._ping_interval = ping_interval
        self._models = [ModelInfo(m.id, m.display_name or m.id, m.created_at) for m in models]
        self._model_index = {model.id: position for position, model in enumerate(self._models)}

    async def send(self, request: ProviderRequest) -> ProviderResponse:
        path, method = request.path.rstrip("/"), request.method.upper()
        if path in ("/v1/messages", "/v1/messages/count_tokens"):
            if method != "POST":
                raise MethodNotAllowedError(f"Method {method} is not allowed on {path}")
            if path == "/v1/messages":
                return await self._messages(request)
            return self._json(_encoder.encode(CountTokensResponse(self._count(request.body))))
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method != "GET":
                raise MethodNotAllowedError(f"Method {method} is not allowed on {path}")
            if path == "/v1/models":
                return self._json(self._list_models(request.query))
            return self._json(self._get_model(path.removeprefix("/v1/models/")))
        raise NotFoundError(f"Not found: {method} {request.path}")

    async def aclose(self) -> None:
        """Nothing to release; present for the Provider protocol."""

    @staticmethod
    def _json(body: bytes) -> ProviderResponse:
        return ProviderResponse(status=200, headers=list(_JSON_HEADERS), body=body)

    async def _messages(self, request: ProviderRequest) -> ProviderResponse:
        plan, stream = _plan(request.body, request.headers.get("anthropic-version"))
        message = compose_message(plan)
        if stream:
            chunks = _paced(sse_chunks(message), self._settings, self._ping_interval)
            return ProviderResponse(
                status=200, headers=list(_SSE_HEADERS), chunks=chunks, close=chunks.aclose
            )
        delay = self._settings.latency_ms / 1000
        if self._settings.tokens_per_second:
            delay += message.usage.output_tokens / self._settings.tokens_per_second
        if delay:
            await asyncio.sleep(delay)
        return self._json(encode_message(message))

    @staticmethod
    def _count(body: bytes) -> int:
        decode_count_tokens_request(body)
        return estimate_input_tokens(body)

    def _list_models(self, query: str) -> bytes:
        params = parse_qs(query)
        limit = _limit_param(params)
        after, before = _first(params, "after_id"), _first(params, "before_id")
        start, end = 0, len(self._models)
        if after is not None:
            start = self._model_index.get(after, len(self._models) - 1) + 1
        if before is not None:
            end = self._model_index.get(before, 0)
        window = self._models[start:end]
        page = window[-limit:] if before is not None and after is None else window[:limit]
        first_id, last_id = (page[0].id, page[-1].id) if page else (None, None)
        return _encoder.encode(ModelList(page, len(window) > limit, first_id, last_id))

    def _get_model(self, model_id: str) -> bytes:
        position = self._model_index.get(model_id)
        if position is None:
            raise NotFoundError(f"model: {model_id}")
        return _encoder.encode(self._models[position])


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _limit_param(params: dict[str, list[str]]) -> int:
    raw = _first(params, "limit")
    if raw is None:
        return 20
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequestError("limit: Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise InvalidRequestError("limit: Input should be between 1 and 1000")
    return limit
