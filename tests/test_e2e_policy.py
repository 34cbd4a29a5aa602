"""End to end tests of the policy layer (auth, tags, fallback, breaker, limits, hooks) with the
official SDK 2.x as the client, through real loopback servers.

The SDK talks to a FastAPI host mounting the gateway; the gateway talks to two scripted
upstreams, a primary (the default provider, ``anthropic``) and a ``backup``. Every test checks
what the SDK hands its caller, what the upstreams received, and what the usage sinks were told.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from typing import Any

import anthropic
import pytest
from fastapi import FastAPI

from messages_mw import (
    ApiKeyConfig,
    AuthConfig,
    AuthenticationError,
    BreakerPolicy,
    FallbackConfig,
    Gateway,
    GatewayConfig,
    HeaderNames,
    IncomingRequest,
    InvalidRequestError,
    LimitRule,
    LimitsConfig,
    Principal,
    RequestContext,
    UpstreamConfig,
    UsageEvent,
    presented_key,
)
from messages_mw.auth import hash_key

from .policy_support import (
    BACKUP_MODEL,
    HELLO,
    MODEL,
    UPSTREAM_KEY,
    GatewayStack,
    Upstreams,
    async_sdk_client,
    closed_port_url,
    encoded,
    gateway_stack,
    header_values,
    logged_errors,
    sdk_client,
    wait_until,
)
from .servers import (
    Received,
    Reply,
    error_json,
    message_json,
    serve,
    sse,
    text_stream_events,
)

TEAM_KEYS = AuthConfig(
    mode="static",
    keys=(
        ApiKeyConfig(id="team-a", key="gw-a", models=("claude-haiku-4-5",), tags=("team-a",)),
        ApiKeyConfig(id="team-b", sha256=hash_key("gw-b"), upstream_api_key="sk-up-b"),
    ),
)
SECRETS = ("gw-a", "gw-b", "sk-up-b", hash_key("gw-a"), hash_key("gw-b"))
PRIMARY = f"anthropic/{MODEL}"
BACKUP = f"backup/{BACKUP_MODEL}"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _body(received: Received) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(received.body)
    return body


def _assert_envelope(error: anthropic.APIStatusError, status: int, error_type: str) -> str:
    """The gateway's own error: Anthropic's envelope, paired with the response's request id."""
    assert error.status_code == status
    assert isinstance(error.body, dict)
    assert set(error.body) == {"type", "error", "request_id"}
    assert error.body["error"]["type"] == error_type
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert error.body["request_id"] == error.request_id
    message: str = error.body["error"]["message"]
    return message


def _assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets or SECRETS:
        assert secret not in text


def _client_with_key(
    base_url: str, style: str, key: str | None, headers: dict[str, str] | None = None
) -> anthropic.Anthropic:
    """A client sending ``key`` as ``x-api-key`` or as ``Authorization: Bearer``."""
    if style == "x-api-key":
        return sdk_client(base_url, x_api_key=key, headers=headers)
    return sdk_client(base_url, bearer=key, headers=headers)


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_static_key_is_accepted_in_either_header_and_replaced_upstream(
    ups: Upstreams, style: str
) -> None:
    with gateway_stack(ups.config(auth=TEAM_KEYS)) as gw:
        with _client_with_key(gw.base_url, style, "gw-a") as client:
            message = client.messages.create(model=BACKUP_MODEL, max_tokens=8, messages=HELLO)
        assert message.content[0].type == "text"
        event = gw.last_event()
    [received] = ups.primary.received
    if style == "x-api-key":
        assert received.headers["x-api-key"] == UPSTREAM_KEY
        assert "authorization" not in received.headers
    else:
        assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert "x-api-key" not in received.headers
    _assert_no_secret(header_values(received.headers) + received.body.decode())
    assert (event.status, event.key_id, event.tags) == (200, "team-a", ["team-a"])
    _assert_no_secret(encoded(event))


@pytest.mark.parametrize(
    ("style", "key"),
    [("x-api-key", "gw-wrong"), ("bearer", "gw-wrong"), ("bearer", None)],
    ids=["wrong-x-api-key", "wrong-bearer", "missing"],
)
def test_wrong_or_missing_key_is_401(ups: Upstreams, style: str, key: str | None) -> None:
    with gateway_stack(ups.config(auth=TEAM_KEYS)) as gw:
        with (
            _client_with_key(gw.base_url, style, key) as client,
            pytest.raises(anthropic.AuthenticationError) as caught,
        ):
            client.messages.create(model=BACKUP_MODEL, max_tokens=8, messages=HELLO)
        event = gw.last_event()
    message = _assert_envelope(caught.value, 401, "authentication_error")
    assert "key" in message
    _assert_no_secret(caught.value.response.text, "gw-wrong", *SECRETS)
    assert ups.primary.received == []
    assert (event.status, event.error_type, event.key_id) == (401, "authentication_error", None)
    _assert_no_secret(encoded(event), "gw-wrong", *SECRETS)


