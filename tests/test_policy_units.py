"""Units of the policy layer: key auth, tags, sessions, targets and body edits."""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages_mw.auth import (
    ApiKeyConfig,
    AuthConfig,
    PassthroughAuth,
    StaticKeyAuth,
    hash_key,
    presented_key,
)
from messages_mw.body_edit import edit_top_level
from messages_mw.config import ConfigError, GatewayConfig, load_config
from messages_mw.errors import AuthenticationError, InvalidRequestError
from messages_mw.fallback import Target
from messages_mw.hooks import IncomingRequest, check_hook
from messages_mw.routing import FallbackConfig, TargetResolver
from messages_mw.tags import HeaderNames, TagPolicy, collect_tags, parse_tag_header, session_id

POLICY = TagPolicy()


def _request(**headers: str) -> IncomingRequest:
    return IncomingRequest("POST", "/v1/messages", headers, "claude-sonnet-4-6")


def test_presented_key_order() -> None:
    assert presented_key({"x-api-key": "a", "authorization": "Bearer b"}) == "a"
    assert presented_key({"authorization": "Bearer b"}) == "b"
    assert presented_key({"authorization": "Basic b"}) is None
    assert presented_key({"x-gw": "g", "x-api-key": "a"}, "x-gw") == "g"


def test_static_keys_accept_reject_and_never_echo_the_key() -> None:
    auth = StaticKeyAuth(
        (
            ApiKeyConfig(id="team-a", key="sk-gw-a", models=("claude-haiku-4-5",), tags=("a",)),
            ApiKeyConfig(id="team-b", sha256=hash_key("sk-gw-b"), upstream_api_key="sk-up"),
        )
    )
    principal = auth(_request(**{"x-api-key": "sk-gw-a"}))
    assert principal.key_id == "team-a"
    assert principal.allowed_models == frozenset({"claude-haiku-4-5"})
    assert principal.tags == ("a",) and not principal.passthrough
    bearer = auth(_request(authorization="Bearer sk-gw-b"))
    assert bearer.key_id == "team-b" and bearer.upstream_api_key == "sk-up"
    for headers in ({}, {"x-api-key": "sk-wrong-secret"}):
        with pytest.raises(AuthenticationError) as caught:
            auth(_request(**headers))
        assert "sk-wrong-secret" not in caught.value.message


def test_a_non_ascii_key_matches_as_the_client_sends_it() -> None:
    # A header arrives as bytes, decoded as latin-1: the configured key (hashed as UTF-8)
    # must match the UTF-8 bytes a client sends for it, and never crash on anything else.
    auth = StaticKeyAuth((ApiKeyConfig(id="accent", key="clé-secrète"),))
    on_the_wire = "clé-secrète".encode().decode("latin-1")
    assert auth(_request(**{"x-api-key": on_the_wire})).key_id == "accent"
    for odd in ("clé-secrète", "snow ☃"):
        with pytest.raises(AuthenticationError):
            auth(_request(**{"x-api-key": odd}))


def test_alternate_header_marks_client_key_passthrough() -> None:
    auth = StaticKeyAuth((ApiKeyConfig(id="cc", key="gw-key"),), header="X-Edgee-Api-Key")
    principal = auth(_request(**{"x-edgee-api-key": "gw-key", "x-api-key": "sk-ant-own"}))
    assert principal.key_id == "cc" and principal.passthrough


@pytest.mark.parametrize(
    "entry",
    [ApiKeyConfig(id="x"), ApiKeyConfig(id="x", key=""), ApiKeyConfig(id="x", sha256="")],
    ids=["neither", "empty-key", "empty-hash"],
)
def test_key_config_needs_a_key(entry: ApiKeyConfig) -> None:
    # An empty value (a template whose variable was unset) is no key: it could never match.
    with pytest.raises(ValueError, match="sha256"):
        StaticKeyAuth((entry,))


def test_key_config_with_both_a_key_and_a_hash_is_refused() -> None:
    # They could name different keys, and one of them would be ignored without a word.
    entry = ApiKeyConfig(id="x", key="sk-one", sha256=hash_key("sk-two"))
    with pytest.raises(ValueError, match="'x' needs exactly one of 'sha256' and 'key'"):
        StaticKeyAuth((entry,))


