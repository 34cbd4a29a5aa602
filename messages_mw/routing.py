"""Which targets a request is tried on: ``provider/model`` names, aliases, body and configured
chains, and the built-in router behind the ``auto`` model."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Literal

import msgspec

from .body_edit import edit_top_level, read_raw_fields
from .errors import InvalidRequestError, PermissionDeniedError
from .fallback import BreakerPolicy, RetryPolicy, Target
from .pricing import PricingTable
from .protocol import DECODE_ERRORS
from .validation import MAX_MODEL_CHARS, describe_decode_error

__all__ = ["FallbackConfig", "TargetResolver"]

_names_decoder = msgspec.json.Decoder(list[str])
_optional_names_decoder: msgspec.json.Decoder[list[str] | None] = msgspec.json.Decoder(
    list[str] | None
)


class FallbackConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fallback chains, retry behaviour and the built-in router.

    ``chains`` maps a requested model to targets tried after it; ``default_chain`` follows
    every request. ``body_fallbacks`` decides whether the request body's ``fallbacks`` field is
    the gateway's (consumed and stripped) or the upstream's (passed on untouched): ``auto``
    consumes it only when every entry names a ``provider/model`` target the gateway routes,
    ``always`` when it is a list of names, ``never`` leaves it alone. ``retry`` defaults to
    one attempt per target (raise ``attempts_per_target`` to retry the same target).

    A request for ``auto_model`` (``None`` or ``""`` turns the router off) is tried on its
    candidates: the body's ``router_candidates`` (consumed and stripped, at most
    ``max_router_candidates``), else ``router_candidates`` here, ordered by
    ``router_strategy``: ``first_healthy`` keeps the order given (targets whose circuit is open
    are skipped, as in any chain), ``cheapest`` sorts by input plus output price per token
    from the pricing table, unknown prices last.
    """

    chains: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    default_chain: tuple[str, ...] = ()
    body_fallbacks: Literal["auto", "always", "never"] = "auto"
    max_body_fallbacks: Annotated[int, msgspec.Meta(ge=0)] = 3
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = msgspec.field(default_factory=BreakerPolicy)
    auto_model: str | None = "auto"
    router_candidates: tuple[str, ...] = ()
    router_strategy: Literal["first_healthy", "cheapest"] = "first_healthy"
    max_router_candidates: Annotated[int, msgspec.Meta(ge=1)] = 8


_PLAIN_CHAINS_KEPT = 1024
# Clients choose model names, up to the body limit: only names a real model could have are
# kept, so the cache holds kilobytes, not gigabytes.
_CACHED_NAME_LENGTH = 256


