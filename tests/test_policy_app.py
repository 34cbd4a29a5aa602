"""Policy features through the in-process app: extra_headers, cost, and one event per request."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import tracemalloc
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from messages_mw import (
    AnthropicProvider,
    BreakerPolicy,
    FallbackConfig,
    Gateway,
    GatewayConfig,
    OpenAIProvider,
    RequestContext,
    UpstreamConfig,
    UsageEvent,
)
from messages_mw.auth import ApiKeyConfig, AuthConfig
from messages_mw.config import OpenAIUpstreamConfig
from messages_mw.context import Principal
from messages_mw.errors import (
    PermissionDeniedError,
    RateLimitError,
    UnsupportedByProviderError,
)
from messages_mw.fallback import Target
from messages_mw.hooks import IncomingRequest, RouteHook
from messages_mw.limits import LimitRule, LimitsConfig, RateLimiter
from messages_mw.pricing import PricingTable
from messages_mw.providers.base import ProviderRequest, ProviderResponse
from messages_mw.streaming import TokenUsage

from .inprocess import Recorder, client_for, make_gateway, post_scope, run
from .openai_upstream import completion_json
from .servers import error_json, message_json, sse, text_stream_events


def _body(**fields: object) -> bytes:
    base = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return json.dumps({**base, **fields}).encode()


async def _post(gateway: object, body: bytes, **headers: str) -> httpx.Response:
    async with client_for(gateway) as client:
        merged = {"content-type": "application/json", "x-api-key": "sk-client", **headers}
        return await client.post("/v1/messages", content=body, headers=merged)


def test_extra_headers_merge_allowed_betas_and_are_stripped() -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    body = _body(extra_headers={"anthropic-beta": "context-1m-2025-08-07"}, future={"x": 1})
    response = run(_post(gateway, body, **{"anthropic-beta": "interleaved-thinking-2025-05-14"}))
    assert response.status_code == 200
    sent = recorder.requests[0]
    assert sent.headers["anthropic-beta"] == (
        "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    )
    forwarded = json.loads(sent.content)
    assert "extra_headers" not in forwarded and forwarded["future"] == {"x": 1}


@pytest.mark.parametrize("name", ["x-api-key", "Authorization", "host", "x-custom", "connection"])
def test_extra_headers_cannot_set_other_headers(name: str) -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    response = run(_post(gateway, _body(extra_headers={name: "sk-evil"})))
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(f"extra_headers.{name.lower()}:")
    assert recorder.requests == []


def test_an_empty_extra_header_name_is_named_as_such() -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    response = run(_post(gateway, _body(extra_headers={"": "x"})))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "extra_headers: a header name must not be empty."
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("extra_headers", "message"),
    [
        ({"anthropic-beta": 5}, "extra_headers.anthropic-beta: Input should be a valid string"),
        ({"Anthropic-Beta": None}, "extra_headers.Anthropic-Beta: Input should be a valid string"),
        (None, "extra_headers: Input should be an object of header names to string values"),
    ],
)
def test_a_bad_extra_headers_value_is_named_by_its_path(
    extra_headers: object, message: str
) -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    response = run(_post(gateway, _body(extra_headers=extra_headers)))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (7, "fallbacks.1: Expected `str`, got `int`"),
        ("anthropic/", "fallbacks.1: 'anthropic/' names a provider but no model."),
        ("", "fallbacks.1: a target must name a model."),
        (" ", "fallbacks.1: a target must name a model."),
    ],
)
def test_a_bad_body_fallbacks_entry_is_named_by_its_path(entry: object, message: str) -> None:
    # Consumed whatever its entries name ("always"), so a malformed one is the client's error,
    # found before anything goes upstream (an empty one would go as a fallback's model).
    recorder = Recorder()
    gateway, _ = make_gateway(
        recorder, config=GatewayConfig(fallback=FallbackConfig(body_fallbacks="always"))
    )
    response = run(_post(gateway, _body(fallbacks=["anthropic/claude-haiku-4-5", entry])))
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message
    assert recorder.requests == []


def test_a_router_candidate_naming_no_model_is_named_by_its_path() -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    body = _body(model="auto", router_candidates=["anthropic/claude-haiku-4-5", "anthropic/"])
    response = run(_post(gateway, body))
    assert response.status_code == 400
    message = "router_candidates.1: 'anthropic/' names a provider but no model."
    assert response.json()["error"]["message"] == message


@pytest.mark.parametrize("tags", [None, [], ["team-a"]])
def test_metadata_tags_never_go_upstream_even_when_null(tags: object) -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    body = _body(metadata={"user_id": "u-1", "tags": tags})
    assert run(_post(gateway, body)).status_code == 200
    assert json.loads(recorder.requests[0].content)["metadata"] == {"user_id": "u-1"}


def test_extra_headers_allow_list_is_configurable() -> None:
    recorder = Recorder()
    config = GatewayConfig(extra_headers_allowed=("anthropic-beta", "x-team"))
    gateway, _ = make_gateway(recorder, config=config)
    assert run(_post(gateway, _body(extra_headers={"X-Team": "blue"}))).status_code == 200
    assert "x-team" not in recorder.requests[0].headers  # allowed, yet not a forwarded name
    bad = run(_post(gateway, _body(extra_headers={"x-team": "a\r\nx-api-key: b"})))
    assert bad.status_code == 400


@pytest.mark.parametrize("value", ["a\x00b", "a\x7f", "a\x1bb", "beta-\u2603"])
def test_extra_headers_values_must_be_valid_field_values(value: str) -> None:
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    response = run(_post(gateway, _body(extra_headers={"anthropic-beta": value})))
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("extra_headers.anthropic-beta:")
    assert recorder.requests == []


@pytest.mark.parametrize("model", ["claude-\u2603", "claude-\x7f", "claude-\U0001f600"])
def test_the_debug_report_stays_a_valid_header_for_any_model_name(model: str) -> None:
    gateway, _ = make_gateway(Recorder())
    response = run(_post(gateway, _body(model=model), **{"x-mw-debug": "1"}))
    assert response.status_code == 200
    raw = dict(response.headers.raw)[b"x-mw-debug-attempts"]
    assert all(0x20 <= byte < 0x7F for byte in raw)
    (attempt,) = json.loads(raw)
    assert attempt["target"] == f"anthropic/{model}"


def test_a_hook_error_header_beyond_latin_1_is_still_answered() -> None:
    def refuse(request: object) -> None:
        raise PermissionDeniedError("no", headers={"x-reason": "snow \u2603"})

    recorder = Recorder()
    provider = AnthropicProvider(
        UpstreamConfig(base_url="http://upstream.test"), transport=httpx.MockTransport(recorder)
    )
    gateway = Gateway(provider=provider, auth=refuse)
    response = run(_post(gateway, _body()))
    assert response.status_code == 403
    assert response.headers["x-reason"] == "snow%20%E2%98%83"


def test_a_request_refused_for_its_gateway_fields_costs_no_quota() -> None:
    rules = (LimitRule(scope="key", requests_per_minute=2),)
    gateway, _ = make_gateway(Recorder(), config=GatewayConfig(limits=LimitsConfig(rules=rules)))
    refused = [
        _body(extra_headers={"x-api-key": "sk-evil"}),
        _body(extra_headers={"anthropic-beta": "a\x00b"}),
        _body(fallbacks=["anthropic/a", "anthropic/b", "anthropic/c", "anthropic/d"]),
        # Models that route nowhere: a provider without a model, the auto model alone.
        _body(model="anthropic/"),
        _body(model="auto"),
    ]
    for body in refused:
        assert run(_post(gateway, body)).status_code == 400
    remaining = [
        run(_post(gateway, _body())).headers.get("anthropic-ratelimit-requests-remaining")
        for _ in range(2)
    ]
    assert remaining == ["1", "0"]
    assert run(_post(gateway, _body())).status_code == 429


def _answer_naming_the_model_asked(request: httpx.Request) -> httpx.Response:
    """A message naming the model the request asked for, as Anthropic's answers do."""
    answer = message_json(model=json.loads(request.content)["model"])
    return httpx.Response(200, content=answer, headers={"content-type": "application/json"})