@pytest.mark.parametrize("digest", ["not-hex", "ab" * 31, "ab" * 33, "abc"])
def test_a_malformed_sha256_is_refused_when_the_keys_are_loaded(digest: str) -> None:
    with pytest.raises(ValueError, match="'x': sha256 must be 64 hex digits"):
        StaticKeyAuth((ApiKeyConfig(id="x", sha256=digest),))


def test_the_same_key_twice_is_refused_whichever_way_it_is_given() -> None:
    # The later entry would win, and the first's policy (here: its model list) never apply.
    restricted = ApiKeyConfig(id="restricted", key="sk-shared", models=("claude-haiku-4-5",))
    admin = ApiKeyConfig(id="admin", sha256=hash_key("sk-shared"))
    with pytest.raises(ValueError, match="'restricted' and 'admin' are the same key"):
        StaticKeyAuth((restricted, admin))
    # Two keys under one id (a key being rotated) are fine.
    StaticKeyAuth((ApiKeyConfig(id="ci", key="sk-old"), ApiKeyConfig(id="ci", key="sk-new")))


@pytest.mark.parametrize("mode", ["none", "passthrough"])
def test_an_alternate_key_header_outside_static_mode_is_refused(mode: str) -> None:
    with pytest.raises(
        ValueError, match=f"auth.header is read only with mode = 'static'.*'{mode}'"
    ):
        AuthConfig(mode=mode, header="x-edgee-api-key")  # type: ignore[arg-type]


@pytest.mark.parametrize("header", ["authorization", "X-Api-Key"])
def test_an_alternate_key_header_must_be_another_header(header: str) -> None:
    # Read as the alternate header, "Bearer <key>" would be taken for the key: every key 401.
    with pytest.raises(ValueError, match=r"auth\.header names another header"):
        AuthConfig(mode="static", header=header)


def test_a_keys_tags_are_held_to_the_tag_policy_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[auth]\nmode = "static"\n'
        '[[auth.keys]]\nid = "ok"\nkey = "sk-1"\ntags = ["team-a"]\n'
        '[[auth.keys]]\nid = "team"\nkey = "sk-2"\ntags = ["fine", "team a"]\n'
    )
    keys = (
        ApiKeyConfig(id="ok", key="sk-1", tags=("team-a",)),
        ApiKeyConfig(id="team", key="sk-2", tags=("fine", "team a")),
    )
    with pytest.raises(ValueError, match=r"auth\.keys\.1\.tags\.1: tag 'team a' may only"):
        GatewayConfig(auth=AuthConfig(mode="static", keys=keys))
    with pytest.raises(ConfigError, match=r"gateway\.toml: .*auth\.keys\.1\.tags\.1"):
        load_config(path)


def test_a_sha256_in_upper_case_hex_matches() -> None:
    auth = StaticKeyAuth((ApiKeyConfig(id="x", sha256=hash_key("sk-gw").upper()),))
    assert auth(_request(**{"x-api-key": "sk-gw"})).key_id == "x"


def test_passthrough_auth_requires_a_key_and_hides_it() -> None:
    principal = PassthroughAuth()(_request(**{"x-api-key": "sk-ant-secret"}))
    assert principal.passthrough and "secret" not in principal.key_id
    with pytest.raises(AuthenticationError):
        PassthroughAuth()(_request())


def test_tags_from_header_are_validated_and_bounded() -> None:
    assert parse_tag_header(" prod, agent ,,codex", "x-mw-tags", POLICY) == [
        "prod",
        "agent",
        "codex",
    ]
    for bad in ("has space", "new\nline", "x" * 65, "ünï"):
        with pytest.raises(InvalidRequestError, match="x-mw-tags"):
            parse_tag_header(bad, "x-mw-tags", POLICY)
    with pytest.raises(InvalidRequestError, match="at most 2"):
        collect_tags([("h", ["a", "b", "c"])], TagPolicy(max_count=2))
    assert collect_tags([("h", ["a", "b"]), ("key", ["b", "c"])], POLICY) == ["a", "b", "c"]
    # A tag from the body is named by its JSON path, item included.
    with pytest.raises(InvalidRequestError, match=r"^metadata\.tags\.1: tag 'bad tag'"):
        collect_tags([("metadata.tags", ["good", "bad tag"])], POLICY)