def test_model_outside_the_keys_allow_list_is_403(ups: Upstreams) -> None:
    with gateway_stack(ups.config(auth=TEAM_KEYS)) as gw:
        with (
            sdk_client(gw.base_url, bearer="gw-a") as client,
            pytest.raises(anthropic.PermissionDeniedError) as caught,
        ):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        event = gw.last_event()
    message = _assert_envelope(caught.value, 403, "permission_error")
    assert MODEL in message
    _assert_no_secret(caught.value.response.text)
    assert ups.primary.received == []
    assert (event.status, event.key_id, event.error_type) == (403, "team-a", "permission_error")


@pytest.mark.parametrize(
    ("field", "value", "model"),
    [
        # The bare id allows the default provider's model, never the backup's of that name.
        ("fallbacks", ["anthropic/claude-haiku-4-5", BACKUP], "claude-haiku-4-5"),
        ("router_candidates", ["anthropic/claude-haiku-4-5", f"anthropic/{MODEL}"], "auto"),
    ],
)
def test_models_named_in_the_body_are_held_to_the_keys_allow_list(
    ups: Upstreams, field: str, value: list[str], model: str
) -> None:
    keys = AuthConfig(
        mode="static",
        keys=(ApiKeyConfig(id="team-a", key="gw-a", models=("claude-haiku-4-5", "auto")),),
    )
    with (
        gateway_stack(ups.config(auth=keys)) as gw,
        sdk_client(gw.base_url, bearer="gw-a") as client,
        pytest.raises(anthropic.PermissionDeniedError) as caught,
    ):
        client.messages.create(model=model, max_tokens=8, messages=HELLO, extra_body={field: value})
    message = _assert_envelope(caught.value, 403, "permission_error")
    assert f"{field}.1" in message and value[1] in message
    assert ups.primary.received == [] and ups.backup.received == []


def test_allowed_models_in_the_body_pass(ups: Upstreams) -> None:
    keys = AuthConfig(
        mode="static",
        keys=(ApiKeyConfig(id="team-a", key="gw-a", models=("claude-haiku-4-5", BACKUP)),),
    )
    ups.primary.push(Reply(status=529, body=error_json("overloaded_error", "busy")))
    with gateway_stack(ups.config(auth=keys)) as gw:
        with sdk_client(gw.base_url, bearer="gw-a") as client:
            client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=8,
                messages=HELLO,
                extra_body={"fallbacks": [BACKUP]},
            )
        event = gw.last_event()
    assert (event.status, event.provider, event.fallback_used) == (200, "backup", True)


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_virtual_key_reaches_the_upstream_and_the_gateway_key_never_does(
    ups: Upstreams, style: str
) -> None:
    with gateway_stack(ups.config(auth=TEAM_KEYS)) as gw:
        with _client_with_key(gw.base_url, style, "gw-b") as client:
            message = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert message.content[0].type == "text"
        event = gw.last_event()
    [received] = ups.primary.received
    if style == "x-api-key":
        assert received.headers["x-api-key"] == "sk-up-b"
        assert "authorization" not in received.headers
    else:
        assert received.headers["authorization"] == "Bearer sk-up-b"
        assert "x-api-key" not in received.headers
    _assert_no_secret(header_values(received.headers), "gw-b", UPSTREAM_KEY)
    assert event.key_id == "team-b"
    _assert_no_secret(encoded(event))


def _edgee_keys() -> AuthConfig:
    return AuthConfig(mode="static", keys=TEAM_KEYS.keys, header="x-edgee-api-key")


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_alternate_key_header_passes_the_clients_own_key_through(
    ups: Upstreams, style: str
) -> None:
    with gateway_stack(ups.config(auth=_edgee_keys())) as gw:
        headers = {"x-edgee-api-key": "gw-a"}
        with _client_with_key(gw.base_url, style, "sk-own-client", headers) as client:
            client.messages.create(model=BACKUP_MODEL, max_tokens=8, messages=HELLO)
        event = gw.last_event()
    [received] = ups.primary.received
    if style == "x-api-key":
        assert received.headers["x-api-key"] == "sk-own-client"
    else:
        assert received.headers["authorization"] == "Bearer sk-own-client"
    assert "x-edgee-api-key" not in received.headers
    _assert_no_secret(header_values(received.headers), "gw-a", UPSTREAM_KEY)
    assert (event.key_id, event.tags) == ("team-a", ["team-a"])
    _assert_no_secret(encoded(event), "gw-a", "sk-own-client")