def _budgeted(**limits: Any) -> tuple[Gateway, Recorder, list[RequestContext]]:
    """A gateway whose tag 'metered' has a spend budget; other requests have none."""
    rules = (LimitRule(scope="tag", match="metered", spend=100.0),)
    config = GatewayConfig(limits=LimitsConfig(rules=rules, **limits))
    recorder = Recorder(_answer_naming_the_model_asked)
    gateway, finished = make_gateway(recorder, config=config)
    return gateway, recorder, finished


def test_a_spend_budget_refuses_models_it_could_not_price() -> None:
    # Its cost unknown, such a request would never count against the budget: any client
    # could pick a new or unlisted model id and spend without limit.
    gateway, recorder, _ = _budgeted()
    metered = {"x-mw-tags": "metered"}
    refused = run(_post(gateway, _body(model="claude-sonnet-4-7"), **metered))
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert refused.json()["error"]["message"].startswith("model: 'claude-sonnet-4-7'")
    # A client-named fallback is held to the same rule: it may serve the answer.
    fallback = _body(fallbacks=["anthropic/claude-sonnet-4-7"])
    assert run(_post(gateway, fallback, **metered)).status_code == 403
    assert recorder.requests == []
    assert run(_post(gateway, _body(), **metered)).status_code == 200
    # Without a budget over it, no price is needed.
    assert run(_post(gateway, _body(model="claude-sonnet-4-7"))).status_code == 200


@pytest.mark.parametrize(
    "fallbacks",
    [
        [{"model": "claude-sonnet-4-7"}],
        ["claude-sonnet-4-7"],
        [{"model": "claude-haiku-4-5"}, {"model": "claude-sonnet-4-7"}],
        "default",
    ],
)
def test_a_spend_budget_refuses_fallbacks_the_upstream_would_run_without_a_price(
    fallbacks: object,
) -> None:
    # Anthropic's own fallbacks, passed on: the upstream may answer with one of them, whose
    # cost the budget could not count, or (with "default") with a model of its choosing.
    gateway, recorder, _ = _budgeted()
    metered = {"x-mw-tags": "metered"}
    refused = run(_post(gateway, _body(fallbacks=fallbacks), **metered))
    assert refused.status_code == 403
    assert refused.json()["error"]["message"].startswith("fallbacks")
    assert recorder.requests == []
    priced = _body(fallbacks=[{"model": "claude-haiku-4-5"}])
    assert run(_post(gateway, priced, **metered)).status_code == 200
    # Without a budget over it, no price is needed.
    assert run(_post(gateway, _body(fallbacks=fallbacks))).status_code == 200


def test_cost_follows_the_model_the_upstream_says_ran() -> None:
    # Anthropic's own fallbacks may answer with another model than asked: the bill (usage
    # event, spend budget, usage.cost) is that model's. A dated snapshot of the model asked,
    # or a model without a price, leaves the asked one's price.
    pricing = PricingTable()
    usage = TokenUsage(input_tokens=1000, output_tokens=100)
    for answered, priced_as in (
        ("claude-opus-4-1", "claude-opus-4-1"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("some-unpriced-model", "claude-haiku-4-5"),
    ):
        content = message_json(model=answered, input_tokens=1000, output_tokens=100)
        recorder = Recorder(
            lambda request, content=content: httpx.Response(
                200, content=content, headers={"content-type": "application/json"}
            )
        )
        config = GatewayConfig(cost_in_response=True, usage_log=False)
        gateway, finished = make_gateway(recorder, config=config)
        body = _body(model="claude-haiku-4-5", fallbacks=[{"model": "claude-opus-4-1"}])
        response = run(_post(gateway, body))
        expected = pricing.cost(priced_as, usage)
        assert expected is not None and finished[-1].cost == expected
        assert response.json()["usage"]["cost"] == expected


def test_a_router_hooks_choice_is_held_to_the_spend_budgets_prices() -> None:
    # The router decides where a request goes after the limits counted it: the price check
    # must see its choice, not the chain it was handed.
    def route_to(model: str) -> RouteHook:
        def router(context: RequestContext, chain: Sequence[Target]) -> list[Target]:
            return [Target("anthropic", model)]

        return router

    rules = (LimitRule(scope="tag", match="metered", spend=100.0),)
    config = GatewayConfig(limits=LimitsConfig(rules=rules))
    metered = {"x-mw-tags": "metered"}
    for routed_to, requested, status in (
        ("my-finetune", "claude-sonnet-4-6", 403),
        ("claude-sonnet-4-6", "my-alias", 200),
    ):
        recorder = Recorder()
        provider = AnthropicProvider(
            UpstreamConfig(base_url="http://upstream.test"), transport=httpx.MockTransport(recorder)
        )
        gateway = Gateway(config, provider=provider, router=route_to(routed_to))
        answer = run(_post(gateway, _body(model=requested), **metered))
        assert answer.status_code == status, answer.text
        assert len(recorder.requests) == (status == 200)


def test_unpriced_models_may_be_allowed_through_uncounted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway, _, finished = _budgeted(unpriced_models="allow")
    with caplog.at_level(logging.WARNING, logger="messages_mw.limits"):
        for _ in range(2):
            response = run(
                _post(gateway, _body(model="claude-sonnet-4-7"), **{"x-mw-tags": "metered"})
            )
            assert response.status_code == 200
    assert finished[-1].cost is None
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "'claude-sonnet-4-7' has no price" in warning


def test_count_tokens_holds_the_key_to_its_model_allow_list() -> None:
    keys = (ApiKeyConfig(id="team", key="sk-gw-team", models=("claude-haiku-4-5",)),)
    config = GatewayConfig(auth=AuthConfig(mode="static", keys=keys))
    recorder = Recorder(lambda request: httpx.Response(200, json={"input_tokens": 7}))
    gateway, _ = make_gateway(recorder, config=config)

    async def count(model: str) -> httpx.Response:
        async with client_for(gateway) as client:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"x-api-key": "sk-gw-team"}
            return await client.post("/v1/messages/count_tokens", json=body, headers=headers)

    refused = run(count("claude-opus-4-7"))
    assert refused.status_code == 403
    assert refused.json()["error"]["message"].startswith("model:")
    assert recorder.requests == []
    assert run(count("claude-haiku-4-5")).json() == {"input_tokens": 7}


