"""OpenAI-style errors -> Anthropic's status and ``error.type``, with Claude Code's wording.

One classification serves three places: an error response (:func:`translate_error`), an error
object in a 200 body (:func:`upstream_error`, raised by the response translator) and an error
object inside a stream (an SSE ``error`` event). Context-window overflows are reworded to the
messages Claude Code pattern-matches to compact or to lower ``max_tokens``.
"""

from __future__ import annotations

import re

from ..errors import (
    GatewayError,
    InternalGatewayError,
    InvalidRequestError,
    UpstreamUnavailableError,
    encode_error_body,
    error_class,
    error_type_for_status,
)
from ..protocol import DECODE_ERRORS
from ._openai import InError, body_decoder, encoder

__all__ = ["classify", "parse_error", "translate_error", "upstream_error"]

_STATUS_BY_CODE = {
    "invalid_request_error": 400,
    "invalid_request": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "unauthorized": 401,
    "insufficient_quota": 402,
    "permission_error": 403,
    "permission_denied": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "server_error": 500,
    "api_error": 500,
    "timeout": 504,
    "timeout_error": 504,
    "overloaded": 529,
    "overloaded_error": 529,
}
_CONTEXT_HINTS = ("context_length_exceeded", "maximum context length", "context length")
_NUMBER = r"(\d[\d,]*)"
_MAXIMUM = [
    re.compile(p)
    for p in (
        rf"maximum context length is {_NUMBER}",
        rf"context length \({_NUMBER} tokens\)",
        rf"context (?:length|window) of {_NUMBER}",
    )
]
_PROMPT = [
    re.compile(p)
    for p in (
        rf"resulted in {_NUMBER} tokens",
        rf"{_NUMBER} in your prompt",
        rf"{_NUMBER} in the messages",
        rf"has {_NUMBER} input tokens",
        rf"input \({_NUMBER} tokens\)",
    )
]
_COMPLETION = [
    re.compile(p)
    for p in (
        rf"{_NUMBER} (?:for|in) the completion",
        # vLLM: "'max_tokens' or 'max_completion_tokens' is too large: 16384. This model's
        # maximum context length is 65536 tokens and your request has 52189 input tokens".
        rf"max_(?:completion_)?tokens'? is too large: {_NUMBER}",
    )
]
_MAX_MESSAGE = 2000


def translate_error(status: int, body: bytes) -> tuple[int, bytes]:
    """The Anthropic status and error envelope (``request_id`` null) for an upstream error
    response. Never raises: an unreadable body becomes its text, or a generic message."""
    status, error_type, message = classify(status, parse_error(body))
    return status, encode_error_body(error_type, message, None)


def upstream_error(error: InError) -> GatewayError:
    """The gateway error to raise for an error object found where a result was expected."""
    status, error_type, message = classify(None, error)
    if error_type == "api_error":
        return InternalGatewayError(message) if status == 500 else UpstreamUnavailableError(message)
    return error_class(error_type, InvalidRequestError)(message)


def parse_error(body: bytes) -> InError:
    """The message, type and code of any common error body shape; the raw text otherwise."""
    try:
        parsed = body_decoder.decode(body)
    except DECODE_ERRORS:
        text = body.decode("utf-8", "replace").strip()
        return InError(message=text[:_MAX_MESSAGE] or None)
    detail = parsed.error_detail()
    if detail is not None:
        return detail
    if isinstance(parsed.detail, str):
        return InError(message=parsed.detail)
    if parsed.detail is not None:
        return InError(message=encoder.encode(parsed.detail).decode()[:_MAX_MESSAGE])
    return InError(message=parsed.message, type=parsed.type, code=parsed.code)


def classify(status: int | None, error: InError) -> tuple[int, str, str]:
    """``(status, error.type, message)`` for an upstream error; ``status`` None (or below 400,
    for an error inside a 200) is inferred from the error's ``code`` and ``type``."""
    message = error.message or (f"upstream error (HTTP {status})" if status else "upstream error")
    context = _context_message(error)
    if context is not None:
        return 400, "invalid_request_error", context
    if status is not None and 300 <= status < 400:
        # A redirect the gateway does not follow: the upstream cannot be used as configured.
        return (
            502,
            "api_error",
            f"The upstream redirected (HTTP {status}), which the gateway does not follow.",
        )
    if status is None or status < 400:
        status = _status_from_error(error)
    if status == 529 or (status >= 500 and _overloaded(error)):
        return 529, "overloaded_error", message
    if status == 429 and "insufficient_quota" in (error.code, error.type):
        return 402, "billing_error", message
    if status == 422:
        return 400, "invalid_request_error", message
    return status, error_type_for_status(status), message


def _status_from_error(error: InError) -> int:
    code = error.code
    if isinstance(code, str) and code.isdecimal():  # "code": "400", as some servers send it
        code = int(code)
    if isinstance(code, int) and 400 <= code <= 599:
        return code
    for key in (error.code, error.type):
        if isinstance(key, str) and key in _STATUS_BY_CODE:
            return _STATUS_BY_CODE[key]
    return 500


def _overloaded(error: InError) -> bool:
    return "overloaded" in f"{error.code} {error.type} {error.message}".lower()


def _context_message(error: InError) -> str | None:
    text = error.message or ""
    signals = f"{error.code} {error.type} {text}".lower()
    if not any(hint in signals for hint in _CONTEXT_HINTS):
        return None
    maximum = _first_number(text, _MAXIMUM)
    prompt = _first_number(text, _PROMPT)
    completion = _first_number(text, _COMPLETION)
    if maximum is not None and prompt is not None and prompt > maximum:
        return f"prompt is too long: {prompt} tokens > {maximum} maximum"
    if maximum is not None and prompt is not None and completion is not None:
        return (
            f"input length and `max_tokens` exceed context limit: {prompt} + {completion} > "
            f"{maximum}, decrease input length or `max_tokens` and try again"
        )
    return f"prompt is too long: {text}" if text else "prompt is too long"


def _first_number(text: str, patterns: list[re.Pattern[str]]) -> int | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return int(match.group(1).replace(",", ""))
    return None
