"""What a request cost: per-model list prices, and ``usage.cost`` for JSON responses.

Prices are USD per million tokens (MTok), as Anthropic publishes them, and web searches USD per
thousand; override them in config (``pricing``). Costs are list-price estimates: batch
discounts and the long-context surcharge (Sonnet 4/4.5 prompts over 200K tokens) are not
modelled; 1-hour cache writes (2x input) and web searches are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType

import msgspec

from .memo import Memo
from .protocol import DECODE_ERRORS
from .streaming import TokenUsage

__all__ = ["DEFAULT_PRICES", "ModelPrice", "PricingTable", "add_cost_to_response_body"]

# Anthropic's cache pricing: a write costs 1.25x input (5-minute cache) or 2x (1-hour cache),
# a read 0.1x.
_CACHE_WRITE_FACTOR = 1.25
_CACHE_WRITE_1H_FACTOR = 2.0
_CACHE_READ_FACTOR = 0.1
# Web search: USD 10 per thousand searches, whatever the model.
_WEB_SEARCH_PER_THOUSAND = 10.0

# What may follow a priced id in a longer one: a snapshot date (``-20250929``, Vertex's
# ``@20250929``), ``-latest`` or Bedrock's version (``-v1``, ``-v1:0``), then anything (a
# dated Bedrock id's ``-v1:0``). Nothing else, so that an unknown future ``claude-opus-4-9``
# is not silently billed as ``claude-opus-4``.
_VERSION_SUFFIX = re.compile(r"[-@](?:\d{8}|latest|v\d+(?::\d+)?)(?![0-9A-Za-z])")
# Bedrock's ids put the vendor first, and its cross-region profiles a region before that:
# ``anthropic.claude-sonnet-4-5-20250929-v1:0``, ``us.anthropic.claude-…``, ``us-gov.…``.
_BEDROCK_PREFIX = re.compile(r"(?:[a-z]+(?:-[a-z]+)*\.)?anthropic\.")


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model's prices in USD per million tokens.

    ``cache_write`` defaults to 1.25 x ``input`` (the 5-minute cache), ``cache_write_1h`` to
    2 x ``input`` and ``cache_read`` to 0.1 x ``input``; after construction all three are
    numbers. ``web_search`` is USD per thousand searches. Raises
    :class:`ValueError` (a ``msgspec.ValidationError`` when decoding config) for a negative or
    non-finite price.
    """

    input: float
    output: float
    cache_write: float | None = None
    cache_read: float | None = None
    cache_write_1h: float | None = None
    web_search: float = _WEB_SEARCH_PER_THOUSAND

    def __post_init__(self) -> None:
        for name in (
            "input",
            "output",
            "cache_write",
            "cache_read",
            "cache_write_1h",
            "web_search",
        ):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} price must be a finite, non-negative number")
        if self.cache_write is None:
            cache_write = round(self.input * _CACHE_WRITE_FACTOR, 10)
            msgspec.structs.force_setattr(self, "cache_write", cache_write)
        if self.cache_read is None:
            cache_read = round(self.input * _CACHE_READ_FACTOR, 10)
            msgspec.structs.force_setattr(self, "cache_read", cache_read)
        if self.cache_write_1h is None:
            cache_write_1h = round(self.input * _CACHE_WRITE_1H_FACTOR, 10)
            msgspec.structs.force_setattr(self, "cache_write_1h", cache_write_1h)


# The 5.x models, as their model pages on platform.claude.com list them (November 2026).
# Opus 5.5 and the Sonnet 5 line read cached input at 0.05 x input, not the usual 0.1 x.
_OPUS_5_5 = ModelPrice(input=4.0, output=20.0, cache_write=5.0, cache_write_1h=8.0, cache_read=0.2)
_OPUS_5 = ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_write_1h=10.0, cache_read=0.5)
_SONNET_5 = ModelPrice(input=2.0, output=10.0, cache_write=2.5, cache_write_1h=4.0, cache_read=0.2)
# $10 / $50 as listed; its page gives no cache rates, so the standard multipliers apply.
_FABLE_5 = ModelPrice(input=10.0, output=50.0)
_OPUS_4 = ModelPrice(input=15.0, output=75.0, cache_write=18.75, cache_read=1.5)
_OPUS_4_5 = ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5)
_SONNET = ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3)
_HAIKU_4_5 = ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.1)
_HAIKU_3_5 = ModelPrice(input=0.8, output=4.0, cache_write=1.0, cache_read=0.08)
_HAIKU_3 = ModelPrice(input=0.25, output=1.25, cache_write=0.3, cache_read=0.03)

