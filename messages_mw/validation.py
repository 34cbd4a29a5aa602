"""Decode and validate request bodies: only what the gateway relies on, nothing stricter.

The structs below name the fields the gateway reads or that must have the right JSON type for
the gateway to be safe (model, max_tokens, messages with role and content, block types, stream,
sampling numbers). Unknown fields, unknown block types and unknown roles are skipped by msgspec,
never rejected, so a request that is valid for Anthropic today or next month is valid here.
The decoders are built once at import; decoding the 57 KB agent turn takes tens of microseconds.
"""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

import msgspec

from .errors import InvalidRequestError
from .protocol import DECODE_ERRORS

__all__ = [
    "CountTokensRequest",
    "MessagesRequest",
    "decode_count_tokens_request",
    "decode_messages_request",
    "describe_decode_error",
]

# Every struct here is gc=False. Each in-flight request holds one struct per message, and under
# concurrency those tracked objects kept the collector busy: at 32 connections with the 57 KB
# agent turn, 3,000 requests set off 521 young collections; untracked, 184. The structs hold
# only strings, numbers, Raw and lists of one another, and nothing writes to them after
# decoding, so they cannot form the reference cycles the collector exists to find.


class _Block(msgspec.Struct, gc=False):
    type: str


class _Message(msgspec.Struct, gc=False):
    role: str
    content: str | list[_Block]


class _Metadata(msgspec.Struct, gc=False):
    user_id: str | None = None
    # The gateway's own field, stripped before the body goes upstream even when null: absent
    # and null must be told apart.
    tags: list[str] | msgspec.UnsetType | None = msgspec.UNSET


class _Tool(msgspec.Struct, gc=False):
    name: str | None = None
    # The model a tool runs (the advisor tool's): read only for a key with a model allow-list.
    model: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


# Model ids are tens of characters (a Bedrock ARN about a hundred). The gateway echoes the
# model in a response header, usage events and spans: a megabyte of it would make an answer
# no client can read (header limits) and a span no collector takes.
MAX_MODEL_CHARS = 1024
_ModelId = Annotated[str, msgspec.Meta(max_length=MAX_MODEL_CHARS)]


class MessagesRequest(msgspec.Struct, gc=False):
    """The parts of a ``POST /v1/messages`` body the gateway reads."""

    model: _ModelId
    max_tokens: Annotated[int, msgspec.Meta(ge=0)]
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    stream: bool = False
    system: str | list[_Block] | None = None
    metadata: _Metadata | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[_Tool] | None = None
    tool_choice: _Block | None = None
    thinking: _Block | None = None
    # Read only when the gateway is configured to consume them (see routing and policy).
    fallbacks: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    extra_headers: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class CountTokensRequest(msgspec.Struct, gc=False):
    """The parts of a ``POST /v1/messages/count_tokens`` body the gateway reads."""

    model: _ModelId
    messages: Annotated[list[_Message], msgspec.Meta(min_length=1)]
    system: str | list[_Block] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _Block | None = None
    thinking: _Block | None = None
    # Gateway fields, consumed here as in a messages body, so none of them goes upstream.
    metadata: _Metadata | None = None
    fallbacks: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    extra_headers: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_messages_decoder = msgspec.json.Decoder(MessagesRequest)
_count_tokens_decoder = msgspec.json.Decoder(CountTokensRequest)

_T = TypeVar("_T")

_PATH_SUFFIX = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


_TRUNCATED = "Input data was truncated"
# A \uD800-\uDBFF escape (after an even run of backslashes, so really an escape) with no
# \u escape after it.
_LONE_HIGH_SURROGATE = re.compile(rb"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u)")


def _json_path_to_dotted(path: str) -> str:
    """``.messages[2].content[0].type`` -> ``messages.2.content.0.type`` (Anthropic's style).

    msgspec writes ``[...]`` for a value in an object of any keys without saying which key:
    the path stops at that object."""
    path = path.split("[...]", 1)[0]
    parts = [name or index for name, index in _PATH_PART.findall(path)]
    return ".".join(parts)


def describe_decode_error(exc: Exception, body: bytes, at: str = "") -> str:
    """Turn a decoding error (any of :data:`~messages_mw.protocol.DECODE_ERRORS`) in ``body``
    into Anthropic-style text that names the offending field; ``at`` is the dotted path of the
    decoded value within the body, for a part decoded on its own (``messages``)."""
    if isinstance(exc, UnicodeDecodeError):
        return "Request body is not valid JSON: a string holds invalid UTF-8."
    if isinstance(exc, RecursionError):
        # Valid JSON, perhaps, but deeper than the decoder (and any real request) goes.
        return "Request body is nested too deeply to decode."
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        if text == _TRUNCATED and (lone := _LONE_HIGH_SURROGATE.search(body)) is not None:
            # msgspec says "truncated" for "\ud800" with no low half after it: a message
            # that sends users looking for a proxy cutting bodies short.
            byte = lone.end() - 6
            return f"Request body is not valid JSON: a string holds a lone surrogate (byte {byte})"
        # msgspec names the byte of a bad character but not where truncated input ended.
        where = "" if "(byte " in text else f" (byte {len(body)})"
        return f"Request body is not valid JSON: {text}{where}"
    match = _PATH_SUFFIX.match(text)
    assert match is not None  # the pattern matches any string
    detail, path = match.group("text"), _json_path_to_dotted(match.group("path") or "")
    path = f"{at}.{path}" if at and path else at or path
    missing = _MISSING_FIELD.match(detail)
    if missing:
        field = missing.group("field")
        return f"{path + '.' if path else ''}{field}: Field required"
    return f"{path or 'body'}: {detail}"


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    try:
        return decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise InvalidRequestError(describe_decode_error(exc, body)) from exc


def decode_messages_request(body: bytes) -> MessagesRequest:
    """Decode and validate a messages body.

    Raises :class:`~messages_mw.errors.InvalidRequestError` naming the field (or the byte
    position, for malformed JSON).
    """
    return _decode(_messages_decoder, body)


def decode_count_tokens_request(body: bytes) -> CountTokensRequest:
    """Decode and validate a count_tokens body; raises like :func:`decode_messages_request`."""
    return _decode(_count_tokens_decoder, body)
