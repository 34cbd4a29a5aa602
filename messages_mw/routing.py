"""Which targets a request is tried on: ``provider/model`` names, body and configured chains."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

import msgspec

from .errors import InvalidRequestError
from .fallback import BreakerPolicy, RetryPolicy, Target

__all__ = ["FallbackConfig", "TargetResolver"]

_fallbacks_decoder = msgspec.json.Decoder(list[str])


class FallbackConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fallback chains and retry behaviour.

    ``chains`` maps a requested model to targets tried after it; ``default_chain`` follows
    every request. ``body_fallbacks`` decides whether the request body's ``fallbacks`` field is
    the gateway's (consumed and stripped) or the upstream's (passed on untouched): ``auto``
    consumes it only when every entry names a ``provider/model`` target the gateway routes,
    ``always`` when it is a list of names, ``never`` leaves it alone. ``retry`` defaults to
    one attempt per target (raise ``attempts_per_target`` to retry the same target).
    """

    chains: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    default_chain: tuple[str, ...] = ()
    body_fallbacks: Literal["auto", "always", "never"] = "auto"
    max_body_fallbacks: Annotated[int, msgspec.Meta(ge=0)] = 3
    # One try per target by default: the SDKs and Claude Code retry by themselves, and
    # same-target retries in the gateway would multiply their attempts.
    retry: RetryPolicy = msgspec.field(default_factory=lambda: RetryPolicy(attempts_per_target=1))
    breaker: BreakerPolicy = msgspec.field(default_factory=BreakerPolicy)


class TargetResolver:
    """Turns model names into targets and builds the chain for a request."""

    def __init__(
        self, provider_names: Iterable[str], default_provider: str, config: FallbackConfig
    ) -> None:
        self._providers = frozenset(provider_names)
        self._default = default_provider
        self._config = config
        for name in [*config.default_chain, *(t for c in config.chains.values() for t in c)]:
            if "/" in name and not self.routes_explicitly(name):
                raise ValueError(f"fallback target {name!r} names no configured provider")

    @property
    def config(self) -> FallbackConfig:
        return self._config

    def parse(self, name: str) -> Target | None:
        """``provider/model`` for a known provider, else the default provider's ``name``."""
        provider, slash, model = name.partition("/")
        if slash and provider in self._providers:
            return Target(provider, model) if model else None
        return Target(self._default, name)

    def primary(self, model: str) -> Target:
        target = self.parse(model)
        assert target is not None  # a bare or unknown-prefix name always resolves
        return target

    def routes_explicitly(self, name: str) -> bool:
        provider, slash, model = name.partition("/")
        return bool(slash and model and provider in self._providers)

    def body_fallbacks(self, raw: msgspec.Raw | None) -> list[Target] | None:
        """Targets from the body's ``fallbacks``, or ``None`` when the field is not ours."""
        mode = self._config.body_fallbacks
        if raw is None or mode == "never":
            return None
        try:
            names = _fallbacks_decoder.decode(raw)
        except msgspec.DecodeError:
            if mode == "always":
                raise InvalidRequestError(
                    "fallbacks: Input should be a list of model names"
                ) from None
            return None
        if mode == "auto" and not all(self.routes_explicitly(name) for name in names):
            return None
        if len(names) > self._config.max_body_fallbacks:
            raise InvalidRequestError(
                f"fallbacks: at most {self._config.max_body_fallbacks} entries are allowed"
            )
        return [self.primary(name) for name in names]

    def chain(self, model: str, body_targets: Sequence[Target] | None) -> list[Target]:
        """Primary first, then body fallbacks, the model's chain and the default chain."""
        names = [*self._config.chains.get(model, ()), *self._config.default_chain]
        targets = [self.primary(model), *(body_targets or ()), *map(self.primary, names)]
        unique: dict[str, Target] = {}
        for target in targets:
            unique.setdefault(target.name, target)
        return list(unique.values())