@pytest.mark.parametrize("own_key", ["gw-a", None], ids=["gateway-key-as-bearer", "none"])
def test_alternate_key_header_without_an_own_key_uses_the_configured_upstream_key(
    ups: Upstreams, own_key: str | None
) -> None:
    # An SDK 2.x client always sends its api_key as a bearer token, so a user pointing it at
    # the gateway may well set the gateway key there as well as in x-edgee-api-key. That is
    # no provider key of the client's own: it must not go upstream, and neither case may
    # leave the upstream without the key the gateway is configured with.
    with gateway_stack(ups.config(auth=_edgee_keys())) as gw:
        headers = {"x-edgee-api-key": "gw-a"}
        with sdk_client(gw.base_url, bearer=own_key, headers=headers) as client:
            client.messages.create(model=BACKUP_MODEL, max_tokens=8, messages=HELLO)
    [received] = ups.primary.received
    sent = header_values(received.headers)
    _assert_no_secret(sent, "gw-a")
    assert UPSTREAM_KEY in sent


def test_gateway_key_header_is_never_forwarded_whatever_its_name(ups: Upstreams) -> None:
    # Client headers named anthropic-* are forwarded upstream as a rule; a gateway key header
    # that happens to be named like one is still the gateway's secret.
    auth = AuthConfig(mode="static", keys=TEAM_KEYS.keys, header="anthropic-gateway-key")
    with gateway_stack(ups.config(auth=auth)) as gw:
        headers = {"anthropic-gateway-key": "gw-a"}
        ups.primary.push(Reply(body=message_json()), Reply(body=b'{"input_tokens": 3}'))
        with sdk_client(gw.base_url, bearer="sk-own-client", headers=headers) as client:
            client.messages.create(model=BACKUP_MODEL, max_tokens=8, messages=HELLO)
            count = client.messages.count_tokens(model=BACKUP_MODEL, messages=HELLO)
        event = gw.last_event()
    assert count.input_tokens == 3
    assert [r.path for r in ups.primary.received] == ["/v1/messages", "/v1/messages/count_tokens"]
    for received in ups.primary.received:
        assert received.headers["authorization"] == "Bearer sk-own-client"
        assert "anthropic-gateway-key" not in received.headers
        _assert_no_secret(header_values(received.headers), "gw-a")
    assert event.key_id == "team-a"


def test_passthrough_mode_requires_a_key_and_forwards_it(ups: Upstreams) -> None:
    config = ups.config(auth=AuthConfig(mode="passthrough"))
    with gateway_stack(config) as gw:
        with sdk_client(gw.base_url) as client, pytest.raises(anthropic.AuthenticationError) as no:
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        assert ups.primary.received == []
        with sdk_client(gw.base_url, x_api_key="sk-ant-client-own") as client:
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        events = gw.wait_for_events(2)
    _assert_envelope(no.value, 401, "authentication_error")
    [received] = ups.primary.received
    assert received.headers["x-api-key"] == "sk-ant-client-own"
    assert UPSTREAM_KEY not in header_values(received.headers)
    assert [event.status for event in events] == [401, 200]
    key_id = events[1].key_id
    assert key_id is not None and key_id.startswith("client:")
    _assert_no_secret(encoded(events[1]), "sk-ant-client-own")


def test_tags_from_header_key_and_metadata_are_merged_and_metadata_tags_stripped(
    ups: Upstreams,
) -> None:
    with gateway_stack(ups.config(auth=TEAM_KEYS)) as gw:
        headers = {"x-mw-tags": "prod,agent", "x-claude-code-session-id": "sess-1234"}
        with sdk_client(gw.base_url, bearer="gw-a", headers=headers) as client:
            metadata = {"user_id": "user-7", "tags": ["ticket-42"]}
            client.messages.create(
                model=BACKUP_MODEL, max_tokens=8, messages=HELLO, extra_body={"metadata": metadata}
            )
        event = gw.last_event()
        context = gw.finished[-1]
    assert event.tags == ["prod", "agent", "team-a", "ticket-42"]
    assert event.session_id == "sess-1234"
    assert (context.tags, context.session_id) == (event.tags, "sess-1234")
    [received] = ups.primary.received
    assert _body(received) == {
        "model": BACKUP_MODEL,
        "max_tokens": 8,
        "messages": HELLO,
        "metadata": {"user_id": "user-7"},
    }
    assert "x-mw-tags" not in received.headers