def test_passthrough_callers_may_name_a_local_model_that_gets_no_key_at_all() -> None:
    # A key-less OpenAI-compatible upstream (vLLM, Ollama) spends no key of the gateway's.
    seen: list[httpx.Request] = []

    def local(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=completion_json("Hi"))

    settings = OpenAIUpstreamConfig(base_url="http://local.test/v1")
    config = GatewayConfig(
        auth=AuthConfig(mode="passthrough"), openai_upstreams={"local": settings}
    )
    provider = OpenAIProvider(settings, name="local", transport=httpx.MockTransport(local))
    gateway = Gateway(config, providers={"local": provider})
    response = run(_post(gateway, _body(model="local/llama3"), **{"x-api-key": "anything"}))
    assert response.status_code == 200
    assert "authorization" not in seen[0].headers and "x-api-key" not in seen[0].headers


def test_a_bare_allowed_model_never_opens_another_providers_model_in_the_body() -> None:
    # As for the model itself, where 'backup/claude-haiku-4-5' is refused to this key.
    keys = (ApiKeyConfig(id="team", key="sk-gw-team", models=("claude-haiku-4-5", "auto")),)
    backup = Recorder()
    config = GatewayConfig(
        auth=AuthConfig(mode="static", keys=keys),
        upstreams={"backup": UpstreamConfig(base_url="http://backup.test")},
    )
    gateway = Gateway(
        config,
        provider=AnthropicProvider(UpstreamConfig(), transport=httpx.MockTransport(Recorder())),
        providers={
            "backup": AnthropicProvider(UpstreamConfig(), transport=httpx.MockTransport(backup))
        },
    )
    key = {"x-api-key": "sk-gw-team"}
    for body, field in (
        (_body(model="backup/claude-haiku-4-5"), "model"),
        (_body(model="claude-haiku-4-5", fallbacks=["backup/claude-haiku-4-5"]), "fallbacks.0"),
        (_body(model="auto", router_candidates=["backup/claude-haiku-4-5"]), "router_candidates.0"),
    ):
        refused = run(_post(gateway, body, **key))
        assert refused.status_code == 403
        assert refused.json()["error"]["message"].startswith(f"{field}: ")
    assert backup.requests == []
    # The bare id still allows the default provider's model, however it is written.
    body = _body(model="auto", router_candidates=["anthropic/claude-haiku-4-5"])
    assert run(_post(gateway, body, **key)).is_success


@pytest.mark.parametrize(
    ("field", "alias", "target"),
    [
        ("model", "fast", "backup/m"),
        ("fallbacks", ["fast"], ["backup/m"]),
        ("router_candidates", ["fast"], ["backup/m"]),
    ],
)
def test_an_alias_the_key_may_use_passes_wherever_the_body_names_it(
    field: str, alias: object, target: object
) -> None:
    # The allow-list holds names as the client writes them (before aliases), in the body too.
    models = ("claude-sonnet-4-6", "auto", "fast")
    keys = (ApiKeyConfig(id="team", key="sk-gw-team", models=models),)
    backup = Recorder()
    config = GatewayConfig(
        auth=AuthConfig(mode="static", keys=keys),
        upstreams={"backup": UpstreamConfig(base_url="http://backup.test")},
        aliases={"fast": "backup/m"},
    )
    gateway = Gateway(
        config,
        provider=AnthropicProvider(UpstreamConfig(), transport=httpx.MockTransport(Recorder())),
        providers={
            "backup": AnthropicProvider(UpstreamConfig(), transport=httpx.MockTransport(backup))
        },
    )
    model = {"model": "auto"} if field == "router_candidates" else {}
    key = {"x-api-key": "sk-gw-team"}
    response = run(_post(gateway, _body(**{**model, field: alias}), **key))
    assert response.status_code == 200, response.text
    # The alias opens only itself: its target, written out, is not on the list.
    refused = run(_post(gateway, _body(**{**model, field: target}), **key))
    assert refused.status_code == 403
    assert refused.json()["error"]["message"].startswith(field)


_ADVISOR = {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-5-5"}


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        # Anthropic's own fallbacks (SDK 2.12 BetaFallbacksParam), which the upstream runs.
        ({"fallbacks": [{"model": "claude-opus-5-5"}]}, 403, "fallbacks.0.model: "),
        ({"fallbacks": "default"}, 403, "fallbacks: "),
        # Names the gateway does not route go upstream too ("auto").
        ({"fallbacks": ["claude-opus-5-5"]}, 403, "fallbacks.0: "),
        ({"tools": [{"name": "grep"}, _ADVISOR]}, 403, "tools.1.model: "),
        ({"fallbacks": [{"speed": "fast"}]}, 400, "fallbacks.0.model: Field required"),
        ({"tools": [{**_ADVISOR, "model": 5}]}, 400, "tools.0.model: Expected `str`"),
    ],
)
def test_models_the_upstream_would_run_are_held_to_the_key_allow_list(
    fields: dict[str, object], status: int, message: str
) -> None:
    # Left in the body for the upstream, they would run a model the key may not use, and the
    # usage would be priced as the requested model.
    keys = (ApiKeyConfig(id="team", key="sk-gw-team", models=("claude-haiku-4-5",)),)
    recorder = Recorder()
    gateway, _ = make_gateway(
        recorder, config=GatewayConfig(auth=AuthConfig(mode="static", keys=keys))
    )
    body = _body(model="claude-haiku-4-5", **fields)
    refused = run(_post(gateway, body, **{"x-api-key": "sk-gw-team"}))
    assert refused.status_code == status
    assert refused.json()["error"]["message"].startswith(message)
    assert recorder.requests == []


