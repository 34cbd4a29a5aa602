"""Rate limits and spend budgets per key and per tag: steps 4 (admit) and 8 (record) of the
hook order in :mod:`messages_mw.hooks`.

Requests and tokens per minute are counted in a sliding-window approximation (Cloudflare's):
the current fixed minute plus the previous minute, weighted by the share of it still within
the last 60 seconds, as if its traffic had been spread evenly. Precision: no aligned minute
ever admits more than the limit, and there is no double burst around a minute boundary as
with plain fixed windows; a 60-second span that starts with a burst at the end of a minute
may still see up to twice the limit minus one. Under steady demand about one request fewer
than the limit gets through each minute, and a limit of 1 allows one request every two
minutes. Spend budgets use fixed periods aligned to the Unix epoch (a daily budget resets at
00:00 UTC) and reset completely.

Tokens and spend are known only when a response ends, so :meth:`RateLimiter.admit` checks
only that they are not already used up, and :meth:`RateLimiter.record` adds them afterwards:
the request that crosses a token or spend limit completes, the ones after it wait. Nothing is
reserved for requests in flight, so concurrent requests admitted before the crossing all
complete: the overshoot is bounded by concurrency, not by the limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from .config_check import check_config
from .context import RequestContext, billed_beside_answer
from .errors import RateLimitError
from .limit_replies import (
    HEADER_NAMES,
    Limit,
    rejection,
    replenished_at,
    rfc3339_second,
)
from .limit_stores import (
    CounterStore,
    Increment,
    LimitStoreError,
    MemoryCounterStore,
    RedisCounterStore,
    WindowCheck,
    WindowCount,
    WindowState,
    redis_url_parses,
    window_usage,
)
from .redaction import repr_without_secrets
from .streaming import TokenUsage

__all__ = ["LimitRule", "LimitsConfig", "RateLimiter"]

logger = logging.getLogger("messages_mw.limits")

_MINUTE = 60.0


class LimitRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits for each key (``scope="key"``) or each tag value (``scope="tag"``).

    ``match="*"`` gives every key (or tag) its own counters under these limits; a specific
    ``match`` names one key id (or tag) and replaces the ``"*"`` rules for it, so one key can
    get more, or less, than the default (under the built-in auth, ``Gateway`` refuses a key
    id no key can have). Requests without a key count together under the
    ``"*"`` key rules. ``spend`` is in the unit of ``RequestContext.cost`` (USD, from the
    gateway's pricing table) per ``spend_period_seconds``; a request whose model has no price
    is refused or goes uncounted, as :attr:`LimitsConfig.unpriced_models` says.

    Raises :class:`ValueError` (a ``msgspec.ValidationError`` when decoding config) for an
    empty ``match``, a rule with none of the three limits, a ``requests_per_minute``,
    ``tokens_per_minute`` or ``spend_period_seconds`` below 1, or a ``spend`` that is not a
    positive finite number.
    """

    scope: Literal["key", "tag"]
    match: str = "*"
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    spend: float | None = None
    spend_period_seconds: int = 86400

    def __post_init__(self) -> None:
        if not self.match:
            raise ValueError("match must not be empty (use '*' for every key or tag)")
        if (self.requests_per_minute, self.tokens_per_minute, self.spend) == (None, None, None):
            raise ValueError("set requests_per_minute, tokens_per_minute or spend")
        for name in ("requests_per_minute", "tokens_per_minute", "spend_period_seconds"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.spend is not None and not 0 < self.spend < math.inf:
            raise ValueError(f"spend must be a positive number, got {self.spend}")


class LimitsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which limits apply and where the counters live.

    ``store="memory"`` counts in this process; ``"redis"`` shares the counters of every
    worker and host using the same ``redis_url`` and ``key_prefix``, over at most
    ``redis_max_connections`` connections per process (more concurrent checks queue for
    one; a queue is not an outage). ``on_store_error``
    decides what happens while the store cannot be reached (each call waits at most
    ``store_timeout`` seconds): ``"open"`` lets requests through unlimited, ``"closed"``
    rejects them with 429 ``rate_limit_error`` and ``retry-after: 1``. Either way a warning
    is logged at most once per ``store_warning_interval`` seconds, and counting resumes by
    itself when the store is back.

    A request under a spend budget for a model the pricing table does not know could never
    be counted: ``unpriced_models="reject"`` refuses it (403), ``"allow"`` lets it through
    uncounted and logs a warning once per model.

    ``tags_from`` says which tags the ``scope="tag"`` rules count: ``"request"`` every tag the
    request carries (its tag header and ``metadata.tags``, the key's policy, a tagging hook's),
    ``"key"`` only those its key brings (the key policy's, or the ``Principal.tags`` an auth
    hook returns), which a client cannot choose. With ``"request"`` any caller can spend, or
    use up, another tag's budget by naming that tag: use ``"key"`` when tag budgets stand for
    teams or customers.

    Raises :class:`ValueError` (a ``msgspec.ValidationError`` when decoding config) for a
    ``store_timeout`` that is not positive, a negative ``store_warning_interval``,
    ``redis_max_connections`` below 1, a ``redis_url`` not starting with ``redis://``,
    ``rediss://`` or ``unix://``, or, with ``store="redis"``, one redis-py cannot parse.
    """

    rules: tuple[LimitRule, ...] = ()
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "messages_mw:"
    on_store_error: Literal["open", "closed"] = "open"
    store_timeout: float = 0.5
    store_warning_interval: float = 60.0
    redis_max_connections: int = 50
    unpriced_models: Literal["reject", "allow"] = "reject"
    tags_from: Literal["request", "key"] = "request"

    def __post_init__(self) -> None:
        if not self.store_timeout > 0:
            raise ValueError(f"store_timeout must be positive, got {self.store_timeout}")
        if not self.store_warning_interval >= 0:
            raise ValueError("store_warning_interval must not be negative")
        if self.redis_max_connections < 1:
            raise ValueError("redis_max_connections must be at least 1")
        # Checked here: redis-py would refuse it only at the first request, as a 500.
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            # Not echoed: the value may hold a password.
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        if self.store == "redis" and not redis_url_parses(self.redis_url):
            # A bad port or option would otherwise fail every request.
            raise ValueError("redis_url is not a valid Redis URL (check its port and options)")

    def __repr__(self) -> str:
        # Logged configuration must not show a password in redis_url.
        return repr_without_secrets(self)


_LIMITS_CACHE_SIZE = 4096
# Client-chosen model names in the unpriced warning: bounded in length and in number.
_MAX_MODEL_IN_LOG = 100
_MAX_UNPRICED_WARNED = 100


@dataclass(frozen=True, slots=True)
class _LimitSet:
    """The limits for one key and tag set, with what every request against them needs."""

    limits: list[Limit]
    checks: list[WindowCheck]
    # For the headers: the positions of the request limits, then of the token limits, each
    # with its header names.
    header_groups: tuple[tuple[tuple[str, str, str], tuple[int, ...]], ...]
    # Each limit as its header value.
    limit_texts: tuple[str, ...]
    # The counters a finished request's tokens, and its cost, are added to: key and window.
    token_counters: tuple[tuple[str, float], ...]
    spend_counters: tuple[tuple[str, float], ...]

    @property
    def has_spend(self) -> bool:
        """Whether a spend budget is among the limits: the request's cost must be known."""
        return bool(self.spend_counters)

    @classmethod
    def of(cls, limits: list[Limit]) -> _LimitSet:
        groups = tuple(
            (HEADER_NAMES[kind], positions)
            for kind in ("requests", "tokens")
            if (positions := tuple(i for i, lim in enumerate(limits) if lim.kind == kind))
        )
        texts = tuple(str(int(limit.check.limit)) for limit in limits)

        def counters(kind: str) -> tuple[tuple[str, float], ...]:
            return tuple((lim.check.key, lim.check.window) for lim in limits if lim.kind == kind)

        checks = [limit.check for limit in limits]
        return cls(limits, checks, groups, texts, counters("tokens"), counters("spend"))


class RateLimiter:
    """Enforces a :class:`LimitsConfig`: one instance per gateway, shared by its requests.

    ``store`` replaces the store named by the config (it is closed by :meth:`aclose`);
    ``clock`` returns Unix time in seconds. Window arithmetic and its precision are described
    in this module's docstring. Store keys hold only a metric, a window length, the scope
    and the key id or tag, e.g. ``messages_mw:requests:60:key:team-a-ci``; the Redis store
    also remembers each call for 10 s under a random name (``messages_mw:call:...``), so
    that one resent after a broken connection counts once.

    Raises :class:`TypeError` at construction if ``store`` has no ``consume()``, ``add()``
    and ``aclose()`` methods, and :class:`ImportError` if the config names the Redis store
    and redis-py is not installed. Nothing is asked of the store before the first request.
    """

    # Set per instance; declared here too, so that a mock made with spec=RateLimiter has it.
    checks_prices: bool = False

    def __init__(
        self,
        config: LimitsConfig,
        *,
        store: CounterStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if store is not None and not isinstance(store, CounterStore):
            raise TypeError("store must have async consume(), add() and aclose() methods")
        self.config = check_config(config, "limits")
        self._store = store if store is not None else _default_store(config)
        # The in-memory store answers without waiting: called directly, it spares every
        # request a coroutine.
        self._memory_store = self._store if type(self._store) is MemoryCounterStore else None
        self._clock = clock
        # Requests-only rules need nothing recorded after a request: skip that work entirely.
        self._counts_usage = any(
            rule.tokens_per_minute is not None or rule.spend is not None for rule in config.rules
        )
        # Spend rules need each request's cost: with unpriced models refused, the policy asks
        # which requests fall under one (none at all, in most configurations: then it need
        # not ask, which this flag tells it on every request's path).
        self.checks_prices = config.unpriced_models == "reject" and any(
            rule.spend is not None for rule in config.rules
        )
        self._unpriced_warned: set[str] = set()
        self._key_rules = _rules_by_match(config.rules, "key")
        self._tag_rules = _rules_by_match(config.rules, "tag")
        self._tags_from_key = config.tags_from == "key"
        self._warned_at = -math.inf
        self._store_failing = False
        # Which limits apply depends only on the key and the tags: worked out once per pair.
        self._limits_cache: dict[tuple[str | None, tuple[str, ...]] | str | None, _LimitSet] = {}
        # Reset times repeat for a whole second: format each second once.
        self._reset_second, self._reset_text = -1, ""

    async def admit(self, context: RequestContext) -> list[tuple[str, str]]:
        """Count one request against every limit for ``context.principal`` and its tags
        (``context.tags``, or the principal's own with ``tags_from="key"``), after auth and
        tagging and before the request is forwarded.

        Returns the ``anthropic-ratelimit-requests-*`` and ``-tokens-*`` headers of the
        tightest request and token limits (empty when no rule applies), for the response.
        Raises :class:`RateLimitError` (429) carrying ``retry-after`` and those headers when
        any limit is reached; then nothing is counted. If the store is unreachable, follows
        ``on_store_error``. On cancellation the request may or may not have been counted.
        """
        limit_set = self._limits_for(context)
        if not limit_set.limits:
            return []
        now = self._clock()
        checks = limit_set.checks
        if self._memory_store is not None:
            admitted, windows, usages = self._memory_store.consume_now(checks, now)
        else:
            try:
                admitted, counts = await self._store.consume(checks, now)
            except LimitStoreError as exc:
                return self._admit_without_store(exc, now)
            self._store_answered()
            windows = [(count.start, count.previous, count.current) for count in counts]
            usages = [
                window_usage(check, count, now) for check, count in zip(checks, counts, strict=True)
            ]
        headers = self._headers(limit_set, windows, usages, now)
        if not admitted:
            counts = [WindowCount(*window) for window in windows]
            raise rejection(limit_set.limits, counts, now, headers)
        return headers

    def needs_price(self, context: RequestContext) -> bool:
        """Whether ``context`` falls under a spend budget, so that its model must have a
        price; asked after auth and tagging, and only when :attr:`checks_prices` is true
        (spend rules, and unpriced models refused)."""
        return self._limits_for(context).has_spend

    async def record(self, context: RequestContext) -> None:
        """Add the request's tokens (input, output and both cache counts) and
        ``context.cost`` to its token and spend limits, once the request has ended, with
        those of attempts billed beside the answer (see
        :func:`~messages_mw.context.billed_beside_answer`; their ``cost`` as priced).

        Never raises for the store: when it is unreachable the usage is dropped and a
        warning logged. Does no I/O when there is nothing to add. On cancellation the usage
        may or may not have reached a remote store (Redis); the in-memory store adds it
        without waiting, so it cannot be cut short.
        """
        if not self._counts_usage:
            return
        tokens = _tokens(context.usage)
        cost = context.cost or 0.0
        limit_set = self._limits_for(context)
        unpriced = limit_set.has_spend and not self.checks_prices
        for attempt, usage in billed_beside_answer(context):
            tokens += _tokens(usage)
            cost += attempt.cost or 0.0
            if attempt.cost is None and unpriced:
                self._warn_unpriced(attempt.model)
        if context.cost is None and unpriced:
            # Allowed through uncounted (refused otherwise): worth a word to the operator.
            self._warn_unpriced(context.served_model or context.model)
        additions = [
            (counters, amount)
            for counters, amount in (
                (limit_set.token_counters, float(tokens)),
                (limit_set.spend_counters, cost),
            )
            if counters and amount > 0
        ]
        if not additions:
            return
        now = self._clock()
        if self._memory_store is not None:
            for counters, amount in additions:
                self._memory_store.add_now(counters, amount, now)
            return
        increments = [
            Increment(key, window, amount)
            for counters, amount in additions
            for key, window in counters
        ]
        try:
            await self._store.add(increments, now)
        except LimitStoreError as exc:
            self._warn(exc, now, "this request's usage was not counted")
        else:
            self._store_answered()

    @property
    def counts_usage(self) -> bool:
        """Whether :meth:`record` has anything to do: only token and spend limits need the
        usage of a finished request."""
        return self._counts_usage

    async def aclose(self) -> None:
        """Close the store's connections; a later call reopens them. Called by
        :meth:`Gateway.aclose <messages_mw.app.Gateway.aclose>`.

        Raises what the store's ``aclose()`` raises; cancelled, it may leave some of the
        store's connections unclosed (the Redis store has already let go of them, so later
        calls open new ones)."""
        await self._store.aclose()

    def _limits_for(self, context: RequestContext) -> _LimitSet:
        principal = context.principal
        key_id = principal.key_id if principal is not None else None
        # _counted_tags(), inline: this runs for every request under a limit.
        if self._tags_from_key:
            tags: Sequence[str] = principal.tags if principal is not None else ()
        else:
            tags = context.tags
        # Untagged requests are looked up by key id alone: a string caches its hash, a tuple
        # hashes its items again on every lookup.
        cache_key = (key_id, tuple(tags)) if tags else key_id
        cached = self._limits_cache.get(cache_key)
        if cached is None:
            if len(self._limits_cache) >= _LIMITS_CACHE_SIZE:
                self._limits_cache.clear()
            cached = _LimitSet.of(self._work_out_limits(context))
            self._limits_cache[cache_key] = cached
        return cached

    def _headers(
        self,
        limit_set: _LimitSet,
        windows: Sequence[WindowState],
        usages: Sequence[float],
        now: float,
    ) -> list[tuple[str, str]]:
        """The ``anthropic-ratelimit-*`` headers of the tightest request and token limits
        (the least remaining, then the lowest limit), given each counter's state and usage
        after the call."""
        headers: list[tuple[str, str]] = []
        checks = limit_set.checks
        for (limit_name, remaining_name, reset_name), positions in limit_set.header_groups:
            # A loop rather than min(key=...): two calls fewer per limit, on every request.
            at, tightest = -1, (0, 0.0)
            for i in positions:
                limit = checks[i].limit
                left = limit - usages[i]
                # As the remaining header says it: whole units, never below zero.
                room = math.floor(left) if left > 0 else 0
                if at < 0 or room < tightest[0] or (room == tightest[0] and limit < tightest[1]):
                    at, tightest = i, (room, limit)
            check = checks[at]
            reset = math.ceil(replenished_at(check, windows[at], now))
            if reset != self._reset_second:
                # Reset times repeat for a whole second: each is formatted once.
                self._reset_second, self._reset_text = reset, rfc3339_second(reset)
            headers += (
                (limit_name, limit_set.limit_texts[at]),
                (remaining_name, str(tightest[0])),
                (reset_name, self._reset_text),
            )
        return headers

    def _work_out_limits(self, context: RequestContext) -> list[Limit]:
        # Rules that land on the same counter share it; the lowest limit holds.
        limits: dict[str, Limit] = {}
        for subject, label, rules in self._subjects(context):
            for rule in rules:
                for limit in _rule_limits(rule, subject, label):
                    kept = limits.get(limit.check.key)
                    if kept is None or limit.check.limit < kept.check.limit:
                        limits[limit.check.key] = limit
        return list(limits.values())

    def _subjects(self, context: RequestContext) -> Iterator[tuple[str, str, Sequence[LimitRule]]]:
        principal = context.principal
        if principal is None:
            yield "anonymous", "anonymous requests", self._key_rules.get("*", ())
        else:
            key_id = principal.key_id
            rules = self._key_rules.get(key_id) or self._key_rules.get("*", ())
            yield f"key:{key_id}", f"key '{key_id}'", rules
        for tag in dict.fromkeys(self._counted_tags(context)):
            rules = self._tag_rules.get(tag) or self._tag_rules.get("*", ())
            yield f"tag:{tag}", f"tag '{tag}'", rules

    def _counted_tags(self, context: RequestContext) -> Sequence[str]:
        """The tags the tag rules count, as ``tags_from`` says."""
        if self._tags_from_key:
            principal = context.principal
            return principal.tags if principal is not None else ()
        return context.tags

    def _warn_unpriced(self, model: str | None) -> None:
        name = str(model)[:_MAX_MODEL_IN_LOG]
        if name in self._unpriced_warned or len(self._unpriced_warned) >= _MAX_UNPRICED_WARNED:
            return
        self._unpriced_warned.add(name)
        logger.warning(
            "model %r has no price: requests for it are not counted against spend budgets", name
        )

    def _admit_without_store(self, exc: LimitStoreError, now: float) -> list[tuple[str, str]]:
        if self.config.on_store_error == "open":
            self._warn(exc, now, "requests are let through without limits")
            return []
        self._warn(exc, now, "requests are rejected with 429")
        message = "Rate limits cannot be checked right now (the limit store is unavailable)."
        raise RateLimitError(message, headers={"retry-after": "1"}) from exc

    def _warn(self, exc: LimitStoreError, now: float, consequence: str) -> None:
        self._store_failing = True
        if now - self._warned_at >= self.config.store_warning_interval:
            self._warned_at = now
            logger.warning("rate limit store unavailable (%s); %s", exc, consequence)

    def _store_answered(self) -> None:
        if self._store_failing:
            self._store_failing = False
            logger.info("rate limit store reachable again; limits are enforced")


def _default_store(config: LimitsConfig) -> CounterStore:
    if config.store == "redis":
        return RedisCounterStore(
            config.redis_url,
            key_prefix=config.key_prefix,
            timeout=config.store_timeout,
            max_connections=config.redis_max_connections,
        )
    return MemoryCounterStore()


def _rules_by_match(
    rules: Sequence[LimitRule], scope: Literal["key", "tag"]
) -> dict[str, tuple[LimitRule, ...]]:
    by_match: dict[str, tuple[LimitRule, ...]] = {}
    for rule in rules:
        if rule.scope == scope:
            by_match[rule.match] = (*by_match.get(rule.match, ()), rule)
    return by_match


def _rule_limits(rule: LimitRule, subject: str, label: str) -> Iterator[Limit]:
    if rule.requests_per_minute is not None:
        # Limits as floats: the counts they are compared with are floats, and a float compares
        # with a float faster than with an int.
        limit = float(rule.requests_per_minute)
        check = WindowCheck(f"requests:60:{subject}", _MINUTE, limit, 1.0)
        yield Limit("requests", label, check)
    if rule.tokens_per_minute is not None:
        check = WindowCheck(f"tokens:60:{subject}", _MINUTE, float(rule.tokens_per_minute))
        yield Limit("tokens", label, check)
    if rule.spend is not None:
        period = rule.spend_period_seconds
        check = WindowCheck(f"spend:{period}:{subject}", period, float(rule.spend), sliding=False)
        yield Limit("spend", label, check)


def _tokens(usage: TokenUsage) -> int:
    """What a token limit counts of ``usage``: input, output and both cache counts."""
    return (
        usage.input_tokens
        + usage.output_tokens
        + usage.cache_creation_input_tokens
        + usage.cache_read_input_tokens
    )
