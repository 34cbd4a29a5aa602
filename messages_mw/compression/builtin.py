"""The built-in compressor: picks a bundle per request and runs the engine in the hook slot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from ..config import CompressionConfig, ConfigError
from ..context import CompressionReport, RequestContext
from ..errors import InvalidRequestError
from .bundles import BUNDLE_NAMES, Bundle, bundle_named, detect_bundle
from .engine import CompressionResult, compress_request
from .memo import CompressionMemo

logger = logging.getLogger("messages_mw.compression")

__all__ = ["BundleCompressor", "format_report"]

_OFF = frozenset({"off", "none", "false", "0"})


class BundleCompressor:
    """The default ``compressor`` hook, set up by :class:`~messages_mw.config.CompressionConfig`.

    The bundle comes from the request's ``header`` (a client that names its agent knows best),
    then the key's policy, then the user agent, then the configured default; with none of
    them the body goes upstream exactly as the client sent it. An unknown bundle in the header
    is a 400 naming the header. Each compressed request gets a :class:`CompressionReport` on
    its context (hence in its usage event) and a ``report_header`` on its response.
    """

    def __init__(
        self,
        config: CompressionConfig,
        *,
        header: str,
        report_header: str,
        key_bundles: Iterable[str | None] = (),
        engine: Callable[..., CompressionResult | None] = compress_request,
    ) -> None:
        """``key_bundles`` are the API keys' bundle names, checked here with the default one
        (an unknown name raises :class:`ConfigError`); ``engine`` compresses a body, called as
        :func:`~messages_mw.compression.engine.compress_request` is (tests hand in a failing
        one)."""
        self._config = config
        self._engine = engine
        self._header = header.lower()
        self._report_header = report_header
        for name in (config.default_bundle, *key_bundles):
            if name is not None and name.lower() not in _OFF and bundle_named(name) is None:
                raise ConfigError(f"compression: unknown bundle '{name}'; use one of {_choices()}.")
        self._default = _named(config.default_bundle)
        # One memo per gateway: every request of a session resends the history it remembers.
        self._memo = CompressionMemo(config.memo_bytes) if config.memo_bytes else None

    def __call__(
        self, body: bytes, context: RequestContext
    ) -> bytes | Awaitable[bytes | None] | None:
        """The compressed body, ``None`` to forward the body as it is, or for a body over
        ``inline_max_bytes`` an awaitable that compresses it in a worker thread."""
        bundle = self.choose(context)
        if bundle is None:
            return None
        if len(body) > self._config.inline_max_bytes:
            return self._in_thread(body, bundle, context)
        return self._reported(self._compress(body, bundle), context)

    async def _in_thread(
        self, body: bytes, bundle: Bundle, context: RequestContext
    ) -> bytes | None:
        result = await asyncio.to_thread(self._compress, body, bundle)
        return self._reported(result, context)

    def _compress(self, body: bytes, bundle: Bundle) -> CompressionResult | None:
        try:
            return self._engine(body, bundle, align_cache=self._config.align_cache, memo=self._memo)
        except Exception:
            # Compression only saves tokens: a bug in it must not cost the client its answer.
            logger.exception("compression failed; the body goes upstream as it came")
            return None

    def _reported(self, result: CompressionResult | None, context: RequestContext) -> bytes | None:
        if result is None:
            return None
        report = _report(result)
        context.compression = report
        context.response_headers.append((self._report_header, format_report(report)))
        return result.body

    def choose(self, context: RequestContext) -> Bundle | None:
        """The bundle for this request, or ``None`` to leave its body untouched."""
        if self._config.from_header and (value := context.request_headers.get(self._header)):
            value = value.strip()
            bundle = _named(value)
            if bundle is None and value.lower() not in _OFF:
                raise InvalidRequestError(
                    f"{self._header}: unknown compression bundle '{value}'; use one of "
                    f"{_choices()}, or off."
                )
            return bundle
        principal = context.principal
        if principal is not None and principal.compression is not None:
            return _named(principal.compression)
        if self._config.detect_user_agent:
            detected = detect_bundle(context.request_headers.get("user-agent", ""))
            if detected is not None:
                return detected
        return self._default


def format_report(report: CompressionReport) -> str:
    """The response header's value, e.g. ``claude-code; saved-bytes=1200; saved-tokens=300;
    dur=0.41`` (milliseconds, as in ``Server-Timing``)."""
    return (
        f"{report.bundle}; saved-bytes={report.bytes_saved}; "
        f"saved-tokens={report.tokens_saved}; dur={report.duration_ms:.2f}"
    )


def _named(name: str | None) -> Bundle | None:
    if name is None or name.lower() in _OFF:
        return None
    return bundle_named(name)


def _choices() -> str:
    return ", ".join(BUNDLE_NAMES)


def _report(result: CompressionResult) -> CompressionReport:
    return CompressionReport(
        bundle=result.bundle,
        bytes_before=result.bytes_before,
        bytes_after=result.bytes_after,
        tokens_saved=result.tokens_saved,
        duration_ms=result.seconds * 1000,
    )