def test_an_unusual_session_id_is_accepted_as_anthropic_accepts_it(ups: Upstreams) -> None:
    # Anthropic ignores the header: the gateway forwards it untouched and records a digest.
    with gateway_stack(ups.config()) as gw:
        headers = {"x-claude-code-session-id": "s p a c e"}
        with sdk_client(gw.base_url, bearer="sk-client", headers=headers) as client:
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        event = gw.last_event()
    assert event.status == 200
    assert event.session_id is not None and event.session_id.startswith("sha256:")
    [received] = ups.primary.received
    assert received.headers["x-claude-code-session-id"] == "s p a c e"


def test_edgee_header_preset(ups: Upstreams) -> None:
    config = ups.config(headers=HeaderNames(preset="edgee"))
    with gateway_stack(config) as gw:
        headers = {
            "x-edgee-tags": "prod, agent",
            "x-edgee-session-id": "edgee-session-9",
            "x-mw-tags": "not-read",
        }
        with sdk_client(gw.base_url, bearer="sk-client", headers=headers) as client:
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=8, messages=HELLO
            )
        event = gw.last_event()
    assert (event.tags, event.session_id) == (["prod", "agent"], "edgee-session-9")
    assert raw.headers["x-edgee-provider"] == "anthropic"
    assert raw.headers["x-edgee-model"] == MODEL
    assert raw.headers["x-edgee-fallback-used"] == "0"
    assert "x-mw-provider" not in raw.headers


@pytest.mark.parametrize(
    ("headers", "metadata", "named"),
    [
        ({"x-mw-tags": "a b"}, None, "x-mw-tags"),
        ({"x-mw-tags": "ok,bad\ttag"}, None, "x-mw-tags"),
        ({}, {"tags": ["fine", "not fine"]}, "metadata.tags.1"),
    ],
    ids=["space", "tab", "metadata"],
)
def test_a_bad_tag_is_400_naming_its_source(
    ups: Upstreams, headers: dict[str, str], metadata: dict[str, Any] | None, named: str
) -> None:
    extra = {} if metadata is None else {"metadata": metadata}
    with gateway_stack(ups.config()) as gw:
        with (
            sdk_client(gw.base_url, bearer="sk-client", headers=headers) as client,
            pytest.raises(anthropic.BadRequestError) as caught,
        ):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO, extra_body=extra)
        event = gw.last_event()
    message = _assert_envelope(caught.value, 400, "invalid_request_error")
    assert message.startswith(named + ":")
    assert ups.primary.received == []
    assert (event.status, event.error_type) == (400, "invalid_request_error")


# How each failure shows in the attempts log: the primary's status (None when it never
# answered) and the error type; a stalled stream had already answered 200 with its headers.
_PRIMARY_ATTEMPT = {
    ("refused", False): (None, "api_error"),
    ("refused", True): (None, "api_error"),
    ("500", False): (500, "api_error"),
    ("500", True): (500, "api_error"),
    ("529", False): (529, "overloaded_error"),
    ("529", True): (529, "overloaded_error"),
    ("timeout", False): (None, "timeout_error"),
    ("timeout", True): (200, "timeout_error"),
    ("error-event", True): (200, "overloaded_error"),
}


def _script_failing_primary(ups: Upstreams, mode: str, stream: bool) -> dict[str, Any]:
    """Make the primary fail as ``mode`` says; returns the config options that mode needs."""
    if mode == "refused":
        return {"primary_url": closed_port_url()}
    if mode in ("500", "529"):
        kind = "api_error" if mode == "500" else "overloaded_error"
        ups.primary.default = Reply(status=int(mode), body=error_json(kind, "primary failed"))
    elif mode == "timeout":
        late = text_stream_events(["late"]) if stream else None
        ups.primary.default = Reply(body=message_json("late"), chunks=late, delay=0.6)
        return {"read_timeout": 0.2}
    else:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        start = text_stream_events(["never"])[0]
        ups.primary.default = Reply(chunks=[start, sse("error", error)])
    return {}


def _backup_stream() -> list[bytes]:
    return text_stream_events(["Backup ", "answer."], model=BACKUP_MODEL, input_tokens=9)


def _script_backup(ups: Upstreams, stream: bool) -> None:
    if stream:
        ups.backup.default = Reply(chunks=_backup_stream())
    else:
        body = message_json("Backup answer.", model=BACKUP_MODEL, input_tokens=9)
        ups.backup.default = Reply(body=body)


def _fallback_config(ups: Upstreams, **options: Any) -> GatewayConfig:
    return ups.config(fallback=FallbackConfig(default_chain=(BACKUP,)), **options)


