"""Sample tool inputs for the mock provider: a small value that meets a tool's JSON Schema.

The SDKs' tool helpers check a model's tool input against the schema they wrote (pydantic
models, ``tuple[int, int]``, ``datetime.date``), so the mock meets what those schemas say: types,
``$ref``/``anyOf``/``oneOf``/``allOf``, ``enum``/``const``, numeric bounds and ``multipleOf``,
string lengths and common ``format`` values, ``prefixItems``, ``minItems``, ``uniqueItems``
and ``minProperties``. It does not try ``pattern`` or ``not``.

Every value is built under one budget per tool input: a schema of a few hundred bytes (arrays
of arrays, each with a large ``minItems``) could otherwise ask for gigabytes, built on the
event loop that serves every other request. Once the budget is spent, the rest of the input
gets the smallest values (empty arrays and objects), which may break a bound but keeps the
reply small.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["sample_tool_input"]

# How deep a schema is followed ($ref chains, nested objects): a recursive one must end.
_MAX_SCHEMA_DEPTH = 8
# Array items sampled at most per array, whatever minItems asks.
_MAX_SAMPLED_ITEMS = 8
# What one tool input may hold in all: values, and characters of string values.
_MAX_VALUES = 1_000
_MAX_STRING_CHARS = 64 * 1024

_STRING = "mock"
# What the JSON Schema formats the SDKs' helpers write parse as (pydantic: date, datetime,
# time, timedelta, UUID, HttpUrl, EmailStr, IP addresses).
_FORMAT_SAMPLES = {
    "date": "2025-01-01",
    "date-time": "2025-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "duration": "PT1S",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "iri": "https://example.com/",
    "url": "https://example.com/",
    "email": "mock@example.com",
    "idn-email": "mock@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}


def sample_tool_input(schema: object) -> dict[str, Any]:
    """A tool input: a sample value for each required property of an object schema."""
    if not isinstance(schema, dict):
        return {}
    return _Sampler(schema).an_object(schema, 0)


class _Sampler:
    """Samples values of one schema (``root``, which ``$ref`` pointers resolve in), drawing
    on one budget of values and string characters."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.values_left = _MAX_VALUES
        self.chars_left = _MAX_STRING_CHARS

    def value(self, schema: object, depth: int) -> object:
        if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
            return _STRING
        self.values_left -= 1
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self.value(_referenced(ref, self.root), depth + 1)
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                chosen = next((option for option in options if not _is_null(option)), options[0])
                return self.value(chosen, depth + 1)
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        if "const" in schema:
            return schema["const"]
        kind = _kind(schema)
        if kind == "object":
            return self.an_object(schema, depth)
        if kind == "array":
            return self.an_array(schema, depth)
        if kind in ("integer", "number"):
            return _number_in(schema, kind)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.a_string(schema)

    def an_object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """The required properties, then optional ones, then extra ones where
        ``additionalProperties`` allows them, until ``minProperties`` is met."""
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        extra = schema.get("additionalProperties", True)
        wanted = schema.get("minProperties")
        if isinstance(wanted, int) and wanted > len(names):
            names += [name for name in properties if name not in names][: wanted - len(names)]
            if extra is not False:
                names += [
                    f"{_STRING}{i}" for i in range(min(wanted, _MAX_SAMPLED_ITEMS) - len(names))
                ]
        result: dict[str, Any] = {}
        for name in names:
            if self.values_left <= 0:
                break
            value_schema = properties.get(name, extra if isinstance(extra, dict) else None)
            result[name] = self.value(value_schema, depth + 1)
        return result

    def an_array(self, schema: dict[str, Any], depth: int) -> list[object]:
        """``prefixItems`` (or draft 7's list of ``items``) first, then ``items`` up to
        ``minItems``, distinct under ``uniqueItems`` where the item is a string or number."""
        prefix, items = schema.get("prefixItems"), schema.get("items")
        if isinstance(items, list):
            prefix, items = items, schema.get("additionalItems")
        schemas = list(prefix) if isinstance(prefix, list) else []
        wanted = schema.get("minItems", 0)
        wanted = min(wanted, _MAX_SAMPLED_ITEMS) if isinstance(wanted, int) else 0
        schemas += [items] * max(0, wanted - len(schemas))
        result: list[object] = []
        for item_schema in schemas:
            if self.values_left <= 0:
                break
            item = self.value(item_schema, depth + 1)
            if schema.get("uniqueItems") is True:
                item = _distinct(item, result)
            result.append(item)
        return result

    def a_string(self, schema: dict[str, Any]) -> str:
        text = _FORMAT_SAMPLES.get(schema.get("format"), _STRING)  # type: ignore[arg-type]
        shortest, longest = schema.get("minLength"), schema.get("maxLength")
        if isinstance(shortest, int) and shortest > len(text):
            text = "m" * min(shortest, 1024, max(self.chars_left, 0))
        if isinstance(longest, int) and 0 <= longest < len(text):
            text = text[:longest]
        self.chars_left -= len(text)
        return text


def _kind(schema: dict[str, Any]) -> object:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        if "properties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
    return kind


def _number_in(schema: dict[str, Any], kind: object) -> int | float:
    """1 when the bounds allow it, else the first value found next to a bound (or halfway
    between two) that meets them all, as a multiple of ``multipleOf`` when one is given."""
    low, high = _number(schema.get("minimum")), _number(schema.get("maximum"))
    above, below = _number(schema.get("exclusiveMinimum")), _number(schema.get("exclusiveMaximum"))
    step = _number(schema.get("multipleOf"))
    step = step if step is not None and step > 0 else None
    unit = step or 1

    def allowed(value: float) -> bool:
        return (
            (low is None or value >= low)
            and (above is None or value > above)
            and (high is None or value <= high)
            and (below is None or value < below)
            and (kind != "integer" or value == int(value))
            and (step is None or abs(value / step - round(value / step)) < 1e-9)
        )

    candidates: list[float] = [1, math.ceil(1 / unit) * unit]
    for bound in (low, above):
        if bound is not None:
            first = math.ceil(bound / unit) * unit
            candidates += [first, first + unit]
    for bound in (high, below):
        if bound is not None:
            last = math.floor(bound / unit) * unit
            candidates += [last, last - unit]
    lowest, highest = _first_number(low, above), _first_number(high, below)
    if lowest is not None and highest is not None:
        candidates.append((lowest + highest) / 2)
    value = next((v for v in candidates if allowed(v)), 1)
    return int(value) if value == int(value) else value


def _first_number(*values: int | float | None) -> int | float | None:
    return next((value for value in values if value is not None), None)


def _distinct(item: object, earlier: list[object]) -> object:
    """``item``, changed to differ from ``earlier`` items when it is a string or a number."""
    if item not in earlier:
        return item
    if isinstance(item, str):
        return f"{item}{len(earlier)}"
    if isinstance(item, int | float) and not isinstance(item, bool):
        return item + len(earlier)
    return item


def _number(value: object) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _is_null(schema: object) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _referenced(ref: str, root: object) -> object:
    """What a local JSON pointer (``#/$defs/Point``) names in ``root``; ``None`` otherwise."""
    if not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node
