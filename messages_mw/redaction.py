"""Reprs that leave secrets out: API keys, credential headers, passwords in URLs.

Hooks and host code log what they are handed (a request context, a hook's request, a provider
request, the configuration), and Python's default repr would print the keys inside. Each
struct that carries one defines ``__repr__`` as :func:`repr_without_secrets`.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = ["REDACTED", "is_secret_header", "repr_without_secrets", "url_without_password"]

REDACTED = "<redacted>"
# Fields holding a key or a password as a whole, wherever they appear.
_SECRET_FIELDS = frozenset({"api_key", "upstream_api_key", "key", "password"})
# Fields holding a URL that may carry a password in its user info, or a key in its query.
_URL_FIELDS = frozenset({"base_url", "redis_url"})
# Header names are matched by the words in them: a gateway's alternate auth header can be
# called anything (``x-edgee-api-key``, ``x-gateway-auth``).
_SECRET_HEADER_WORDS = ("auth", "key", "token", "secret", "cookie", "password", "credential")


def is_secret_header(name: str) -> bool:
    """Whether a header named ``name`` (lower case) may carry a credential."""
    return any(word in name for word in _SECRET_HEADER_WORDS)


def url_without_password(url: str) -> str:
    """``url`` with its user info and its query replaced: either may hold a credential (a
    token alone before the ``@`` is as secret as a password after a ``:``)."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    netloc = f"{REDACTED}@{host}" if userinfo else parts.netloc
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def repr_without_secrets(struct: msgspec.Struct) -> str:
    """The struct's usual repr, with keys, credential headers and URL passwords left out."""
    parts = []
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if name in _SECRET_FIELDS and value is not None:
            value = REDACTED
        elif name in _URL_FIELDS and isinstance(value, str):
            value = url_without_password(value)
        elif "headers" in name and isinstance(value, Mapping):
            value = {
                k: REDACTED if is_secret_header(str(k).lower()) else v for k, v in value.items()
            }
        parts.append(f"{name}={value!r}")
    return f"{type(struct).__name__}({', '.join(parts)})"