def test_allowed_models_the_upstream_would_run_go_upstream_untouched() -> None:
    keys = (ApiKeyConfig(id="team", key="sk-gw-team", models=("claude-haiku-4-5",)),)
    recorder = Recorder()
    gateway, _ = make_gateway(
        recorder, config=GatewayConfig(auth=AuthConfig(mode="static", keys=keys))
    )
    fields = {
        "fallbacks": [{"model": "claude-haiku-4-5", "max_tokens": 4}],
        "tools": [{**_ADVISOR, "model": "claude-haiku-4-5"}],
    }
    body = _body(model="claude-haiku-4-5", **fields)
    assert run(_post(gateway, body, **{"x-api-key": "sk-gw-team"})).status_code == 200
    # Without an allow-list nothing is read: any model, and "default", go upstream.
    open_gateway, _ = make_gateway(recorder)
    unlisted = _body(fallbacks="default", tools=[_ADVISOR])
    assert run(_post(open_gateway, unlisted)).status_code == 200
    assert [r.content for r in recorder.requests] == [body, unlisted]


def test_a_tagger_returning_one_string_adds_one_tag() -> None:
    recorder = Recorder()
    provider = AnthropicProvider(
        UpstreamConfig(base_url="http://upstream.test"), transport=httpx.MockTransport(recorder)
    )
    finished: list[RequestContext] = []
    gateway = Gateway(
        provider=provider, tagger=lambda request, context: "team", on_request_end=finished.append
    )
    assert run(_post(gateway, _body())).status_code == 200
    assert finished[0].tags == ["team"]


def test_usage_keeps_flowing_after_the_gateway_is_closed_and_used_again() -> None:
    # A host whose lifespan runs twice on one gateway (a test client opened twice).
    events: list[UsageEvent] = []
    gateway, _ = make_gateway(Recorder(), usage_sinks=[events.append])

    async def two_lifespans() -> None:
        for _ in range(2):
            async with gateway:
                assert (await _post(gateway, _body())).status_code == 200

    run(two_lifespans())
    assert len(events) == 2


def test_count_tokens_consumes_the_gateway_fields_as_messages_does() -> None:
    recorder = Recorder(lambda request: httpx.Response(200, json={"input_tokens": 3}))
    gateway, _ = make_gateway(recorder)
    body = {
        "model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": "hi"}],
        "extra_headers": {"anthropic-beta": "token-counting-2024-11-01"},
        "metadata": {"tags": ["team:a"], "user_id": "u-1"},
        "future": 1,
    }

    async def count() -> httpx.Response:
        async with client_for(gateway) as client:
            return await client.post("/v1/messages/count_tokens", json=body)

    assert run(count()).json() == {"input_tokens": 3}
    (sent,) = recorder.requests
    assert json.loads(sent.content) == {
        "model": "claude-sonnet-4-6",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"user_id": "u-1"},
        "future": 1,
    }
    assert sent.headers["anthropic-beta"] == "token-counting-2024-11-01"


def test_cost_in_response_is_opt_in_and_keeps_the_body() -> None:
    def priced(request: httpx.Request) -> httpx.Response:
        content = message_json(model="claude-sonnet-4-6", input_tokens=1000, output_tokens=100)
        return httpx.Response(200, content=content, headers={"content-type": "application/json"})

    plain, _ = make_gateway(Recorder(priced))
    assert "cost" not in run(_post(plain, _body())).json()["usage"]
    gateway, finished = make_gateway(Recorder(priced), config=GatewayConfig(cost_in_response=True))
    answer = run(_post(gateway, _body())).json()
    assert answer["usage"]["cost"] == pytest.approx(1000 * 3 / 1e6 + 100 * 15 / 1e6)
    assert answer["content"][0]["text"] == "Hello from upstream."
    assert finished[0].cost == pytest.approx(answer["usage"]["cost"])


def test_a_request_is_priced_only_for_someone_who_reads_its_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    priced: list[str | None] = []
    cost = PricingTable.cost

    def counted(table: PricingTable, model: str | None, usage: TokenUsage) -> float | None:
        priced.append(model)
        return cost(table, model, usage)

    monkeypatch.setattr(PricingTable, "cost", counted)
    provider = _provider(Recorder())
    events: list[UsageEvent] = []
    finished: list[RequestContext] = []
    readers: list[dict[str, Any]] = [
        {},  # nobody: no price is looked up
        {"usage_sinks": [events.append]},
        {"on_request_end": finished.append},
        {"config": GatewayConfig(limits=LimitsConfig(rules=(LimitRule(scope="key", spend=1.0),)))},
    ]
    for reader in readers:
        priced.clear()
        gateway = Gateway(provider=provider, **reader)
        assert run(_post(gateway, _body())).status_code == 200
        assert priced == ([] if not reader else ["claude-sonnet-4-6"])
    assert events[0].cost is not None and finished[0].cost is not None


def test_every_request_emits_exactly_one_usage_event() -> None:
    events: list[UsageEvent] = []
    overloaded = b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(529, content=overloaded, headers={"retry-after": "1"})

    async def scenario() -> None:
        cases = ((Recorder(), _body()), (Recorder(failing), _body()), (Recorder(), b"{bad"))
        for handler, body in cases:
            gateway, _ = make_gateway(handler, usage_sinks=[events.append])
            await _post(gateway, body)
            await gateway.aclose()

    asyncio.run(scenario())
    assert [(e.status, e.error_type) for e in events] == [
        (200, None),
        (529, "overloaded_error"),
        (400, "invalid_request_error"),
    ]
    assert events[0].input_tokens == 12 and events[0].cost is not None


def test_the_event_names_the_kind_of_upstream_that_served() -> None:
    # For telemetry (OpenTelemetry's gen_ai.provider.name): the configured name says which
    # upstream, the type what kind of API it speaks.
    class OwnProvider:
        async def send(self, request: ProviderRequest) -> ProviderResponse:
            return ProviderResponse(200, [("content-type", "application/json")], body=b"{}")

        async def aclose(self) -> None:
            pass

    finished: list[RequestContext] = []
    mock = GatewayConfig(provider="mock", usage_log=False)
    gateways = {
        "anthropic": make_gateway(Recorder(), on_request_end=finished.append)[0],
        "messages_mw.mock": Gateway(mock, on_request_end=finished.append),
        "backup": Gateway(providers={"backup": OwnProvider()}, on_request_end=finished.append),
    }
    for expected, gateway in gateways.items():
        model = "backup/m" if expected == "backup" else "claude-sonnet-4-6"
        assert run(_post(gateway, _body(model=model))).status_code == 200
        assert finished[-1].provider_type == expected
    # count_tokens names who answered it too.
    counting = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]}

    async def count() -> httpx.Response:
        async with client_for(gateways["messages_mw.mock"]) as client:
            return await client.post("/v1/messages/count_tokens", json=counting)

    assert run(count()).status_code == 200
    assert (finished[-1].provider, finished[-1].provider_type) == ("mock", "messages_mw.mock")
    assert OpenAIProvider.provider_type == "openai"