def _attempts(attempts: list[Any]) -> list[tuple[Any, Any, Any]]:
    """(target, status, error_type) of each attempt, whether a Struct or decoded JSON."""
    if attempts and isinstance(attempts[0], dict):
        return [(a["target"], a["status"], a["error_type"]) for a in attempts]
    return [(a.target, a.status, a.error_type) for a in attempts]


def _create_through(
    gw: GatewayStack, stream: bool, **extra: Any
) -> tuple[dict[str, str], bytes, str]:
    """One request with debug on; returns the response headers, raw body and answer text."""
    with sdk_client(gw.base_url, bearer="sk-client", headers={"x-mw-debug": "1"}) as client:
        if stream:
            with client.messages.with_streaming_response.create(
                model=MODEL, max_tokens=16, messages=HELLO, stream=True, **extra
            ) as response:
                headers, raw = dict(response.headers), b"".join(response.iter_bytes())
            events = [json.loads(line[6:]) for line in raw.split(b"\n") if line[:6] == b"data: "]
            text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
            return headers, raw, text
        answer = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=16, messages=HELLO, **extra
        )
        block = answer.parse().content[0]
        assert block.type == "text"
        return dict(answer.headers), answer.http_response.content, block.text


@pytest.mark.parametrize(("mode", "stream"), list(_PRIMARY_ATTEMPT))
def test_failing_primary_falls_back_to_the_backup(ups: Upstreams, mode: str, stream: bool) -> None:
    options = _script_failing_primary(ups, mode, stream)
    _script_backup(ups, stream)
    with gateway_stack(_fallback_config(ups, **options)) as gw:
        headers, raw, text = _create_through(gw, stream)
        event = gw.last_event()
    assert text == "Backup answer."
    assert headers["x-mw-provider"] == "backup"
    assert headers["x-mw-model"] == BACKUP_MODEL
    assert headers["x-mw-fallback-used"] == "1"
    assert re.fullmatch(r"gateway;dur=[\d.]+, upstream;dur=[\d.]+", headers["server-timing"])
    expected = [(PRIMARY, *_PRIMARY_ATTEMPT[mode, stream]), (BACKUP, 200, None)]
    assert _attempts(json.loads(headers["x-mw-debug-attempts"])) == expected
    if stream:
        # One clean stream: exactly the backup's bytes, nothing of the primary's attempt.
        assert raw == b"".join(_backup_stream())
        assert raw.count(b"event: message_start") == 1 and b"event: error" not in raw
    [to_backup] = ups.backup.received
    sent = {"model": BACKUP_MODEL, "max_tokens": 16, "messages": HELLO}
    assert _body(to_backup) == ({**sent, "stream": True} if stream else sent)
    if mode != "refused":
        assert [_body(r)["model"] for r in ups.primary.received] == [MODEL]
    assert (event.status, event.fallback_used, event.provider) == (200, True, "backup")
    assert (event.requested_model, event.served_model) == (MODEL, BACKUP_MODEL)
    assert (event.input_tokens, event.stream) == (9, stream)
    assert _attempts(event.attempts) == expected


def test_body_fallbacks_are_consumed_and_stripped(ups: Upstreams) -> None:
    ups.primary.default = Reply(status=529, body=error_json("overloaded_error", "Overloaded"))
    _script_backup(ups, stream=False)
    with gateway_stack(ups.config()) as gw:
        headers, _, text = _create_through(gw, False, extra_body={"fallbacks": [BACKUP]})
        event = gw.last_event()
    assert (text, headers["x-mw-provider"], headers["x-mw-fallback-used"]) == (
        "Backup answer.",
        "backup",
        "1",
    )
    [to_primary], [to_backup] = ups.primary.received, ups.backup.received
    assert "fallbacks" not in _body(to_primary)
    assert _body(to_backup) == {"model": BACKUP_MODEL, "max_tokens": 16, "messages": HELLO}
    assert (event.fallback_used, event.served_model) == (True, BACKUP_MODEL)


def test_body_fallbacks_naming_unknown_targets_pass_through_untouched(ups: Upstreams) -> None:
    with gateway_stack(ups.config()) as gw:
        with sdk_client(gw.base_url, bearer="sk-client") as client:
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=8, messages=HELLO, extra_body={"fallbacks": ["gpt-x"]}
            )
        event = gw.last_event()
    [received] = ups.primary.received
    assert _body(received)["fallbacks"] == ["gpt-x"]
    assert received.body == raw.http_request.content
    assert (raw.headers["x-mw-provider"], raw.headers["x-mw-fallback-used"]) == ("anthropic", "0")
    assert "server-timing" not in raw.headers and "x-mw-debug-attempts" not in raw.headers
    assert ups.backup.received == []
    assert (event.fallback_used, event.provider, event.served_model) == (False, "anthropic", MODEL)


