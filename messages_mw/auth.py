"""Built-in authentication: static gateway keys (stored hashed) and client-key pass-through.

Keys are hashed with SHA-256 when the hook is built and compared with
:func:`hmac.compare_digest`; the plain key is never kept, logged, or put in an error or usage
event (usage events carry the key's configured ``id``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Literal

import msgspec

from .context import Principal
from .errors import AuthenticationError
from .hooks import IncomingRequest
from .redaction import repr_without_secrets

__all__ = [
    "ApiKeyConfig",
    "AuthConfig",
    "PassthroughAuth",
    "StaticKeyAuth",
    "build_auth",
    "hash_key",
    "presented_key",
]


class ApiKeyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One gateway key and its policy.

    Give the key as ``sha256`` (hex digest, preferred in files) or as ``key`` (hashed at
    start-up). ``models`` limits what the key may call (empty: anything); ``tags`` are added to
    each request; ``upstream_api_key`` is the provider key used on this key's behalf (a
    "virtual key"); without it the gateway's configured upstream key is used.
    ``compression`` picks the compression bundle for the key's requests (``"off"`` disables
    it); a request's own compression header still wins.
    """

    id: str
    sha256: str | None = None
    key: str | None = None
    models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    upstream_api_key: str | None = None
    compression: str | None = None

    def __repr__(self) -> str:
        # Logged configuration must not show the gateway key or the virtual key.
        return repr_without_secrets(self)


class AuthConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``mode``: ``none`` (anyone; the client's key goes upstream if no upstream key is
    configured), ``static`` (only the configured keys), ``passthrough`` (a client key is
    required and is forwarded upstream). ``header`` names an alternate header to read the
    gateway key from (Edgee's ``x-edgee-api-key``), leaving ``x-api-key``/``Authorization`` to
    carry the client's own provider key upstream. ``keys`` are for mode ``static`` only
    (``ValueError`` otherwise)."""

    mode: Literal["none", "static", "passthrough"] = "none"
    keys: tuple[ApiKeyConfig, ...] = ()
    header: str | None = None

    def __post_init__(self) -> None:
        # Only static mode checks keys: listed under another mode, they and their policies
        # (models, tags, virtual keys, compression) would be ignored without a word.
        if self.keys and self.mode != "static":
            raise ValueError(
                f"auth.keys are checked only with mode = 'static' (mode is '{self.mode}')"
            )
        if self.header is not None:
            if self.mode != "static":
                # Like keys: only static mode reads it.
                raise ValueError(
                    f"auth.header is read only with mode = 'static' (mode is '{self.mode}')"
                )
            if self.header.lower() in _STANDARD_KEY_HEADERS:
                # Read as the alternate header, "Bearer <key>" would be taken for the key.
                raise ValueError(
                    f"auth.header names another header than x-api-key and authorization, "
                    f"which are always read (got {self.header!r})"
                )


_STANDARD_KEY_HEADERS = frozenset({"x-api-key", "authorization"})


def hash_key(key: str) -> str:
    """The hex SHA-256 digest of ``key``: what ``ApiKeyConfig.sha256`` holds."""
    return hashlib.sha256(key.encode()).hexdigest()


def _digest(presented: str) -> bytes:
    """The SHA-256 digest of a key as the client sent it. Header values arrive decoded as
    latin-1, so encoding them back gives the bytes on the wire: a UTF-8 key then hashes as
    the configured one does (``hash_key`` encodes UTF-8). Raw bytes for lookups: one step less
    than the hex form, on every request."""
    return hashlib.sha256(presented.encode("latin-1", "replace")).digest()


def presented_key(headers: Mapping[str, str], alternate_header: str | None = None) -> str | None:
    """The key a client presented: the alternate header first, then ``x-api-key``, then
    ``Authorization: Bearer`` (the real API prefers ``x-api-key`` when both are sent)."""
    if alternate_header is not None and (value := headers.get(alternate_header)):
        return value.strip()
    if value := headers.get("x-api-key"):
        return value.strip()
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _parse_hex_digest(text: str) -> bytes | None:
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        return None
    return digest if len(digest) == hashlib.sha256().digest_size else None


def _principal(entry: ApiKeyConfig, passthrough: bool) -> Principal:
    return Principal(
        key_id=entry.id,
        allowed_models=frozenset(entry.models) or None,
        tags=entry.tags,
        upstream_api_key=entry.upstream_api_key,
        passthrough=passthrough and entry.upstream_api_key is None,
        compression=entry.compression,
    )


class StaticKeyAuth:
    """Accepts only the configured keys; 401 ``authentication_error`` otherwise.

    With an alternate header configured, the gateway key is read from it and the client's
    ``x-api-key``/``Authorization`` (its own provider key) is passed through upstream.
    """

    # Headers are all it reads: it runs before the body is read (see messages_mw.hooks).
    reads_model = False

    def __init__(self, keys: tuple[ApiKeyConfig, ...], *, header: str | None = None) -> None:
        self._header = header.lower() if header else None
        # Principals are immutable, so each key's two possible principals are built once.
        self._by_hash: dict[bytes, tuple[bytes, Principal, Principal]] = {}
        for entry in keys:
            if bool(entry.sha256) == bool(entry.key):  # an empty one counts as absent
                # Both given could disagree, and one would be ignored without a word.
                raise ValueError(f"auth key {entry.id!r} needs exactly one of 'sha256' and 'key'")
            hex_digest = entry.sha256 or hash_key(entry.key or "")
            digest = _parse_hex_digest(hex_digest)
            if digest is None:
                # A malformed digest could never match: say so now, not with 401s later.
                raise ValueError(f"auth key {entry.id!r}: sha256 must be 64 hex digits")
            if (same := self._by_hash.get(digest)) is not None:
                # The later entry would win without a word, and the first's policy (its
                # models, tags, virtual key) never apply.
                first = same[1].key_id
                raise ValueError(f"auth keys {first!r} and {entry.id!r} are the same key")
            self._by_hash[digest] = (digest, _principal(entry, False), _principal(entry, True))

    def __call__(self, request: IncomingRequest) -> Principal:
        key = presented_key(request.headers, self._header)
        if key is None:
            where = self._header or "x-api-key"
            raise AuthenticationError(f"{where}: an API key is required.")
        digest = _digest(key)
        # Looking up by SHA-256 digest means lookup timing reveals nothing usable about the
        # key; the stored digest is then confirmed with a constant-time comparison.
        found = self._by_hash.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise AuthenticationError("invalid x-api-key")
        if self._header is not None and self._client_has_own_key(request, digest):
            return found[2]
        return found[1]

    def _client_has_own_key(self, request: IncomingRequest, gateway_digest: bytes) -> bool:
        """With an alternate header, the key in ``x-api-key``/``Authorization`` is the client's
        own provider key, to pass through; unless it is the gateway key sent twice (SDK 2.x
        always sends its ``api_key`` as a bearer token)."""
        if self._header is None or not request.headers.get(self._header):
            return False
        own = presented_key(request.headers)
        return own is not None and not hmac.compare_digest(_digest(own), gateway_digest)


class PassthroughAuth:
    """Requires a client key and forwards it upstream; the usage id is a hash prefix."""

    reads_model = False  # headers only: it runs before the body is read

    def __call__(self, request: IncomingRequest) -> Principal:
        key = presented_key(request.headers)
        if key is None:
            raise AuthenticationError("x-api-key: an API key is required.")
        return Principal(key_id="client:" + hash_key(key)[:12], passthrough=True)


def build_auth(config: AuthConfig) -> StaticKeyAuth | PassthroughAuth | None:
    """The built-in auth hook for ``config`` (``None`` for mode ``none``)."""
    if config.mode == "static":
        return StaticKeyAuth(config.keys, header=config.header)
    if config.mode == "passthrough":
        return PassthroughAuth()
    return None
