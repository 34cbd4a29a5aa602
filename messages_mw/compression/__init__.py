"""Token compression of coding agents' tool output that never breaks prompt caching."""

from .bundles import BUNDLE_NAMES, Bundle, bundle_named, detect_bundle
from .engine import CompressionResult, compress_request
from .memo import CompressionMemo
from .text import TextOptions, compress_tool_text

__all__ = [
    "BUNDLE_NAMES",
    "Bundle",
    "CompressionMemo",
    "CompressionResult",
    "TextOptions",
    "bundle_named",
    "compress_request",
    "compress_tool_text",
    "detect_bundle",
]