def test_a_caller_without_a_valid_key_is_refused_before_its_body_is_read() -> None:
    keys = (ApiKeyConfig(id="team", key="sk-gw-team"),)
    config = GatewayConfig(auth=AuthConfig(mode="static", keys=keys))
    recorder = Recorder()
    gateway, _ = make_gateway(recorder, config=config)

    async def without_reading(headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            raise AssertionError("the body of a caller without a key was read")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await gateway(post_scope("/v1/messages", *headers), receive, send)
        return sent

    # Even a body announced at a gigabyte: the gateway neither reads nor refuses it as such.
    huge = [(b"content-length", b"1000000000"), (b"x-api-key", b"sk-wrong")]
    assert run(without_reading(huge))[0]["status"] == 401
    assert run(without_reading([(b"content-length", b"10")]))[0]["status"] == 401
    # A broken body from a caller with a wrong key: Anthropic's 401, not a 400 about JSON.
    answer = run(_post(gateway, b'{"model": ', **{"x-api-key": "sk-wrong"}))
    assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
    assert recorder.requests == []
    assert run(_post(gateway, _body(), **{"x-api-key": "sk-gw-team"})).status_code == 200


def test_an_auth_hook_runs_after_validation_with_the_model_unless_it_reads_headers_only() -> None:
    seen: list[str | None] = []

    def with_model(request: IncomingRequest) -> None:
        seen.append(request.model)

    class HeadersOnly:
        reads_model = False

        def __call__(self, request: IncomingRequest) -> None:
            seen.append(request.model)

    for hook in (with_model, HeadersOnly()):
        provider = AnthropicProvider(
            UpstreamConfig(base_url="http://upstream.test"),
            transport=httpx.MockTransport(Recorder()),
        )
        gateway = Gateway(provider=provider, auth=hook)
        assert run(_post(gateway, _body())).status_code == 200
        assert run(_post(gateway, b"{")).status_code == 400
    # The first hook never saw the broken body; the second saw both requests, before either.
    assert seen == ["claude-sonnet-4-6", None, None]


def test_a_provider_with_its_own_key_never_gets_a_virtual_or_client_key() -> None:
    # A key's virtual key and a pass-through client's own key are for the default upstream;
    # a second upstream keyed on its own (another vendor, say) must not see them.
    def upstreams(auth: AuthConfig, configured: bool) -> tuple[Gateway, Recorder, Recorder]:
        main_, backup = Recorder(), Recorder()
        backup_settings = UpstreamConfig(base_url="http://backup.test", api_key="sk-backup-own")
        configured_upstreams = {"backup": backup_settings} if configured else {}
        aliases = {"backup-sonnet": "backup/claude-sonnet-4-6"}
        config = GatewayConfig(auth=auth, upstreams=configured_upstreams, aliases=aliases)
        gateway = Gateway(
            config,
            provider=AnthropicProvider(
                UpstreamConfig(base_url="http://main.test"), transport=httpx.MockTransport(main_)
            ),
            providers={
                "backup": AnthropicProvider(backup_settings, transport=httpx.MockTransport(backup))
            },
        )
        return gateway, main_, backup

    virtual = ApiKeyConfig(id="team", key="sk-gw-team", upstream_api_key="sk-virtual")
    static, passthrough = AuthConfig(mode="static", keys=(virtual,)), AuthConfig(mode="passthrough")
    # The backup configured, or only handed in by the host (which the config knows nothing of).
    for configured in (True, False):
        gateway, main_, backup = upstreams(static, configured)
        for model in ("claude-sonnet-4-6", "backup/claude-sonnet-4-6"):
            headers = {"x-api-key": "sk-gw-team"}
            assert run(_post(gateway, _body(model=model), **headers)).is_success
        assert main_.requests[0].headers["x-api-key"] == "sk-virtual"
        assert backup.requests[0].headers["x-api-key"] == "sk-backup-own"

        gateway, main_, backup = upstreams(passthrough, configured)
        # Reached through the operator's alias: a caller cannot name it itself (see below).
        for model in ("claude-sonnet-4-6", "backup-sonnet"):
            assert run(_post(gateway, _body(model=model), **{"x-api-key": "sk-mine"})).is_success
        assert main_.requests[0].headers["x-api-key"] == "sk-mine"
        assert backup.requests[0].headers["x-api-key"] == "sk-backup-own"


def test_passthrough_callers_cannot_name_a_provider_the_gateway_pays_for() -> None:
    # Passthrough auth checks no key: any string would do, so a caller naming the keyed backup
    # would spend the gateway's own key, as a new identity each time (no per-key limit binds).
    backup_settings = UpstreamConfig(base_url="http://backup.test", api_key="sk-backup-own")
    backup, main_ = Recorder(), Recorder()
    config = GatewayConfig(
        auth=AuthConfig(mode="passthrough"),
        upstreams={"backup": backup_settings},
        fallback=FallbackConfig(default_chain=("backup/claude-haiku-4-5",)),
    )
    providers = {
        "anthropic": AnthropicProvider(UpstreamConfig(), transport=httpx.MockTransport(main_)),
        "backup": AnthropicProvider(backup_settings, transport=httpx.MockTransport(backup)),
    }
    gateway = Gateway(config, providers=providers)
    junk = {"x-api-key": "anything-at-all"}
    for body, field in (
        (_body(model="backup/claude-opus-4-1"), "model"),
        (_body(fallbacks=["backup/claude-opus-4-1"]), "fallbacks.0"),
        (_body(model="auto", router_candidates=["backup/claude-opus-4-1"]), "router_candidates.0"),
    ):
        refused = run(_post(gateway, body, **junk))
        assert refused.status_code == 403
        assert refused.json()["error"]["message"].startswith(f"{field}: 'backup/claude-opus-4-1'")
    assert backup.requests == []
    # The default upstream gets the caller's own key, which it checks itself.
    assert run(_post(gateway, _body(), **junk)).is_success
    assert main_.requests[-1].headers["x-api-key"] == "anything-at-all"


class _StalledRecordLimiter(RateLimiter):
    """Counts tokens in a store that never answers the recording call (a Redis stall)."""

    def __init__(self) -> None:
        super().__init__(LimitsConfig(rules=(LimitRule(scope="key", tokens_per_minute=10**9),)))
        self.recording = asyncio.Event()

    async def record(self, context: RequestContext) -> None:
        self.recording.set()
        await asyncio.Event().wait()


def test_a_request_cancelled_while_its_usage_is_recorded_is_still_reported() -> None:
    # The server cancels a request's task at shutdown; the upstream's usage must not be lost
    # with it because the limit store was slow to count it.
    events: list[UsageEvent] = []
    limiter = _StalledRecordLimiter()
    provider = AnthropicProvider(
        UpstreamConfig(base_url="http://upstream.test", api_key="sk-up"),
        transport=httpx.MockTransport(Recorder()),
    )
    ended: list[RequestContext] = []
    gateway = Gateway(
        GatewayConfig(),
        provider=provider,
        limiter=limiter,
        usage_sinks=[events.append],
        on_request_end=ended.append,
    )
    body = _body()
    incoming = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict[str, object]:
        return next(incoming, {"type": "http.disconnect"})

    async def send(message: object) -> None:
        pass

    async def scenario() -> None:
        serving = asyncio.ensure_future(gateway(post_scope(), receive, send))
        await limiter.recording.wait()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        await gateway.aclose()

    run(scenario())
    assert [(event.status, event.input_tokens) for event in events] == [(200, 12)]
    assert [context.status for context in ended] == [200]  # the host's hook still hears


def test_a_full_local_pool_falls_back_but_never_opens_the_targets_circuit() -> None:
    # No free pooled connection is the gateway's own crowding, not the target failing: a
    # burst must not shut the target for a whole cooldown once the pool has room again.
    def no_free_connection(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("pool full", request=request)

    def upstream(handler: Any) -> AnthropicProvider:
        settings = UpstreamConfig(base_url="http://upstream.test", api_key="sk-up")
        return AnthropicProvider(settings, transport=httpx.MockTransport(handler))

    config = GatewayConfig(
        fallback=FallbackConfig(
            default_chain=("backup/claude-haiku-4-5",),
            breaker=BreakerPolicy(failure_threshold=2, cooldown=3600),
        )
    )
    providers = {"backup": upstream(Recorder())}
    finished: list[RequestContext] = []
    gateway = Gateway(
        config,
        provider=upstream(no_free_connection),
        providers=providers,
        on_request_end=finished.append,
    )

    async def scenario() -> None:
        for _ in range(5):
            assert (await _post(gateway, _body())).status_code == 200
        await gateway.aclose()

    run(scenario())
    tried = [[(a.target, a.error_type) for a in context.attempts] for context in finished]
    primary = ("anthropic/claude-sonnet-4-6", "overloaded_error")
    assert tried == [[primary, ("backup/claude-haiku-4-5", None)]] * 5


def test_an_async_auth_hook_returning_no_principal_is_a_500_with_its_usage_event() -> None:
    async def auth(request: IncomingRequest) -> Any:
        return "alice"  # a key id where a Principal belongs

    events: list[UsageEvent] = []
    config = GatewayConfig(usage_log=False)
    gateway = Gateway(
        config, provider=_provider(Recorder()), auth=auth, usage_sinks=[events.append]
    )
    response = run(_post(gateway, _body()))
    assert response.status_code == 500 and response.json()["error"]["type"] == "api_error"
    run(gateway.aclose())
    (event,) = events
    assert event.status == 500 and event.key_id is None


def test_a_hooks_error_headers_are_text_and_cannot_split_the_head() -> None:
    def auth(request: IncomingRequest) -> None:
        raise RateLimitError("slow down", headers={"Retry-After": 5, "x-note": "a\r\nb"})  # type: ignore[dict-item]

    gateway = Gateway(GatewayConfig(usage_log=False), provider=_provider(Recorder()), auth=auth)
    response = run(_post(gateway, _body()))
    assert response.status_code == 429 and response.json()["error"]["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "5" and response.headers["x-note"] == "a%0D%0Ab"


def test_count_tokens_is_labelled_with_the_requests_tags_session_and_debug_report() -> None:
    counted = Recorder(lambda request: httpx.Response(200, json={"input_tokens": 3}))
    keys = (ApiKeyConfig(id="team", key="sk-gw-team", tags=("team-a",)),)
    config = GatewayConfig(usage_log=False, auth=AuthConfig(mode="static", keys=keys))
    finished: list[RequestContext] = []
    gateway = Gateway(config, provider=_provider(counted), on_request_end=finished.append)
    body = json.dumps(
        {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "x"}]}
    )
    headers = {
        "content-type": "application/json",
        "x-api-key": "sk-gw-team",
        "x-mw-tags": "ci",
        "x-mw-debug": "1",
        "x-claude-code-session-id": "sess-1",
    }

    async def count() -> httpx.Response:
        async with client_for(gateway) as client:
            return await client.post("/v1/messages/count_tokens", content=body, headers=headers)

    response = run(count())
    assert response.status_code == 200 and "x-mw-debug-attempts" in response.headers
    (context,) = finished
    assert (context.tags, context.session_id) == (["ci", "team-a"], "sess-1")


def _provider(handler: Any) -> AnthropicProvider:
    settings = UpstreamConfig(base_url="http://upstream.test")
    return AnthropicProvider(settings, transport=httpx.MockTransport(handler))


def _overloaded_everywhere(stream: bool) -> tuple[httpx.Response, list[RequestContext]]:
    """Both targets overloaded: as a 529 response, or as a stream's opening error event."""
    opening = text_stream_events([])[0] + sse(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )

    def answer(request: httpx.Request) -> httpx.Response:
        if stream:
            return httpx.Response(
                200, content=opening, headers={"content-type": "text/event-stream"}
            )
        body = error_json("overloaded_error", "Overloaded")
        return httpx.Response(529, content=body, headers={"content-type": "application/json"})

    config = GatewayConfig(
        upstream=UpstreamConfig(base_url="http://primary.test"),
        fallback=FallbackConfig(default_chain=("backup/claude-haiku-4-5",)),
        usage_log=False,
    )
    backup = AnthropicProvider(
        UpstreamConfig(base_url="http://backup.test"),
        name="backup",
        transport=httpx.MockTransport(answer),
    )
    finished: list[RequestContext] = []
    gateway = Gateway(
        config,
        provider=_provider(answer),
        providers={"backup": backup},
        on_request_end=finished.append,
    )
    return run(_post(gateway, _body(stream=stream))), finished


@pytest.mark.parametrize("stream", [False, True], ids=["relayed 529", "raised stream error"])
def test_a_chain_failing_everywhere_names_the_last_target_however_it_failed(stream: bool) -> None:
    response, finished = _overloaded_everywhere(stream)
    assert response.status_code == 529 and len(finished[0].attempts) == 2
    assert response.headers["x-mw-provider"] == "backup"
    assert response.headers["x-mw-model"] == "claude-haiku-4-5"
    assert response.headers["x-mw-fallback-used"] == "1"
    assert finished[0].fallback_used and finished[0].provider == "backup"


class _Refusing:
    """A provider that cannot express any request (as an OpenAI target given a document)."""

    async def send(self, request: ProviderRequest) -> ProviderResponse:
        raise UnsupportedByProviderError("messages.0.content.0: documents are not supported")

    async def aclose(self) -> None:
        return None


def test_a_failure_kept_past_a_refusal_names_its_own_target() -> None:
    # The primary's failure stays the answer when the backup refuses: the answer named the
    # backup while its body spoke of the primary.
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    config = GatewayConfig(
        upstream=UpstreamConfig(base_url="http://primary.test"),
        fallback=FallbackConfig(default_chain=("backup/claude-haiku-4-5",)),
        usage_log=False,
    )
    finished: list[RequestContext] = []
    gateway = Gateway(
        config,
        provider=_provider(unreachable),
        providers={"backup": _Refusing()},
        on_request_end=finished.append,
    )
    response = run(_post(gateway, _body()))
    assert response.status_code == 502 and "'anthropic'" in response.json()["error"]["message"]
    assert response.headers["x-mw-provider"] == "anthropic"
    assert response.headers["x-mw-fallback-used"] == "0"
    assert finished[0].provider == "anthropic" and not finished[0].fallback_used


@pytest.mark.parametrize("field", ["router_candidates", "fallbacks"])
def test_a_model_named_in_the_body_is_held_to_the_model_limit(field: str) -> None:
    # It may become the served model, echoed in x-mw-model and spans, as the model is.
    name = "anthropic/" + "m" * 1100
    body = (
        _body(model="auto", router_candidates=[name])
        if field == "router_candidates"
        else _body(fallbacks=[name])
    )
    recorder = Recorder()
    gateway, _ = make_gateway(recorder)
    response = run(_post(gateway, body))
    assert response.status_code == 400 and recorder.requests == []
    assert response.json()["error"]["message"] == (f"{field}.0: Expected `str` of length <= 1024")


class _RecoveringUpstream:
    """500 while ``failing``; then a slow model (hangs) until ``answering`` is set."""

    def __init__(self) -> None:
        self.failing, self.answering = True, False
        self.sending = asyncio.Event()

    async def send(self, request: ProviderRequest) -> ProviderResponse:
        if self.failing:
            return ProviderResponse(500, [("content-type", "application/json")], body=b"{}")
        if self.answering:
            return ProviderResponse(
                200, [("content-type", "application/json")], body=message_json()
            )
        self.sending.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


async def _post_leaving(gateway: Gateway, leave: asyncio.Event | None = None) -> int:
    """POST through the ASGI app; the client leaves once ``leave`` is set. The status sent."""
    messages = [{"type": "http.request", "body": _body(), "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await (leave or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(gateway(post_scope(), receive, send), 5)
    return int(sent[0]["status"]) if sent else 0


def test_a_client_leaving_during_a_half_open_trial_does_not_keep_the_circuit_shut() -> None:
    upstream = _RecoveringUpstream()
    finished: list[RequestContext] = []
    fallback = FallbackConfig(breaker=BreakerPolicy(failure_threshold=1, cooldown=0.2))
    gateway = Gateway(
        GatewayConfig(usage_log=False, fallback=fallback),
        provider=upstream,
        on_request_end=finished.append,
    )

    async def scenario() -> int:
        assert await _post_leaving(gateway) == 500  # the circuit opens
        await asyncio.sleep(0.25)  # cooldown over: half-open, one trial allowed
        upstream.failing = False
        await _post_leaving(gateway, leave=upstream.sending)  # the trial's client hangs up
        assert finished[-1].client_disconnected
        upstream.answering = True
        return await _post_leaving(gateway)

    # Not another whole cooldown of 529s: the trial said nothing of the target's health.
    assert asyncio.run(scenario()) == 200


def test_a_client_gone_during_a_slow_hook_is_not_sent_upstream() -> None:
    recorder = Recorder()

    async def slow_compressor(body: bytes, context: RequestContext) -> bytes | None:
        await asyncio.sleep(0.2)  # a remote call, say; the client hangs up meanwhile
        return None

    provider = AnthropicProvider(
        UpstreamConfig(base_url="http://upstream.test"), transport=httpx.MockTransport(recorder)
    )
    finished: list[RequestContext] = []
    gateway = Gateway(
        GatewayConfig(usage_log=False),
        provider=provider,
        compressor=slow_compressor,
        on_request_end=finished.append,
    )

    async def scenario() -> None:
        messages = [{"type": "http.request", "body": _body(), "more_body": False}]

        async def receive() -> dict[str, Any]:
            # Once the body is read, the client is gone: a server answers at once.
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass  # what a server does with sends after a disconnect: drops them

        await asyncio.wait_for(gateway(post_scope(), receive, send), 5)

    asyncio.run(scenario())
    assert (len(recorder.requests), finished[0].client_disconnected) == (0, True)


def test_a_url_too_long_for_the_primary_never_reaches_a_keyed_backup() -> None:
    # Passthrough auth checks no key: the primary upstream does. A failure the primary never
    # saw the key for must not move a made-up key on to a backup holding the operator's.
    from messages_mw.auth import AuthConfig as _AuthConfig

    from .openai_upstream import completion_json

    openai_settings = OpenAIUpstreamConfig(base_url="http://openai.test/v1", api_key="sk-operator")
    config = GatewayConfig(
        upstream=UpstreamConfig(base_url="https://api.anthropic.test"),
        auth=_AuthConfig(mode="passthrough"),
        openai_upstreams={"oa": openai_settings},
        fallback=FallbackConfig(chains={"claude-x": ("oa/gpt-4o",)}),
        usage_log=False,
    )
    primary, backup = (
        Recorder(),
        Recorder(lambda request: httpx.Response(200, content=completion_json())),
    )
    gateway = Gateway(
        config,
        providers={
            "anthropic": AnthropicProvider(config.upstream, transport=httpx.MockTransport(primary)),
            "oa": OpenAIProvider(openai_settings, name="oa", transport=httpx.MockTransport(backup)),
        },
    )
    scope = post_scope()
    scope["query_string"] = b"x=" + b"a" * 65_500  # more than httpx.URL takes
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": _body(model="claude-x"), "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope["headers"] = [*scope["headers"], (b"x-api-key", b"made-up")]
    asyncio.run(gateway(scope, receive, send))
    assert sent[0]["status"] == 400
    assert (primary.requests, backup.requests) == ([], [])


def test_a_repeated_tag_header_gets_the_same_tags_each_time_and_a_bad_one_each_400() -> None:
    # Each header value's tags are worked out once and kept: a request must neither see
    # what a host did to an earlier request's tags nor get a refused value let through.
    gateway, finished = make_gateway(Recorder())
    tags = {"x-mw-tags": "team-a, ci,team-a"}

    async def scenario() -> list[int]:
        statuses = []
        for headers in (tags, tags, {"x-mw-tags": "bad tag"}, {"x-mw-tags": "bad tag"}, tags):
            statuses.append((await _post(gateway, _body(), **headers)).status_code)
            if finished and finished[-1].tags:
                finished[-1].tags.append("changed-by-the-host")
        return statuses

    assert run(scenario()) == [200, 200, 400, 400, 200]
    assert [event.tags[:2] for event in finished] == [["team-a", "ci"]] * 2 + [[], []] + [
        ["team-a", "ci"]
    ]
    assert len(finished[-1].tags) == 3  # the host's change to this request's own list


def test_header_tags_merge_with_the_key_and_metadata_tags_as_before() -> None:
    keys = (ApiKeyConfig(id="k", key="sk-client", tags=("from-key",)),)
    config = GatewayConfig(auth=AuthConfig(mode="static", keys=keys))
    gateway, finished = make_gateway(Recorder(), config=config)
    body = _body(metadata={"tags": ["from-body", "ci"]})
    for _ in range(2):
        assert run(_post(gateway, body, **{"x-mw-tags": "ci,from-key"})).status_code == 200
    assert [context.tags for context in finished] == [["ci", "from-key", "from-body"]] * 2


@pytest.mark.parametrize("key_tags", [("bad tag",), ["bad tag"]])
def test_a_host_keys_bad_tags_are_refused_every_time(key_tags: Sequence[str]) -> None:
    # An auth hook's tags are checked per request (the built-in keys' at start-up), also
    # when the tag header and key repeat, and also when the hook gives a list.
    def auth(request: IncomingRequest) -> Principal:
        return Principal(key_id="host-key", tags=key_tags)  # type: ignore[arg-type]

    gateway = Gateway(provider=_provider(Recorder()), auth=auth)
    for _ in range(2):
        answer = run(_post(gateway, _body(), **{"x-mw-tags": "ci"}))
        assert answer.status_code == 400
        assert "key policy: tag 'bad tag' may only contain" in answer.json()["error"]["message"]


def test_a_host_key_whose_tags_are_a_list_is_tagged_as_one_whose_tags_are_a_tuple() -> None:
    finished: list[RequestContext] = []
    for key_tags in (("team", "ci"), ["team", "ci"]):
        principal = Principal(key_id="host-key", tags=key_tags)  # type: ignore[arg-type]
        gateway = Gateway(
            provider=_provider(Recorder()),
            auth=lambda request, principal=principal: principal,
            on_request_end=finished.append,
        )
        for _ in range(2):
            assert run(_post(gateway, _body(), **{"x-mw-tags": "ci,web"})).status_code == 200
    assert [context.tags for context in finished] == [["ci", "web", "team"]] * 4


def test_tag_headers_padded_with_repeats_are_not_kept() -> None:
    # A valid tag header can be as long as the server's head limit allows by repeating one
    # tag; kept per value, a caller could pin 1,024 of them in every worker.
    gateway, finished = make_gateway(Recorder())
    padding = "ci," * 10_000

    async def scenario() -> int:
        tracemalloc.start()
        try:
            await _post(gateway, _body(), **{"x-mw-tags": padding + "warm-up"})
            before = tracemalloc.get_traced_memory()[0]
            for i in range(100):
                answer = await _post(gateway, _body(), **{"x-mw-tags": f"{padding}n{i}"})
                assert answer.status_code == 200
            finished.clear()
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

    assert run(scenario()) < 1_000_000  # kept, these 100 values would hold 3 MB


@pytest.mark.parametrize(
    "principal",
    [
        # A virtual key read from a file with its newline: every request was a 502, counted
        # against the upstream's circuit, which then shut for every caller.
        {"key_id": "team", "upstream_api_key": "sk-from-db\n"},
        # A str allow-list was matched by substring: "opus" passed for "claude-opus-4-1,...".
        {"key_id": "team", "allowed_models": "claude-opus-4-1,claude-haiku-4-5"},
        {"key_id": 7},
    ],
)
def test_a_principal_an_auth_hook_gets_wrong_is_that_hooks_500(
    principal: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    provider = AnthropicProvider(
        UpstreamConfig(base_url="http://upstream.test"), transport=httpx.MockTransport(recorder)
    )

    def auth(request: IncomingRequest) -> Principal:
        return Principal(**principal)

    gateway = Gateway(GatewayConfig(usage_log=False), provider=provider, auth=auth)
    with caplog.at_level(logging.ERROR, logger="messages_mw"):
        response = run(_post(gateway, _body(model="opus")))
    assert response.status_code == 500 and response.json()["error"]["type"] == "api_error"
    assert recorder.requests == []
    assert "sk-from-db" not in caplog.text and "Principal." in caplog.text


def test_hooks_read_the_request_headers_but_cannot_change_what_goes_upstream() -> None:
    recorder = Recorder()
    provider = AnthropicProvider(
        UpstreamConfig(base_url="http://upstream.test"), transport=httpx.MockTransport(recorder)
    )

    def auth(request: IncomingRequest) -> Principal:
        request.headers["anthropic-beta"] = "smuggled"  # type: ignore[index]
        return Principal(key_id="team", passthrough=True)

    gateway = Gateway(GatewayConfig(usage_log=False), provider=provider, auth=auth)
    assert run(_post(gateway, _body())).status_code == 500
    assert recorder.requests == []


def _tags_ints(request: IncomingRequest, context: RequestContext) -> object:
    return [1, 2]


def _compress_to_str(body: bytes, context: RequestContext) -> object:
    return body.decode()


def _route_by_name(context: RequestContext, chain: Sequence[Target]) -> object:
    return [target.name for target in chain]


def _route_nowhere_known(context: RequestContext, chain: Sequence[Target]) -> object:
    return [Target("nope", "claude-sonnet-4-6")]


@pytest.mark.parametrize(
    ("hooks", "said"),
    [
        ({"tagger": _tags_ints}, "the tagger hook returned [1, 2], not a list of str"),
        ({"compressor": _compress_to_str}, "the compressor hook returned str, not bytes"),
        ({"router": _route_by_name}, "the router hook returned 'anthropic/claude-sonnet-4-6'"),
        ({"router": _route_nowhere_known}, "not a Target of a configured provider"),
    ],
)
def test_a_hook_returning_the_wrong_type_is_a_500_naming_the_hook(
    hooks: dict[str, Any], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    gateway = Gateway(
        GatewayConfig(usage_log=False),
        provider=AnthropicProvider(
            UpstreamConfig(base_url="http://upstream.test"),
            transport=httpx.MockTransport(recorder),
        ),
        **hooks,
    )
    with caplog.at_level(logging.ERROR, logger="messages_mw"):
        response = run(_post(gateway, _body()))
    assert response.status_code == 500 and recorder.requests == []
    assert said in caplog.text


def test_a_compressor_may_return_any_bytes_like_body() -> None:
    recorder = Recorder()
    provider = AnthropicProvider(
        UpstreamConfig(base_url="http://upstream.test"), transport=httpx.MockTransport(recorder)
    )

    def compress(body: bytes, context: RequestContext) -> object:
        return bytearray(body.replace(b'"hi"', b'"hey"'))

    gateway = Gateway(GatewayConfig(usage_log=False), provider=provider, compressor=compress)
    assert run(_post(gateway, _body())).status_code == 200
    assert json.loads(recorder.requests[0].content)["messages"][0]["content"] == "hey"