def test_breaker_opens_after_failures_then_a_trial_closes_it(ups: Upstreams) -> None:
    ups.primary.default = Reply(status=500, body=error_json("api_error", "down"))
    breaker = BreakerPolicy(failure_threshold=2, cooldown=1.0)
    fallback = FallbackConfig(default_chain=(BACKUP,), breaker=breaker)
    with (
        gateway_stack(ups.config(fallback=fallback)) as gw,
        sdk_client(gw.base_url, bearer="sk-client") as client,
    ):

        def served_by() -> str:
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=8, messages=HELLO
            )
            return raw.headers["x-mw-provider"]

        assert [served_by(), served_by()] == ["backup", "backup"]
        assert len(ups.primary.received) == 2
        opened_at = time.monotonic()
        assert served_by() == "backup"
        assert len(ups.primary.received) == 2  # the open circuit skipped the primary
        event = gw.wait_for_events(3)[2]
        assert _attempts(event.attempts) == [(PRIMARY, None, "circuit_open"), (BACKUP, 200, None)]
        ups.primary.default = None  # the primary recovers
        time.sleep(max(0.0, 1.05 - (time.monotonic() - opened_at)))
        assert served_by() == "anthropic"  # the trial after the cooldown
        assert served_by() == "anthropic"  # closed: no cooldown, no trial needed
    assert len(ups.primary.received) == 4
    assert len(ups.backup.received) == 3


def test_one_clients_failures_never_shut_others_out_of_the_only_upstream(ups: Upstreams) -> None:
    # Keys passed through, one upstream: a tenant whose requests the upstream refuses with a
    # 500 opens its circuit, but the next tenant must still get the upstream's own answers,
    # as it would from Anthropic, not the gateway's 529 for a cooldown.
    def by_key(request: Received) -> Reply:
        if request.headers.get("x-api-key") == "sk-poison":
            down = error_json("api_error", "this request breaks us")
            return Reply(status=500, body=down, headers=[("x-should-retry", "false")])
        return Reply(body=message_json())

    ups.primary.default = by_key
    breaker = BreakerPolicy(failure_threshold=2, cooldown=30.0)
    fallback = FallbackConfig(breaker=breaker)
    config = ups.config(auth=AuthConfig(mode="passthrough"), fallback=fallback)
    with gateway_stack(config) as gw:
        with sdk_client(gw.base_url, x_api_key="sk-poison") as poison:
            for _ in range(3):
                with pytest.raises(anthropic.InternalServerError) as failed:
                    poison.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
                assert "this request breaks us" in failed.value.message
        with sdk_client(gw.base_url, x_api_key="sk-healthy") as healthy:
            raw = healthy.messages.with_raw_response.create(
                model=MODEL, max_tokens=8, messages=HELLO
            )
        events = gw.wait_for_events(4)
    assert raw.status_code == 200 and raw.headers["x-mw-provider"] == "anthropic"
    assert len(ups.primary.received) == 4
    assert [event.status for event in events] == [500, 500, 500, 200]
    assert all("circuit_open" not in encoded(event) for event in events)


async def _burst(base_url: str, key: str, count: int) -> list[Any]:
    async with async_sdk_client(base_url, key) as client:
        calls = [
            client.messages.with_raw_response.create(
                model=BACKUP_MODEL, max_tokens=8, messages=HELLO
            )
            for _ in range(count)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)


def test_requests_per_minute_per_key_under_concurrency(ups: Upstreams) -> None:
    limits = LimitsConfig(rules=(LimitRule(scope="key", requests_per_minute=5),))
    with gateway_stack(ups.config(auth=TEAM_KEYS, limits=limits)) as gw:
        results = asyncio.run(_burst(gw.base_url, "gw-a", 20))
        [other] = asyncio.run(_burst(gw.base_url, "gw-b", 1))
        events = gw.wait_for_events(21)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    rejected = [r for r in results if isinstance(r, BaseException)]
    assert len(admitted) == 5 and len(rejected) == 15
    remaining = sorted(r.headers["anthropic-ratelimit-requests-remaining"] for r in admitted)
    assert remaining == ["0", "1", "2", "3", "4"]
    for error in rejected:
        assert isinstance(error, anthropic.RateLimitError)
        message = _assert_envelope(error, 429, "rate_limit_error")
        assert "team-a" in message and "gw-a" not in message
        headers = error.response.headers
        # A sliding minute: five requests early in this minute weigh on the next one until
        # a fifth of it has passed, so the wait may reach 72 s (rounded up, plus one).
        assert 1 <= int(headers["retry-after"]) <= 73
        assert headers["anthropic-ratelimit-requests-limit"] == "5"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert RFC3339.fullmatch(headers["anthropic-ratelimit-requests-reset"])
    assert len(ups.primary.received) == 6
    # Another key has its own budget.
    assert not isinstance(other, BaseException)
    assert other.headers["anthropic-ratelimit-requests-limit"] == "5"
    assert other.headers["anthropic-ratelimit-requests-remaining"] == "4"
    statuses = sorted(event.status for event in events if event.key_id == "team-a")
    assert statuses == [200] * 5 + [429] * 15
    assert [event.status for event in events if event.key_id == "team-b"] == [200]