@given(st.text(max_size=80))
def test_tag_parser_never_accepts_unsafe_characters(value: str) -> None:
    try:
        tags = parse_tag_header(value, "h", POLICY)
    except InvalidRequestError:
        return
    for tag in tags:
        assert tag and len(tag) <= 64
        assert all(c.isascii() and (c.isalnum() or c in "_.:/-") for c in tag)


def test_session_ids() -> None:
    assert session_id({"s": "76c21bf7-1d67-40e5"}, "s") == "76c21bf7-1d67-40e5"
    assert session_id({}, "s") is None
    assert session_id({"s": "  "}, "s") is None


@pytest.mark.parametrize("sent", ["my session", "x" * 129, "bad id\r\n", "sessi\xf3n"])
def test_an_unusual_session_id_is_recorded_as_a_digest_not_refused(sent: str) -> None:
    # Anthropic ignores the header, so a 400 here would make the gateway stricter than the
    # API it stands in for; the digest keeps the session grouped and the log line clean.
    recorded = session_id({"s": sent}, "s")
    assert recorded is not None and re.fullmatch(r"sha256:[0-9a-f]{32}", recorded)
    assert recorded == session_id({"s": sent}, "s") != session_id({"s": sent + "2"}, "s")


def test_header_presets() -> None:
    edgee = HeaderNames(preset="edgee").resolved()
    assert (edgee.tags, edgee.session, edgee.fallback_used) == (
        "x-edgee-tags",
        "x-edgee-session-id",
        "x-edgee-fallback-used",
    )
    assert HeaderNames(tags="X-Team-Tags").resolved().tags == "x-team-tags"


def test_targets_and_chains() -> None:
    config = FallbackConfig(
        chains={"claude-opus-5-5": ("backup/claude-sonnet-4-6",)},
        default_chain=("backup/claude-haiku-4-5",),
    )
    resolver = TargetResolver(["anthropic", "backup"], "anthropic", config)
    assert resolver.primary("claude-opus-5-5") == Target("anthropic", "claude-opus-5-5")
    assert resolver.primary("backup/x") == Target("backup", "x")
    # Not a provider of ours: the slash belongs to the model id, for the default provider.
    assert resolver.primary("openai/gpt-4o") == Target("anthropic", "openai/gpt-4o")
    chain = resolver.chain("claude-opus-5-5", [Target("backup", "claude-haiku-4-5")])
    assert [t.name for t in chain] == [
        "anthropic/claude-opus-5-5",
        "backup/claude-haiku-4-5",
        "backup/claude-sonnet-4-6",
    ]
    with pytest.raises(ValueError, match="nowhere/x"):
        TargetResolver(["anthropic"], "anthropic", FallbackConfig(default_chain=("nowhere/x",)))


