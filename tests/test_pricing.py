"""Model prices, cost arithmetic, and ``usage.cost`` in JSON responses."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages_mw.pricing import (
    DEFAULT_PRICES,
    ModelPrice,
    PricingTable,
    add_cost_to_response_body,
)
from messages_mw.streaming import TokenUsage


def test_cost_counts_every_kind_of_token() -> None:
    table = PricingTable({"m": ModelPrice(input=3, output=15, cache_write=3.75, cache_read=0.3)})
    usage = TokenUsage(
        input_tokens=1000,
        output_tokens=500,
        cache_creation_input_tokens=2000,
        cache_read_input_tokens=3000,
    )
    # 1000*3 + 500*15 + 2000*3.75 + 3000*0.3 = 18,900 USD per million tokens
    assert table.cost("m", usage) == pytest.approx(0.0189)
    assert table.cost("m", TokenUsage()) == 0.0


def test_one_hour_cache_writes_and_web_searches_have_their_own_prices() -> None:
    table = PricingTable({"m": ModelPrice(input=3, output=15)})
    usage = TokenUsage(
        cache_creation_input_tokens=3000, cache_creation_1h_input_tokens=1000, web_search_requests=4
    )
    # 2000*3.75 + 1000*6 per million tokens, and 4 searches at USD 10 per thousand
    assert table.cost("m", usage) == pytest.approx(0.0135 + 0.04)
    custom = PricingTable({"m": ModelPrice(input=3, output=15, cache_write_1h=5, web_search=0)})
    assert custom.cost("m", usage) == pytest.approx(0.0125)


def test_opus_5_5_and_the_sonnet_5_line_read_cache_at_their_published_rate() -> None:
    # 0.05 x input, not the 0.1 x the defaults would give.
    table = PricingTable()
    for model, read, write_1h in (
        ("claude-opus-5-5", 0.20, 8.0),
        ("claude-sonnet-5-5", 0.20, 4.0),
    ):
        usage = TokenUsage(cache_read_input_tokens=1_000_000)
        assert table.cost(model, usage) == pytest.approx(read)
        hour = TokenUsage(cache_creation_input_tokens=10**6, cache_creation_1h_input_tokens=10**6)
        assert table.cost(model, hour) == pytest.approx(write_1h)


def test_cache_prices_default_to_the_five_minute_cache_factors() -> None:
    price = ModelPrice(input=3.0, output=15.0)
    assert price.cache_write == 3.75
    assert price.cache_read == 0.3
    assert price.cache_write_1h == 6.0
    explicit = ModelPrice(input=0.25, output=1.25, cache_write=0.3, cache_read=0.03)
    assert (explicit.cache_write, explicit.cache_read) == (0.3, 0.03)


def test_prices_decode_from_config_and_reject_bad_values() -> None:
    price = msgspec.json.decode(b'{"input": 1, "output": 5}', type=ModelPrice)
    assert price == ModelPrice(input=1, output=5, cache_write=1.25, cache_read=0.1)
    with pytest.raises(msgspec.ValidationError, match="non-negative"):
        msgspec.json.decode(b'{"input": -1, "output": 5}', type=ModelPrice)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"input": 1, "output": 5, "cache": 1}', type=ModelPrice)
    with pytest.raises(ValueError, match="cache_read"):
        ModelPrice(input=1, output=5, cache_read=float("nan"))


@pytest.mark.parametrize(
    ("model", "expected_input"),
    [
        ("claude-sonnet-4-5", 3.0),
        ("claude-sonnet-4-5-20250929", 3.0),
        ("claude-sonnet-4-5@20250929", 3.0),
        ("claude-sonnet-4-5-20250929-v1:0", 3.0),
        # Bedrock: the vendor first, and a cross-region profile's region before it.
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", 3.0),
        ("us.anthropic.claude-haiku-4-5-20251001-v1:0", 1.0),
        ("global.anthropic.claude-opus-4-1-20250805-v1:0", 15.0),
        ("us-gov.anthropic.claude-sonnet-4-5-20250929-v1:0", 3.0),
        ("claude-3-5-haiku-latest", 0.8),
        ("claude-opus-4-20250514", 15.0),
        ("claude-opus-4-1-20250805", 15.0),
        ("claude-opus-4-5-20251101", 5.0),
        ("claude-haiku-4-5-20251001", 1.0),
        ("claude-3-haiku-20240307", 0.25),
        ("claude-sonnet-4-6", 3.0),
        # Undated Bedrock ids, with or without their version.
        ("anthropic.claude-sonnet-4-6", 3.0),
        ("anthropic.claude-opus-4-6-v1", 5.0),
        ("us.anthropic.claude-opus-5-5-v1:0", 4.0),
        # The 5.x line, as published.
        ("claude-opus-5-5", 4.0),
        ("claude-opus-5", 5.0),
        ("claude-sonnet-5-5", 2.0),
        ("claude-sonnet-5", 2.0),
        ("claude-fable-5-1", 10.0),
        ("claude-opus-4-8", 5.0),
    ],
)
def test_default_prices_match_dated_ids_by_longest_prefix(
    model: str, expected_input: float
) -> None:
    price = PricingTable().price_for(model)
    assert price is not None
    assert price.input == expected_input


@pytest.mark.parametrize(
    "model",
    [
        None,
        "",
        "gpt-4o",
        "claude-opus-4-9",
        "claude-sonnet-4-50",
        "claude-sonnet-4x",
        "anthropic.claude-opus-4-9-v1:0",
        "claude-opus-5-6",  # not claude-opus-5 with a suffix
        "claude-haiku-5-5",  # priced by prompt length: left to the config
        "openai.claude-sonnet-4-5-20250929",
    ],
)
def test_unknown_models_have_no_cost(model: str | None) -> None:
    assert PricingTable().cost(model, TokenUsage(input_tokens=1000)) is None


def test_default_prices_are_read_only_and_each_known_id_prices_itself() -> None:
    with pytest.raises(TypeError):
        DEFAULT_PRICES["claude-x"] = ModelPrice(input=1, output=1)  # type: ignore[index]
    table = PricingTable(DEFAULT_PRICES)
    for model, price in DEFAULT_PRICES.items():
        assert table.price_for(model) is price


def test_overrides_extend_the_defaults() -> None:
    custom = ModelPrice(input=2, output=4)
    table = PricingTable({**DEFAULT_PRICES, "my-model": custom})
    assert table.cost("my-model", TokenUsage(input_tokens=1_000_000)) == 2.0
    assert table.price_for("claude-haiku-4-5") is DEFAULT_PRICES["claude-haiku-4-5"]


def test_a_table_rejects_anything_but_model_prices() -> None:
    with pytest.raises(TypeError, match="'m'"):
        PricingTable({"m": {"input": 1, "output": 1}})  # type: ignore[dict-item]


def test_cost_is_added_to_usage_keeping_other_bytes() -> None:
    body = (
        b'{"id":"msg_1","type":"message","content":[{"type":"text","text":"caf\\u00e9 1.50"}],'
        b'"usage":{"input_tokens":12,"output_tokens":1.50e0,"server_tool_use":{ "a" : 1 }}}'
    )
    assert add_cost_to_response_body(body, 0.0125) == (
        b'{"id":"msg_1","type":"message","content":[{"type":"text","text":"caf\\u00e9 1.50"}],'
        b'"usage":{"input_tokens":12,"output_tokens":1.50e0,"server_tool_use":{ "a" : 1 },'
        b'"cost":0.0125}}'
    )


def test_an_existing_cost_is_replaced_in_place() -> None:
    body = b'{"usage":{"cost":1,"input_tokens":2}}'
    assert add_cost_to_response_body(body, 0.5) == b'{"usage":{"cost":0.5,"input_tokens":2}}'


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"usage":',
        b"[1, 2]",
        b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}',
        b'{"usage": 5}',
        b'{"usage": null}',
    ],
)
def test_bodies_without_a_usage_object_are_returned_unchanged(body: bytes) -> None:
    assert add_cost_to_response_body(body, 1.0) is body


_keys = st.text(st.characters(codec="utf-8"), max_size=12).filter(
    lambda key: key not in {"usage", "cost"}
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_fields = st.dictionaries(_keys, _json_values, max_size=6)


@given(
    before=_fields,
    after=_fields,
    usage=_fields,
    cost=st.floats(min_value=0, max_value=1e6),
)
def test_only_usage_cost_changes_in_compact_bodies(
    before: dict[str, Any], after: dict[str, Any], usage: dict[str, Any], cost: float
) -> None:
    after = {key: value for key, value in after.items() if key not in before}
    message = {**before, "usage": usage, **after}
    expected = {**before, "usage": {**usage, "cost": cost}, **after}
    result = add_cost_to_response_body(msgspec.json.encode(message), cost)
    assert result == msgspec.json.encode(expected)


_raw_object = msgspec.json.Decoder(dict[str, msgspec.Raw])


@given(
    message=_fields,
    usage=_fields,
    indent=st.none() | st.integers(0, 4),
    ensure_ascii=st.booleans(),
)
def test_every_value_keeps_its_original_bytes(
    message: dict[str, Any], usage: dict[str, Any], indent: int | None, ensure_ascii: bool
) -> None:
    body = json.dumps({**message, "usage": usage}, indent=indent, ensure_ascii=ensure_ascii)
    original = _raw_object.decode(body.encode())
    result = _raw_object.decode(add_cost_to_response_body(body.encode(), 0.25))
    assert list(result) == list(original)
    for key, raw in original.items():
        if key != "usage":
            assert bytes(result[key]) == bytes(raw)
    original_usage = _raw_object.decode(original["usage"])
    result_usage = _raw_object.decode(result["usage"])
    assert list(result_usage) == [*original_usage, "cost"]
    assert bytes(result_usage.pop("cost")) == b"0.25"
    assert {key: bytes(raw) for key, raw in result_usage.items()} == {
        key: bytes(raw) for key, raw in original_usage.items()
    }


def test_lookups_keep_their_answers_however_many_ids_clients_invent() -> None:
    # Answers are kept per id (a dated id walks every entry); invented ids must neither
    # grow that without bound nor change what a known id is priced at.
    table = PricingTable()
    dated = "claude-sonnet-4-5-20250929"
    expected = DEFAULT_PRICES["claude-sonnet-4-5"]

    def invent(first: int, count: int) -> None:
        for i in range(first, first + count):
            assert table.price_for(f"claude-invented-{i}") is None
            assert table.price_for(dated) is expected

    tracemalloc.start()
    try:
        invent(0, 2_000)
        kept = tracemalloc.get_traced_memory()[0]
        invent(2_000, 20_000)  # unbounded, this would keep 2 MB more
        grown = tracemalloc.get_traced_memory()[0] - kept
    finally:
        tracemalloc.stop()
    assert grown < 200_000