def _raise_runtime_error(request: IncomingRequest) -> Principal:
    raise RuntimeError("auth backend exploded: secret-dsn://admin:hunter2@db")


async def _raise_runtime_error_async(request: IncomingRequest) -> Principal:
    raise RuntimeError("auth backend exploded: secret-dsn://admin:hunter2@db")


@pytest.mark.parametrize("auth", [_raise_runtime_error, _raise_runtime_error_async])
def test_auth_hook_raising_is_a_500_without_the_traceback(ups: Upstreams, auth: Any) -> None:
    with gateway_stack(ups.config(), auth=auth) as gw:
        with (
            sdk_client(gw.base_url, bearer="sk-client") as client,
            pytest.raises(anthropic.InternalServerError) as caught,
        ):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        event = gw.last_event()
    error = caught.value
    message = _assert_envelope(error, 500, "api_error")
    assert message == f"Internal gateway error (request {error.request_id})."
    text = error.response.text
    assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text
    assert ups.primary.received == []
    assert (event.request_id, event.status, event.error_type) == (
        error.request_id,
        500,
        "api_error",
    )


def test_tagger_hook_adds_tags_or_rejects_with_400(ups: Upstreams) -> None:
    def tag_project(request: IncomingRequest, context: RequestContext) -> list[str]:
        project = request.headers.get("x-project")
        if project is None:
            raise InvalidRequestError("x-project: every request must name its project.")
        return [f"project:{project}"]

    with gateway_stack(ups.config(), tagger=tag_project) as gw:
        headers = {"x-project": "apollo", "x-mw-tags": "prod"}
        with sdk_client(gw.base_url, bearer="sk-client", headers=headers) as client:
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        with (
            sdk_client(gw.base_url, bearer="sk-client") as client,
            pytest.raises(anthropic.BadRequestError) as caught,
        ):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        events = gw.wait_for_events(2)
    message = _assert_envelope(caught.value, 400, "invalid_request_error")
    assert message == "x-project: every request must name its project."
    assert len(ups.primary.received) == 1
    assert events[0].tags == ["prod", "project:apollo"]
    assert (events[1].status, events[1].error_type) == (400, "invalid_request_error")


class _SinkGate:
    """Holds the usage sinks that wait on it until the test releases it: a sink that held up a
    response would then hold it until the client's timeout, failing the test instead of
    merely making it slower than some threshold."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def release(self) -> None:
        with self._lock:
            self._released.set()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def blocking_sink(self, event: UsageEvent) -> None:
        """A sync sink: blocks the dispatcher's worker thread."""
        self.entered.set()
        assert self._released.wait(timeout=30.0), "the test never released the sink"

    async def blocking_async_sink(self, event: UsageEvent) -> None:
        """An async sink: blocks the dispatcher's task on the gateway's event loop."""
        self.entered.set()
        with self._lock:
            if self._released.is_set():
                return
            released = asyncio.Event()
            self._waiters.append((asyncio.get_running_loop(), released))
        await released.wait()


def _raising_sink(event: UsageEvent) -> None:
    raise RuntimeError("sink is broken")


