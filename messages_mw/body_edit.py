"""Edit a request body's top level while keeping every other byte of it as it came.

The body is decoded as ``{name: raw JSON}``: untouched fields are copied as their original
bytes, so unknown fields, number spellings and key order inside them survive any edit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from .errors import InvalidRequestError
from .protocol import DECODE_ERRORS
from .validation import describe_decode_error

__all__ = ["edit_top_level", "read_raw_fields"]

_raw_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()


def read_raw_fields(body: bytes | msgspec.Raw, at: str = "") -> dict[str, msgspec.Raw]:
    """The JSON object ``body`` as ``{name: raw JSON}``; ``at`` is where it sits in the request.

    Raises :class:`InvalidRequestError` for what validation let through because it never
    decodes unknown fields: a key that is not valid UTF-8, say.
    """
    try:
        return _raw_decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise InvalidRequestError(describe_decode_error(exc, body, at)) from exc


def edit_top_level(
    body: bytes, *, set_fields: Mapping[str, Any] | None = None, remove: Iterable[str] = ()
) -> bytes:
    """Return ``body`` with ``set_fields`` set and ``remove`` removed at the top level.

    The body must already be known to be a JSON object (it passed validation); raises
    :class:`InvalidRequestError` as :func:`read_raw_fields` does.
    """
    fields = read_raw_fields(body)
    for name in remove:
        fields.pop(name, None)
    for name, value in (set_fields or {}).items():
        fields[name] = msgspec.Raw(_encoder.encode(value))
    return _encoder.encode(fields)