DEFAULT_PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {
        # USD per MTok, as published; override in config. Haiku 5.5 is priced by prompt
        # length, which one price per model cannot say: price it in config.
        "claude-fable-5-1": _FABLE_5,
        "claude-fable-5": _FABLE_5,
        "claude-opus-5-5": _OPUS_5_5,
        "claude-opus-5": _OPUS_5,
        "claude-sonnet-5-5": _SONNET_5,
        "claude-sonnet-5": _SONNET_5,
        "claude-opus-4-8": _OPUS_4_5,
        # No price page found for 4.7: assumed equal to 4.6 and 4.8, on either side of it.
        "claude-opus-4-7": _OPUS_4_5,
        "claude-sonnet-4-6": _SONNET,
        "claude-opus-4-6": _OPUS_4_5,
        "claude-opus-4-5": _OPUS_4_5,
        "claude-opus-4-1": _OPUS_4,
        "claude-opus-4-0": _OPUS_4,
        "claude-opus-4": _OPUS_4,
        "claude-sonnet-4-5": _SONNET,
        "claude-sonnet-4-0": _SONNET,
        "claude-sonnet-4": _SONNET,
        "claude-haiku-4-5": _HAIKU_4_5,
        "claude-3-7-sonnet": _SONNET,
        "claude-3-5-sonnet": _SONNET,
        "claude-3-5-haiku": _HAIKU_3_5,
        "claude-3-opus": _OPUS_4,
        "claude-3-haiku": _HAIKU_3,
    }
)


_MEMO_SIZE = 1024


class PricingTable:
    """Prices requests by model id.

    An id is priced by its exact entry, else by the longest entry it starts with when the rest
    is a snapshot suffix: ``claude-sonnet-4-5`` prices ``claude-sonnet-4-5-20250929``,
    ``claude-sonnet-4-5@20250929`` and Bedrock's
    ``us.anthropic.claude-sonnet-4-5-20250929-v1:0``. To extend the defaults rather than
    replace them, pass ``{**DEFAULT_PRICES, **overrides}``.

    Raises :class:`TypeError` at construction if a price is not a :class:`ModelPrice`.
    """

    def __init__(self, prices: Mapping[str, ModelPrice] = DEFAULT_PRICES) -> None:
        for model, price in prices.items():
            if not isinstance(price, ModelPrice):
                raise TypeError(f"price for {model!r} must be a ModelPrice")
        self._prices = dict(prices)
        self._by_length = sorted(self._prices, key=len, reverse=True)
        # A dated id (what Claude Code sends) or an unknown one walks every entry: 2-4 us,
        # two or three times a request under a spend budget. Ids repeat; client-chosen
        # ones that do not cost memory only up to the bound (request validation keeps a
        # model id under 1 KB, so about 1 MB).
        self._found: Memo[str, ModelPrice | None] = Memo(self._look_up, _MEMO_SIZE)

    def price_for(self, model: str | None) -> ModelPrice | None:
        """The price that applies to ``model``, or ``None`` when it is unknown."""
        return None if model is None else self._found[model]

    def _look_up(self, model: str) -> ModelPrice | None:
        price = self._prices.get(model)
        if price is not None:
            return price
        if bedrock := _BEDROCK_PREFIX.match(model):
            model = model[bedrock.end() :]
            price = self._prices.get(model)  # an undated id: anthropic.claude-sonnet-4-6
            if price is not None:
                return price
        for known in self._by_length:
            if model.startswith(known) and _VERSION_SUFFIX.match(model, len(known)):
                return self._prices[known]
        return None

    def answer_cost(self, asked: str | None, ran: str | None, usage: TokenUsage) -> float | None:
        """USD for an answer's ``usage`` at the prices of the model that ran it (``ran``, the
        model the answer names) when that one has a price, else of the model ``asked``.
        They differ when the upstream fell back on its own (Anthropic's ``fallbacks``): the
        bill follows the model that ran. A dated snapshot of the model asked costs the same."""
        if ran is not None and ran != asked and self.price_for(ran) is not None:
            return self.cost(ran, usage)
        return self.cost(asked, usage)

    def cost(self, model: str | None, usage: TokenUsage) -> float | None:
        """USD for ``usage`` at ``model``'s prices (rounded to 1e-10), ``None`` if unknown."""
        price = self.price_for(model)
        if price is None:
            return None
        write, write_1h, read = price.cache_write, price.cache_write_1h, price.cache_read
        # Filled by ModelPrice.__post_init__ (asserted, not cast: this runs for every request).
        assert write is not None and write_1h is not None and read is not None
        # The 1-hour writes are part of the cache writes the usage reports.
        written = usage.cache_creation_input_tokens
        written_1h = usage.cache_creation_1h_input_tokens
        if written_1h > written:
            written_1h = written
        per_million = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + (written - written_1h) * write
            + written_1h * write_1h
            + usage.cache_read_input_tokens * read
        )
        searches = usage.web_search_requests * price.web_search / 1000
        return round(per_million / 1_000_000 + searches, 10)


_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()


def add_cost_to_response_body(body: bytes, cost: float) -> bytes:
    """Return a non-streaming Messages response with ``usage.cost`` set to ``cost`` (USD).

    Every other value is carried over as its original bytes, in its original order; only the
    top-level and ``usage`` objects' own whitespace and member-name escapes are normalised
    (Anthropic sends compact JSON with ASCII names, which come out identical). A body that is
    not a JSON object with a ``usage`` object is returned unchanged.
    """
    try:
        message = _object_decoder.decode(body)
        raw_usage = message.get("usage")
        if raw_usage is None:
            return body
        usage = _object_decoder.decode(raw_usage)
    except DECODE_ERRORS:
        return body
    usage["cost"] = msgspec.Raw(_encoder.encode(cost))
    message["usage"] = msgspec.Raw(_encoder.encode(usage))
    return _encoder.encode(message)