@pytest.mark.parametrize("blocking", ["sync", "async"])
def test_raising_or_slow_usage_sinks_do_not_affect_responses(ups: Upstreams, blocking: str) -> None:
    ups.primary.push(
        Reply(chunks=text_stream_events(["One ", "two."])),
        Reply(body=message_json("Plain.")),
        Reply(chunks=text_stream_events(["Three."])),
    )
    gate = _SinkGate()
    slow = gate.blocking_sink if blocking == "sync" else gate.blocking_async_sink
    sinks = [_raising_sink, slow]
    with (
        logged_errors("messages_mw.usage") as errors,
        gateway_stack(ups.config(), usage_sinks=sinks) as gw,
        sdk_client(gw.base_url, bearer="sk-client") as sdk,
    ):
        # The slow sink blocks until every response is in: had it held one up, that request
        # would hang until this timeout and fail the test.
        client = sdk.with_options(timeout=10.0)
        try:
            started = time.monotonic()
            with client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream:
                first = stream.get_final_text()
            second = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
            with client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream:
                third = stream.get_final_text()
            elapsed_ms = (time.monotonic() - started) * 1000
            # The slow sink really was in the way: it got the first event and is still blocked.
            assert gate.entered.wait(timeout=10.0)
        finally:
            gate.release()
        events = gw.wait_for_events(3, timeout=10.0)
    assert (first, third) == ("One two.", "Three.")
    assert second.content[0].type == "text" and second.content[0].text == "Plain."
    assert [event.status for event in events] == [200, 200, 200]
    assert [event.stream for event in events] == [True, False, True]
    # The sink was released only after the last response: a latency that counted the time
    # spent in sinks would exceed the whole span of the three round trips.
    assert all(e.latency_ms is not None and e.latency_ms <= elapsed_ms for e in events)
    failures = [r for r in errors if r.exc_info and str(r.exc_info[1]) == "sink is broken"]
    logged = sorted(r.getMessage().rsplit(" ", 1)[-1] for r in failures)
    assert logged == sorted(event.request_id for event in events)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_compressor_output_is_what_the_upstream_receives(ups: Upstreams, is_async: bool) -> None:
    seen: list[bytes] = []

    def shrink(body: bytes) -> bytes:
        seen.append(body)
        request = json.loads(body)
        request["messages"] = [{"role": "user", "content": "[compressed]"}]
        return json.dumps(request, separators=(",", ":")).encode()

    def compressor(body: bytes, context: RequestContext) -> bytes:
        return shrink(body)

    async def async_compressor(body: bytes, context: RequestContext) -> bytes:
        return shrink(body)

    hook = async_compressor if is_async else compressor
    with gateway_stack(ups.config(), compressor=hook) as gw:
        with sdk_client(gw.base_url, bearer="sk-client") as client:
            metadata = {"user_id": "u-1", "tags": ["t1"]}
            client.messages.create(
                model=MODEL, max_tokens=8, messages=HELLO, extra_body={"metadata": metadata}
            )
        event = gw.last_event()
    [given] = seen
    # The compressor runs after the gateway consumed its own fields.
    assert json.loads(given)["metadata"] == {"user_id": "u-1"}
    [received] = ups.primary.received
    assert received.body == shrink(given)
    assert _body(received)["messages"] == [{"role": "user", "content": "[compressed]"}]
    assert (event.status, event.tags) == (200, ["t1"])


def test_compressor_returning_none_leaves_the_body_as_sent(ups: Upstreams) -> None:
    calls: list[str] = []

    def observe_only(body: bytes, context: RequestContext) -> None:
        calls.append(context.request_id)

    with gateway_stack(ups.config(), compressor=observe_only) as gw:
        with sdk_client(gw.base_url, bearer="sk-client") as client:
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=8, messages=HELLO
            )
        event = gw.last_event()
    [received] = ups.primary.received
    assert received.body == raw.http_request.content
    assert calls == [event.request_id]


def test_fastapi_host_with_its_own_auth_and_usage_sink(ups: Upstreams) -> None:
    config = GatewayConfig(upstream=UpstreamConfig(base_url=ups.primary_url))

    # The README example, as it is there:
    def my_auth(request: IncomingRequest) -> Principal:
        # presented_key reads x-api-key or Authorization: Bearer (what SDK 2.x sends)
        if presented_key(request.headers) != "letmein":
            raise AuthenticationError("invalid x-api-key")
        return Principal(key_id="me")

    events: list[UsageEvent] = []
    gateway = Gateway(config, auth=my_auth, usage_sinks=[events.append])
    app = FastAPI(lifespan=gateway.lifespan)
    app.mount("/anthropic", gateway)

    with serve(app) as host_url:
        base_url = host_url + "/anthropic"
        with sdk_client(base_url, bearer="letmein") as client:
            message = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        with (
            sdk_client(base_url, x_api_key="let-me-in-please") as client,
            pytest.raises(anthropic.AuthenticationError) as caught,
        ):
            client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
        wait_until(lambda: len(events) == 2)
    assert message.content[0].type == "text"
    assert _assert_envelope(caught.value, 401, "authentication_error") == "invalid x-api-key"
    [received] = ups.primary.received
    assert "letmein" not in header_values(received.headers)
    assert [(e.key_id, e.status) for e in events] == [("me", 200), (None, 401)]