def test_chains_for_made_up_long_model_names_are_not_kept() -> None:
    # The chain cache is keyed by the client's model name, which may be megabytes long.
    resolver = TargetResolver(["anthropic"], "anthropic", FallbackConfig())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(200):
            name = f"{index}-" + "m" * 100_000
            assert resolver.chain(name, None) == [Target("anthropic", name)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1_000_000  # 200 names of 100 KB would hold 20 MB


def test_a_models_chain_is_the_same_every_time_whatever_a_caller_did_with_the_last() -> None:
    config = FallbackConfig(
        default_chain=("backup/claude-sonnet-4-6",),
        chains={"claude-opus-5-5": ("backup/claude-opus-5-5",)},
    )
    resolver = TargetResolver(["anthropic", "backup"], "anthropic", config)
    expected = {
        "claude-opus-5-5": [
            "anthropic/claude-opus-5-5",
            "backup/claude-opus-5-5",
            "backup/claude-sonnet-4-6",
        ],
        "claude-haiku-4-5": ["anthropic/claude-haiku-4-5", "backup/claude-sonnet-4-6"],
    }
    for _ in range(3):
        for model, names in expected.items():
            chain = resolver.chain(model, None)
            assert [t.name for t in chain] == names
            # A router hook may reorder or trim the list it is given.
            chain.reverse()
            chain.pop()
        with_body = resolver.chain("claude-haiku-4-5", [Target("backup", "claude-haiku-4-5")])
        assert [t.name for t in with_body] == [
            "anthropic/claude-haiku-4-5",
            "backup/claude-haiku-4-5",
            "backup/claude-sonnet-4-6",
        ]
    many = [f"model-{number}" for number in range(3000)]
    assert [resolver.chain(model, None)[0].model for model in many] == many


@pytest.mark.parametrize(
    ("mode", "value", "consumed"),
    [
        ("auto", ["backup/claude-haiku-4-5"], True),
        ("auto", ["claude-haiku-4-5"], False),  # not ours: Anthropic's own field, passed on
        ("auto", [{"model": "x"}], False),
        ("never", ["backup/claude-haiku-4-5"], False),
        ("always", ["claude-haiku-4-5"], True),
    ],
)
def test_body_fallbacks_consumption(mode: str, value: object, consumed: bool) -> None:
    resolver = TargetResolver(
        ["anthropic", "backup"],
        "anthropic",
        FallbackConfig(body_fallbacks=mode),  # type: ignore[arg-type]
    )
    result = resolver.body_fallbacks(msgspec.Raw(json.dumps(value).encode()))
    assert (result is not None) == consumed


def test_body_fallbacks_are_bounded() -> None:
    resolver = TargetResolver(["anthropic", "b"], "anthropic", FallbackConfig())
    raw = msgspec.Raw(json.dumps(["b/1", "b/2", "b/3", "b/4"]).encode())
    with pytest.raises(InvalidRequestError, match="at most 3"):
        resolver.body_fallbacks(raw)


def test_edit_top_level_keeps_other_bytes() -> None:
    body = b'{"model":"a/b","x":{"n":1.50,"k":[1, 2]},"fallbacks":["a/c"],"z":null}'
    edited = edit_top_level(body, set_fields={"model": "b"}, remove=["fallbacks"])
    assert edited == b'{"model":"b","x":{"n":1.50,"k":[1, 2]},"z":null}'


def test_bad_hooks_are_rejected() -> None:
    with pytest.raises(TypeError, match="auth"):
        check_hook("auth", 42, "request")
    check_hook("auth", None, "request")
    check_hook("auth", lambda request: None, "request")


class _Compressor:
    def __call__(self, body: bytes, context: object) -> bytes | None:
        return None


@pytest.mark.parametrize(
    ("hook", "arguments", "takes"),
    [
        (lambda request: None, "request, context", False),
        (lambda request, context, extra: None, "request, context", False),
        (lambda: None, "event", False),
        (lambda request, context=None: None, "request", True),
        (lambda *args: None, "context, chain", True),
        (_Compressor(), "body, context", True),
        (len, "event", True),  # a builtin: its signature may not be readable, let through
    ],
)
def test_a_hook_that_cannot_take_its_arguments_fails_at_construction(
    hook: object, arguments: str, takes: bool
) -> None:
    # Else every request would be a 500, or (a usage sink) every event lost in the log.
    if takes:
        check_hook("hook", hook, arguments)
    else:
        with pytest.raises(TypeError, match=f"hook is called with \\({arguments}\\)"):
            check_hook("hook", hook, arguments)


def test_key_digests_are_plain_hex_sha256_as_documented() -> None:
    # Operators compute sha256 = "..." with their own tools (sha256sum, hashlib): pinned to
    # the standard's own test vector, not to what hash_key happens to return.
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_key("abc") == abc
    auth = StaticKeyAuth((ApiKeyConfig(id="ops", sha256=abc),))
    incoming = IncomingRequest("POST", "/v1/messages", {"x-api-key": "abc"}, None)
    assert auth(incoming).key_id == "ops"
    # An odd session id is recorded as the first 32 hex digits of its SHA-256.
    assert session_id({"s": "a b"}, "s") == "sha256:c8687a08aa5d6ed2044328fa6a697ab8"
