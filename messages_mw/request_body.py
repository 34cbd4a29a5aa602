"""Read an ASGI request: its headers, and its body under a size limit with ``Content-Encoding``
undone.

The limit is enforced while reading (a body is never buffered past it) and again on the
decompressed size, so a small gzip bomb cannot expand past it either.
"""

from __future__ import annotations

import zlib

from .errors import InvalidRequestError, RequestTooLargeError
from .types import Receive, Scope

__all__ = [
    "ClientDisconnectedError",
    "decode_content_encoding",
    "header_map",
    "read_body",
    "read_json_body",
]

# wbits for zlib: 16+MAX_WBITS reads gzip, MAX_WBITS reads zlib-wrapped deflate.
_ZLIB_WBITS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}
# A body compressed twice is plausible, more is not: each pass may cost up to the limit.
_MAX_CODINGS = 2
# How each gzip member starts: a body may hold several, one after another.
_GZIP_MAGIC = b"\x1f\x8b"
# Clients send one; concatenated files make a few.
_MAX_GZIP_MEMBERS = 16


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name, a repeated header joined into one list."""
    # ASGI servers deliver lower-case names; latin-1 round-trips any header byte.
    raw = scope["headers"]
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}
    if len(headers) < len(raw):
        # A header sent on several lines is one comma-separated list (RFC 9110 5.3): two
        # anthropic-beta lines must both reach the upstream.
        joined: dict[str, list[str]] = {}
        for name, value in raw:
            joined.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        headers = {name: ",".join(values) for name, values in joined.items()}
    return headers


async def read_json_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The request's body, decoded, after checking that it claims to be JSON.

    Raises :class:`InvalidRequestError` for another content type, a malformed
    ``content-length`` or a bad encoding, :class:`RequestTooLargeError` past ``limit``, and
    :class:`ClientDisconnectedError` if the client leaves before its body is whole.
    """
    content_type = headers.get("content-type")
    if content_type is not None and not _is_json_content_type(content_type):
        raise InvalidRequestError(f"content-type: expected application/json, got '{content_type}'.")
    body = await read_body(receive, limit, _declared_length(headers))
    encoding = headers.get("content-encoding")
    if encoding:
        body = decode_content_encoding(body, encoding, limit)
    return body


def _is_json_content_type(value: str) -> bool:
    media_type = value.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _declared_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"content-length: '{value}' is not an integer.") from None


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"Request body exceeds the maximum size of {limit} bytes.")


# Anthropic's error codes for encoded bodies: SDK 2.x raises a class of its own for each.
_ENCODING_INVALID = "request_body_encoding_invalid"
_ENCODING_UNSUPPORTED = "request_body_encoding_unsupported"
_TOO_LARGE_DECODED = "request_body_too_large_after_decoding"


def _too_large_decoded(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"Request body exceeds the maximum size of {limit} bytes once decoded.",
        error_code=_TOO_LARGE_DECODED,
    )


def _invalid_encoding(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"content-encoding: {message}", error_code=_ENCODING_INVALID)


async def read_body(receive: Receive, limit: int, declared_length: int | None) -> bytes:
    """Collect the body from ``http.request`` messages.

    Raises :class:`RequestTooLargeError` as soon as the declared or received size passes
    ``limit``. Raises :class:`ClientDisconnectedError` if the client disconnects before the
    body is complete: there is nobody to answer.
    """
    if declared_length is not None and declared_length > limit:
        raise _too_large(limit)
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if message["type"] == "http.disconnect":  # gone before sending any body
            raise ClientDisconnectedError
        if len(body) > limit:
            raise _too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


class ClientDisconnectedError(Exception):
    """The client went away before sending its whole body."""


def decode_content_encoding(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a gzip or deflate body, never producing more than ``limit`` bytes.

    ``encoding`` may list codings (``gzip, gzip``, or two header lines joined), in the order
    they were applied (RFC 9110, section 8.4): they are undone last first, each bounded by
    ``limit``; ``identity`` changes nothing.

    Raises :class:`InvalidRequestError` for an unsupported or corrupt encoding and
    :class:`RequestTooLargeError` when the decoded body passes ``limit``.
    """
    codings = [coding.strip().lower() for coding in encoding.split(",")]
    codings = [coding for coding in codings if coding not in ("", "identity")]
    if len(codings) > _MAX_CODINGS:
        raise InvalidRequestError(
            f"content-encoding: at most {_MAX_CODINGS} codings are undone, not {len(codings)}.",
            error_code=_ENCODING_UNSUPPORTED,
        )
    for coding in reversed(codings):
        body = _decode_coding(body, coding, limit)
    return body


def _decode_coding(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = _ZLIB_WBITS.get(encoding)
    if wbits is None:
        raise InvalidRequestError(
            f"content-encoding: '{encoding}' is not supported; use gzip, deflate or identity.",
            error_code=_ENCODING_UNSUPPORTED,
        )
    # A gzip body may hold several members one after another (``cat a.gz b.gz``), which
    # decode to their contents joined; anything else after the end is corruption. Each member
    # hands the rest of the body back as a copy, so their number is bounded: a body of 20-byte
    # empty members would otherwise cost time quadratic in its size.
    parts: list[bytes] = []
    size, rest = 0, body
    while True:
        if len(parts) == _MAX_GZIP_MEMBERS:
            raise _invalid_encoding(f"more than {_MAX_GZIP_MEMBERS} gzip members.")
        decoded, rest = _inflate_one(rest, wbits, encoding, limit - size, limit)
        parts.append(decoded)
        size += len(decoded)
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if wbits != _ZLIB_WBITS["gzip"] or not rest.startswith(_GZIP_MAGIC):
            raise _invalid_encoding(f"data follows the end of the {encoding} body.")


def _inflate_one(
    data: bytes, wbits: int, encoding: str, room: int, limit: int
) -> tuple[bytes, bytes]:
    """The first compressed stream in ``data``, decoded (at most ``room`` bytes), and the
    bytes after it."""
    decompressor = zlib.decompressobj(wbits)
    try:
        decoded = decompressor.decompress(data, room + 1)
        if len(decoded) > room or decompressor.unconsumed_tail:
            raise _too_large_decoded(limit)
        decoded += decompressor.flush()
    except zlib.error as exc:
        raise _invalid_encoding(f"body is not valid {encoding} data.") from exc
    if len(decoded) > room:
        raise _too_large_decoded(limit)
    if not decompressor.eof:
        raise _invalid_encoding(f"{encoding} body is truncated.")
    return decoded, decompressor.unused_data