class TargetResolver:
    """Turns model names into targets and builds the chain for a request.

    ``aliases`` maps a requested name to a target name (``"fast": "openai/gpt-4o-mini"``) and
    is applied before anything else; ``pricing`` orders the ``cheapest`` router strategy.
    A client may not name a provider in ``unnamable`` itself (as ``provider/model``, in the
    model, the body's fallbacks or its router candidates: 403); configured chains, aliases
    and candidates still lead there.
    Raises ``ValueError`` for a configured chain, alias or candidate naming no provider.
    """

    def __init__(
        self,
        provider_names: Iterable[str],
        default_provider: str,
        config: FallbackConfig,
        *,
        aliases: Mapping[str, str] | None = None,
        pricing: PricingTable | None = None,
        unnamable: frozenset[str] = frozenset(),
    ) -> None:
        self._providers = frozenset(provider_names)
        self._unnamable = unnamable
        self._default = default_provider
        self._config = config
        # "" turns the router off too: a TOML file cannot write None.
        self._auto_model = config.auto_model or None
        self._aliases = dict(aliases or {})
        self._pricing = pricing
        configured = [
            *config.default_chain,
            *(t for c in config.chains.values() for t in c),
            *self._aliases.values(),
            *config.router_candidates,
        ]
        for name in configured:
            if "/" in name and not self.routes_explicitly(name):
                raise ValueError(f"fallback target {name!r} names no configured provider")
        self._candidate_names = config.router_candidates
        self._candidates = tuple(self.target(name) for name in config.router_candidates)
        # Configured chains never change: resolve their names once, not per request.
        self._default_tail = tuple(map(self.target, config.default_chain))
        self._model_tails = {
            model: (*map(self.target, names), *self._default_tail)
            for model, names in config.chains.items()
        }
        # Most requests name one of a few models and bring no fallbacks of their own: their
        # chain is worked out once per model.
        self._plain_chains: dict[str, tuple[Target, ...]] = {}

    @property
    def config(self) -> FallbackConfig:
        return self._config

    @property
    def default_provider(self) -> str:
        return self._default

    @property
    def candidates(self) -> tuple[Target, ...]:
        """The auto model's candidates: configured, or from the request's router_candidates."""
        return self._candidates

    @property
    def candidate_names(self) -> tuple[str, ...]:
        """:attr:`candidates` as they were named, before aliases."""
        return self._candidate_names

    def parse(self, name: str) -> Target | None:
        """``provider/model`` for a known provider, the default provider's ``name`` for a name
        without ``/``, ``None`` for anything else (no model, or an unknown provider)."""
        provider, slash, model = name.partition("/")
        if not slash:
            return Target(self._default, name)
        if provider in self._providers and model:
            return Target(provider, model)
        return None

    def target(self, name: str, field: str = "model") -> Target:
        """The target ``name`` stands for, after aliases: ``provider/model`` for a configured
        provider, else the whole name for the default provider.

        A ``/`` before no provider of ours is part of the model id (a Bedrock ARN, an
        OpenRouter-style ``anthropic/claude-…`` for an Anthropic-compatible upstream), which
        the upstream judges, as Anthropic would. Raises :class:`InvalidRequestError`, naming
        ``field`` (where the client wrote ``name``), for a name with a provider but no model.
        """
        name = self._aliases.get(name, name)
        found = self.parse(name)
        if found is not None:
            return found
        if name.partition("/")[0] in self._providers:
            raise InvalidRequestError(f"{field}: '{name}' names a provider but no model.")
        return Target(self._default, name)

    def _client_target(self, name: str, field: str) -> Target:
        """:meth:`target` for a name the client wrote in ``field``."""
        if self._unnamable and name not in self._aliases:
            provider, slash, _ = name.partition("/")
            if slash and provider in self._unnamable:
                raise PermissionDeniedError(
                    f"{field}: '{name}' is served with the gateway's own key for '{provider}', "
                    "which passthrough auth, checking no key, does not lend to callers."
                )
        return self.target(name, field)

    def _body_target(self, name: str, field: str) -> Target:
        """:meth:`_client_target` for a name from a body field other than ``model``, held to
        the length the model is held to when decoded (it may become the served model)."""
        if len(name) > MAX_MODEL_CHARS:
            raise InvalidRequestError(f"{field}: Expected `str` of length <= {MAX_MODEL_CHARS}")
        if not name.strip():
            # Sent upstream as the model of a fallback, it could only fail there, and late.
            raise InvalidRequestError(f"{field}: a target must name a model.")
        return self._client_target(name, field)

    def primary(self, model: str) -> Target:
        """The first target a request for ``model`` goes to (see :meth:`target`); for the
        auto model, the first candidate. Raises as :meth:`target` and :meth:`chain` do."""
        return self._head(model)[0]

    def routes_explicitly(self, name: str) -> bool:
        provider, slash, model = self._aliases.get(name, name).partition("/")
        return bool(slash and model and provider in self._providers)

    def is_auto(self, model: str) -> bool:
        return model == self._auto_model

    def body_fallbacks(self, raw: msgspec.Raw | None) -> list[Target] | None:
        """Targets from the body's ``fallbacks``, or ``None`` when the field is not ours."""
        mode = self._config.body_fallbacks
        if raw is None or mode == "never":
            return None
        try:
            names = _names_decoder.decode(raw)
        except DECODE_ERRORS as exc:
            if mode == "always":
                message = describe_decode_error(exc, raw, at="fallbacks")
                raise InvalidRequestError(message) from None
            return None
        if mode == "auto" and not all(self.routes_explicitly(name) for name in names):
            return None
        if len(names) > self._config.max_body_fallbacks:
            raise InvalidRequestError(
                f"fallbacks: at most {self._config.max_body_fallbacks} entries are allowed"
            )
        return [self._body_target(name, f"fallbacks.{i}") for i, name in enumerate(names)]

    def for_request(self, body: bytes, model: str) -> tuple[bytes, TargetResolver]:
        """Consume the body's ``router_candidates`` for an auto-model request.

        Returns the body without the field, and a resolver whose auto chain is those
        candidates; anything else comes back unchanged, with this resolver. Called once per
        request, before :meth:`chain`. Raises :class:`InvalidRequestError` for a malformed or
        too long list.
        """
        if not self.is_auto(model):
            return body, self
        raw = read_raw_fields(body).get("router_candidates")
        if raw is None:
            return body, self
        try:
            names = _optional_names_decoder.decode(raw)
        except DECODE_ERRORS as exc:
            message = describe_decode_error(exc, raw, at="router_candidates")
            raise InvalidRequestError(message) from None
        body = edit_top_level(body, remove=["router_candidates"])
        if not names:
            return body, self
        limit = self._config.max_router_candidates
        if len(names) > limit:
            raise InvalidRequestError(f"router_candidates: at most {limit} entries are allowed")
        routed = copy.copy(self)
        routed._candidate_names = tuple(names)
        routed._candidates = tuple(
            self._body_target(name, f"router_candidates.{i}") for i, name in enumerate(names)
        )
        return body, routed

    def chain(self, model: str, body_targets: Sequence[Target] | None) -> list[Target]:
        """Primary first (for the auto model: its ordered candidates), then body fallbacks,
        the model's chain and the default chain. Raises as :meth:`target` does, and
        :class:`InvalidRequestError` for the auto model without candidates."""
        plain = not body_targets and not self.is_auto(model)
        if plain and (known := self._plain_chains.get(model)) is not None:
            return list(known)
        tail = self._model_tails.get(model, self._default_tail)
        unique: dict[str, Target] = {}
        for target in (*self._head(model), *(body_targets or ()), *tail):
            unique.setdefault(target.name, target)
        if plain and len(model) <= _CACHED_NAME_LENGTH:
            if len(self._plain_chains) >= _PLAIN_CHAINS_KEPT:
                self._plain_chains.clear()
            self._plain_chains[model] = tuple(unique.values())
        return list(unique.values())

    def _head(self, model: str) -> list[Target]:
        if not self.is_auto(model):
            return [self._client_target(model, "model")]
        if not self._candidates:
            raise InvalidRequestError(
                f"router_candidates: model '{model}' routes among candidates; list them in "
                "the request's router_candidates or in the gateway's fallback config."
            )
        if self._config.router_strategy == "cheapest":
            return sorted(self._candidates, key=self._price_key)
        return list(self._candidates)

    def _price_key(self, target: Target) -> tuple[bool, float]:
        price = self._pricing.price_for(target.model) if self._pricing else None
        return (True, 0.0) if price is None else (False, price.input + price.output)
