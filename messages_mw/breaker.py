"""A per-target circuit breaker: stop sending to a target that keeps failing, for a while."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker", "SoleTarget"]

BreakerState = Literal["closed", "open", "half_open"]
SoleTarget = Literal["try", "refuse"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a :class:`CircuitBreaker` opens (consecutive failures) and for how long (s), and
    what an open circuit does to a request with no other target to move to.

    ``sole_target``: ``try`` (the default) sends such a request all the same. The breaker
    exists to move requests to a healthier target; with none, skipping would only turn the
    upstream's own answer into the gateway's 529, and let one client's failing requests (with
    keys passed through, a tenant's) shut every other client out of the target for a
    cooldown. ``refuse`` answers it at once with that 529, for hosts that would rather fail
    fast than wait on a target known to fail.

    Raises :class:`ValueError` (a ``msgspec.ValidationError`` when decoding config) for a
    ``failure_threshold`` below 1 or a ``cooldown`` that is negative or not finite.
    """

    failure_threshold: int = 5
    cooldown: float = 30.0
    sole_target: SoleTarget = "try"

    def __post_init__(self) -> None:
        _check(self.failure_threshold >= 1, "failure_threshold must be at least 1")
        _check(
            math.isfinite(self.cooldown) and self.cooldown >= 0,
            "cooldown must be a finite number >= 0",
        )


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    trial_started_at: float | None = None


# Bounds on what failing targets may hold: a real target's name (provider/model) is short, and
# a gateway routes to a handful; the rest are names clients made up.
_MAX_NAME = 256
_MAX_CIRCUITS = 1024


class CircuitBreaker:
    """Stops sending to a target that keeps failing, and lets one trial through after a rest.

    Per target name: *closed* until ``failure_threshold`` consecutive failures, then *open*:
    :meth:`allow` refuses the target for ``cooldown`` seconds. Then *half-open*: one trial is
    allowed; its success closes the circuit, its failure opens it for another cooldown. A trial
    whose client leaves is released for the next request; one that never reports back at all
    stops blocking after one cooldown.

    Share one breaker between all requests of a gateway. State lives in this object only (per
    process); it holds an entry only for targets that are failing. Not thread-safe.
    """

    def __init__(
        self, policy: BreakerPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def __len__(self) -> int:
        """How many targets it holds an entry for (failing ones)."""
        return len(self._circuits)

    def state(self, name: str) -> BreakerState:
        """The target's state now; reading it changes nothing."""
        circuit = self._circuits.get(name)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        resting = self._clock() - circuit.opened_at < self.policy.cooldown
        return "open" if resting else "half_open"

    def allow(self, name: str) -> bool:
        """Whether to send to the target now; a ``True`` in half-open state takes the trial."""
        circuit = self._circuits.get(name)
        if circuit is None or circuit.opened_at is None:
            return True
        now, cooldown = self._clock(), self.policy.cooldown
        if now - circuit.opened_at < cooldown:
            return False
        trial = circuit.trial_started_at
        if trial is not None and now - trial < cooldown:
            return False
        circuit.trial_started_at = now
        return True

    def seconds_until_trial(self, name: str) -> float:
        """How long until :meth:`allow` would let a request through to the target (0: now)."""
        circuit = self._circuits.get(name)
        if circuit is None or circuit.opened_at is None:
            return 0.0
        since = circuit.opened_at if circuit.trial_started_at is None else circuit.trial_started_at
        return max(0.0, since + self.policy.cooldown - self._clock())

    def trial_started_at(self, name: str) -> float | None:
        """When the target's current trial began (``None``: no trial under way). Read right
        after :meth:`allow` said yes, it tells whether that call took the trial."""
        circuit = self._circuits.get(name)
        return circuit.trial_started_at if circuit is not None else None

    def release_trial(self, name: str, started_at: float | None) -> None:
        """The trial begun at ``started_at`` ended saying nothing of the target's health (the
        gateway's own pool was full, or the error concerned one caller): the next request may
        take the trial rather than wait out another cooldown. Another request's trial (one
        begun at another time) is left alone."""
        circuit = self._circuits.get(name)
        if circuit is None or started_at is None:
            return
        if circuit.trial_started_at == started_at:
            circuit.trial_started_at = None

    def record_success(self, name: str) -> None:
        """The target answered (a client error counts too): close its circuit."""
        self._circuits.pop(name, None)

    def record_failure(self, name: str) -> None:
        """The target failed an attempt: count it, or reopen a half-open circuit.

        Clients choose model names, so what is held stays bounded: no circuit for a name
        longer than any real model's, and at most ``_MAX_CIRCUITS``, the oldest closed one
        (or else the oldest) making room."""
        circuit = self._circuits.get(name)
        if circuit is None:
            if len(name) > _MAX_NAME:
                return
            if len(self._circuits) >= _MAX_CIRCUITS:
                self._evict_one()
            circuit = self._circuits[name] = _Circuit()
        if circuit.opened_at is not None:
            circuit.opened_at, circuit.trial_started_at = self._clock(), None
            return
        circuit.failures += 1
        if circuit.failures >= self.policy.failure_threshold:
            circuit.opened_at = self._clock()

    def read_only(self) -> CircuitBreaker:
        """This breaker's circuits as a request that must not move them sees them: open
        targets are refused, but no trial is taken and no result recorded. For count_tokens:
        counting often works while messages fail, and its successes would close a failing
        target's circuit; yet it should not wait out a target its messages skip."""
        return _ReadOnlyBreaker(self)

    def _evict_one(self) -> None:
        circuits = self._circuits
        victim = next((n for n, c in circuits.items() if c.opened_at is None), None)
        del circuits[victim if victim is not None else next(iter(circuits))]


class _ReadOnlyBreaker(CircuitBreaker):
    """See :meth:`CircuitBreaker.read_only`."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__(breaker.policy, breaker._clock)
        self._circuits = breaker._circuits  # the same circuits, read only

    def allow(self, name: str) -> bool:
        return self.state(name) != "open"

    def trial_started_at(self, name: str) -> float | None:
        return None  # never takes one

    def release_trial(self, name: str, started_at: float | None) -> None:
        pass

    def record_success(self, name: str) -> None:
        pass

    def record_failure(self, name: str) -> None:
        pass
