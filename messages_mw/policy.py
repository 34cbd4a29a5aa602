"""The policy layer: runs the hooks in their documented order and reports each request once.

:class:`Policy` owns the built-in and user hooks; the app calls :meth:`Policy.admit` before
forwarding, :meth:`Policy.prepare` to shape the upstream request, and :meth:`Policy.finish`
exactly once when a request ends, whatever happened.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from .body_edit import edit_top_level, read_raw_fields
from .closing import close_all
from .context import Principal, RequestContext, UsageEvent, billed_beside_answer
from .errors import InvalidRequestError, PermissionDeniedError
from .fallback import Target
from .hooks import AuthHook, CompressionHook, IncomingRequest, RouteHook, TagHook, call_hook
from .limits import RateLimiter
from .memo import Memo
from .pricing import PricingTable
from .protocol import DECODE_ERRORS, FORBIDDEN_IN_HEADER_VALUE
from .routing import TargetResolver
from .tags import ResolvedHeaderNames, TagPolicy, collect_tags, parse_tag_header, session_id
from .usage import UsageDispatcher
from .validation import (
    MAX_MODEL_CHARS,
    CountTokensRequest,
    MessagesRequest,
    describe_decode_error,
)

__all__ = ["ForwardPlan", "Policy"]

logger = logging.getLogger("messages_mw")

_TAG_HEADERS_KEPT = 1024
_TagGroup = tuple[str, Sequence[str]]

_ModelName = Annotated[str, msgspec.Meta(max_length=MAX_MODEL_CHARS)]


class _UpstreamFallback(msgspec.Struct, gc=False):
    """An entry of Anthropic's own ``fallbacks``: only the model it runs is read."""

    model: _ModelName


# Read only for a key with a model allow-list. Anthropic's form is a list of entries or
# "default" (SDK 2.12 BetaFallbacksParam); bare names the gateway does not route go upstream too.
_upstream_fallbacks_decoder = msgspec.json.Decoder(
    list[_ModelName | _UpstreamFallback] | str | None
)
_model_name_decoder = msgspec.json.Decoder(_ModelName)
_fallback_names_decoder = msgspec.json.Decoder(list[str])
# Values of any type, checked one by one: msgspec's error for a wrong value in a mapping does
# not say under which key it was.
_extra_headers_decoder = msgspec.json.Decoder(dict[str, object])
# Never settable through a body's extra_headers, whatever the allow-list says.
_FORBIDDEN_EXTRA = frozenset(
    {
        "x-api-key",
        "authorization",
        "host",
        "content-length",
        "content-type",
        "connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "cookie",
        "anthropic-version",
    }
)


@dataclass(slots=True)
class ForwardPlan:
    """What goes upstream: the body (original bytes unless something changed it), the client
    headers to forward, and the targets to try in order."""

    body: bytes
    headers: dict[str, str]
    chain: list[Target]
    # Set by Policy.admit for Policy.prepare: the resolver for this request (its own for an
    # auto-model request's router candidates) and the body's own fallback targets.
    resolver: TargetResolver | None = None
    body_targets: Sequence[Target] | None = None
    # The body's ``fallbacks`` when they are the upstream's (Anthropic's own, passed on).
    upstream_fallbacks: msgspec.Raw | None = None


@dataclass(slots=True)
class Policy:
    """The hooks and built-ins, in the order documented in :mod:`messages_mw.hooks`."""

    resolver: TargetResolver
    header_names: ResolvedHeaderNames
    tag_policy: TagPolicy
    extra_headers_allowed: frozenset[str]
    auth: AuthHook | None = None
    tagger: TagHook | None = None
    compressor: CompressionHook | None = None
    router: RouteHook | None = None
    limiter: RateLimiter | None = None
    pricing: PricingTable | None = None
    dispatcher: UsageDispatcher | None = None
    # Whether the host reads each finished request's context (Gateway's on_request_end): its
    # cost must then be worked out, as for a usage event or a spend limit.
    reports_contexts: bool = False
    auth_first: bool = field(init=False, default=False)
    # The checked, merged tags of each (tag header value, key tags) pair: a client sends the
    # same header with the same key on every request. At most _TAG_HEADERS_KEPT pairs, of
    # header values no longer than the longest a client needs (below): a value padded with
    # repeated tags, up to the server's head limit, is merged afresh and kept by no one. A
    # refused pair raises and is not kept.
    _merged_tags: Memo[tuple[str, tuple[str, ...]], tuple[str, ...]] = field(init=False)
    _longest_kept_header: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        def merged(pair: tuple[str, tuple[str, ...]]) -> tuple[str, ...]:
            return tuple(collect_tags(self._tag_groups(*pair), self.tag_policy))

        self._merged_tags = Memo(merged, _TAG_HEADERS_KEPT)
        # As many tags as the policy allows, each as long as it allows, with ", " between.
        self._longest_kept_header = self.tag_policy.max_count * (self.tag_policy.max_length + 2)
        # An auth hook that reads only headers (the built-ins, or any hook saying
        # ``reads_model = False``) runs before the body is read: a caller without a key gets
        # its 401 without the gateway reading, decompressing and validating up to
        # max_body_bytes for it, and before any complaint about the body, as from Anthropic.
        self.auth_first = self.auth is not None and not getattr(self.auth, "reads_model", True)

    async def authenticate_with_body(
        self, request: IncomingRequest, context: RequestContext
    ) -> None:
        """Step 1 for an auth hook that reads the model; nothing if it ran before the body."""
        if not self.auth_first:
            await self.authenticate(request, context)

    async def authenticate(self, request: IncomingRequest, context: RequestContext) -> None:
        if self.auth is not None:
            # Called inline rather than through call_hook: the built-in hooks are synchronous
            # and this is every request's path.
            principal = self.auth(request)
            if principal is not None and not isinstance(principal, Principal):
                principal = await _awaited_principal(principal)
            context.principal = principal

    async def admit(
        self,
        request: IncomingRequest,
        context: RequestContext,
        parsed: MessagesRequest,
        body: bytes,
        headers: dict[str, str],
    ) -> ForwardPlan:
        """Steps 1-4: auth, tags, model allow-list, limits; sets ``context.response_headers``
        to the rate-limit headers. The body's gateway-only fields are consumed and checked
        before the limits count the request, so a request refused for them costs no quota.
        ``headers`` are the client's, as in ``request``."""
        context.request_headers = request.headers
        if not self.auth_first:  # inline: this is every request's path
            await self.authenticate(request, context)
        context.debug = request.headers.get(self.header_names.debug, "").lower() in _TRUE
        context.session_id = session_id(request.headers, self.header_names.session)
        context.tags = await self._tags(request, context, parsed, self.tagger)
        principal = context.principal
        allowed = principal.allowed_models if principal is not None else None
        if allowed is not None:  # inline: this is every request's path
            _check_model(allowed, parsed.model)
        plan = self.consume_gateway_fields(body, headers, parsed, allowed)
        # Before the limits: a model that routes nowhere is refused without costing quota.
        resolver = plan.resolver or self.resolver
        plan.chain = resolver.chain(parsed.model, plan.body_targets)
        limiter = self.limiter
        if limiter is not None:
            if limiter.checks_prices and limiter.needs_price(context):  # inline: every request
                self._check_plan_priced(plan)
            context.response_headers = await limiter.admit(context)
        return plan

    def _check_plan_priced(self, plan: ForwardPlan) -> None:
        """Refuse (403) a request under a spend budget whose chain, or whose upstream-run
        ``fallbacks``, may run a model without a price. With a router hook the chain is
        known only once it has run (:meth:`prepare` checks it then)."""
        if self.router is None:
            self._check_priced(plan.chain)
        if plan.upstream_fallbacks is not None:
            entries = _upstream_fallback_models(plan.upstream_fallbacks)
            if entries is None:
                raise PermissionDeniedError(
                    "fallbacks: under a spend budget the upstream may not choose the fallback "
                    "models, since a model without a configured price could not be counted; "
                    "name them."
                )
            for field, model in entries:
                self._check_model_priced(field, model)

    def _needs_price(self, context: RequestContext) -> bool:
        limiter = self.limiter
        return limiter is not None and limiter.checks_prices and limiter.needs_price(context)

    def _check_priced(self, chain: Sequence[Target]) -> None:
        """Refuse (403) a request under a spend budget that may go to a model without a
        price: its cost could not be counted, so the budget would not hold."""
        for target in chain:
            self._check_model_priced("model", target.model)

    def _check_model_priced(self, field: str, model: str) -> None:
        pricing = self.pricing
        if pricing is None or pricing.price_for(model) is None:
            raise PermissionDeniedError(
                f"{field}: '{model}' has no configured price, so the spend budget "
                "this request falls under could not count it."
            )

    def check_model(self, context: RequestContext, model: str) -> frozenset[str] | None:
        """The principal's model allow-list (403), for routes that skip :meth:`admit`;
        returns the list (``None``: any model)."""
        allowed = _allowed_models(context)
        _check_model(allowed, model)
        return allowed

    async def label(
        self, request: IncomingRequest, context: RequestContext, parsed: CountTokensRequest
    ) -> None:
        """Step 2 for ``count_tokens``, after auth: the debug flag, the session id and the
        tags of the header, the key's policy and ``metadata.tags``, so its usage event is
        filed with the request's others. The tagger hook is not called for it."""
        context.request_headers = request.headers
        context.debug = request.headers.get(self.header_names.debug, "").lower() in _TRUE
        context.session_id = session_id(request.headers, self.header_names.session)
        context.tags = await self._tags(request, context, parsed, None)

    async def _tags(
        self,
        request: IncomingRequest,
        context: RequestContext,
        parsed: MessagesRequest | CountTokensRequest,
        tagger: TagHook | None,
    ) -> list[str]:
        value = request.headers.get(self.header_names.tags) or ""
        principal = context.principal
        key_tags = principal.tags if principal is not None else ()
        metadata_tags = parsed.metadata.tags if parsed.metadata else None
        from_metadata = bool(metadata_tags) and self.tag_policy.from_metadata
        if (
            tagger is None
            and not from_metadata
            and type(key_tags) is tuple
            and len(value) <= self._longest_kept_header
        ):
            # The usual request: the same tag header and key as the last one, merged once.
            return list(self._merged_tags[value, key_tags]) if value or key_tags else []
        groups = self._tag_groups(value, key_tags)
        if from_metadata and metadata_tags:
            groups.append(("metadata.tags", metadata_tags))
        if tagger is not None:
            extra = (await call_hook(tagger, request, context)) or ()
            # A str is a Sequence[str] too: one tag, not one per character.
            extra = (extra,) if isinstance(extra, str) else extra
            if not isinstance(extra, list | tuple) or not all(type(tag) is str for tag in extra):
                raise TypeError(f"the tagger hook returned {extra!r}, not a list of str")
            groups.append(("tagger", extra))
        return collect_tags(groups, self.tag_policy) if groups else []

    def _tag_groups(self, header_value: str, key_tags: Sequence[str]) -> list[_TagGroup]:
        """The tags of the request's tag header and of its key's policy, each with its
        source for error messages; unchecked."""
        header = self.header_names.tags
        groups: list[_TagGroup] = []
        if header_value:
            groups.append((header, parse_tag_header(header_value, header, self.tag_policy)))
        if key_tags:
            groups.append(("key policy", key_tags))
        return groups

    def consume_gateway_fields(
        self,
        body: bytes,
        headers: dict[str, str],
        parsed: MessagesRequest | CountTokensRequest,
        allowed: frozenset[str] | None,
    ) -> ForwardPlan:
        """Strip the body fields meant for the gateway (``fallbacks`` when routed,
        ``extra_headers``, ``router_candidates``, ``metadata.tags``), checking each; the
        plan's chain is left empty. ``allowed`` is the principal's model allow-list, which every
        model the body names is held to (403)."""
        # An auto-model request's router candidates shape its chain before the router hook.
        body, resolver = self.resolver.for_request(body, parsed.model)
        fallbacks = _present(parsed.fallbacks)
        extra_headers = _present(parsed.extra_headers)
        body_targets = resolver.body_fallbacks(fallbacks)
        if allowed is not None:
            routed = resolver is not self.resolver
            _check_body_models(allowed, parsed, resolver, routed, fallbacks, body_targets)
        remove = [] if body_targets is None else ["fallbacks"]
        if extra_headers is not None:
            remove.append("extra_headers")
            headers = self._with_extra_headers(headers, extra_headers)
        metadata = parsed.metadata
        has_metadata_tags = metadata is not None and metadata.tags is not msgspec.UNSET
        set_fields = _metadata_without_tags(body) if has_metadata_tags else None
        if remove or set_fields:
            body = edit_top_level(body, set_fields=set_fields, remove=remove)
        upstream_fallbacks = fallbacks if body_targets is None else None
        return ForwardPlan(body, headers, [], resolver, body_targets, upstream_fallbacks)

    async def prepare(
        self, plan: ForwardPlan, parsed: MessagesRequest, context: RequestContext
    ) -> ForwardPlan:
        """Steps 5-6: compress, and let the router hook choose among the targets
        :meth:`admit` resolved."""
        if self.compressor is not None:
            compressed = self.compressor(plan.body, context)
            if compressed is not None and not isinstance(compressed, bytes):
                compressed = await _compressed_body(compressed)
            plan.body = compressed or plan.body
        chain = plan.chain
        if self.router is not None:
            chain = self._routed(await call_hook(self.router, context, chain))
            if not chain:
                raise InvalidRequestError(f"model: no route for '{parsed.model}'.")
            if self._needs_price(context):
                # After the limits counted the request: the router's choice is known only now.
                self._check_priced(chain)
        plan.chain = chain
        return plan

    def _routed(self, chosen: object) -> list[Target]:
        """The router hook's answer as a chain, or a TypeError naming the hook (a 500)."""
        if not isinstance(chosen, list | tuple):
            raise TypeError(f"the router hook returned {type(chosen).__name__}, not a list")
        for target in chosen:
            if not isinstance(target, Target) or not self.resolver.routes_explicitly(target.name):
                raise TypeError(
                    f"the router hook returned {target!r}, not a Target of a configured provider"
                )
        return list(chosen)

    def _with_extra_headers(self, headers: dict[str, str], raw: msgspec.Raw) -> dict[str, str]:
        """Merge the body's ``extra_headers`` (allow-listed names only) into ``headers``."""
        try:
            extra = _extra_headers_decoder.decode(raw)
        except DECODE_ERRORS:
            raise InvalidRequestError(
                "extra_headers: Input should be an object of header names to string values"
            ) from None
        merged = dict(headers)
        for given_name, value in extra.items():
            name = given_name.lower()
            if not name:
                raise InvalidRequestError("extra_headers: a header name must not be empty.")
            if not isinstance(value, str):
                raise InvalidRequestError(
                    f"extra_headers.{given_name}: Input should be a valid string"
                )
            if name in _FORBIDDEN_EXTRA or name not in self.extra_headers_allowed:
                raise InvalidRequestError(f"extra_headers.{name}: this header may not be set.")
            if FORBIDDEN_IN_HEADER_VALUE.search(value):
                raise InvalidRequestError(
                    f"extra_headers.{name}: a header value is visible latin-1 text, spaces "
                    "and tabs only."
                )
            if name == "anthropic-beta" and merged.get(name):
                value = merged[name] + "," + value
            merged[name] = value
        return merged

    async def finish(self, context: RequestContext) -> None:
        """Step 8: cost, the usage event and limit accounting. Raises nothing but a
        cancellation, which can only come while a remote limit store counts: the event has
        gone out by then."""
        dispatcher = self.dispatcher
        wants_event = dispatcher is not None and dispatcher.wants_events()
        records = self.limiter is not None and self.limiter.counts_usage
        # Only for someone who reads it (a usage event, a spend limit, the host's hook): it
        # takes a price lookup and a float sum on every request.
        if self.pricing is not None and (wants_event or records or self.reports_contexts):
            asked = context.served_model or context.model
            context.cost = self.pricing.answer_cost(asked, context.response_model, context.usage)
            for attempt, usage in billed_beside_answer(context):
                attempt.cost = self.pricing.cost(attempt.model, usage)
        # The event first: it awaits nothing, so no cancellation can lose it.
        if wants_event:
            assert dispatcher is not None
            event = UsageEvent.from_context(context)
            if dispatcher.reads_traces and (trace := dispatcher.current_trace()) is not None:
                # The host's active span, read here in the request's task: it wins over the
                # client's header (a host's server span is usually that header's child).
                event.traceparent, event.tracestate = trace
            dispatcher.emit(event)
        if records:
            assert self.limiter is not None
            try:
                await self.limiter.record(context)
            except Exception:
                logger.exception("recording usage against limits failed (%s)", context.request_id)

    async def aclose(self) -> None:
        """Flush and close the usage sinks, then close the limiter's store (see
        :func:`close_all` for failures and cancellation)."""
        closers = []
        if self.dispatcher is not None:
            closers.append(self.dispatcher.aclose)
        if self.limiter is not None:
            closers.append(self.limiter.aclose)
        await close_all(closers)


async def _compressed_body(result: object) -> bytes | None:
    """What a compressor hook gave that is not bytes already: awaited if awaitable, a
    bytearray or memoryview as bytes, and anything else refused (500) naming the hook."""
    if inspect.isawaitable(result):
        result = await result
    if result is None or isinstance(result, bytes):
        return result
    if isinstance(result, bytearray | memoryview):
        return bytes(result)
    raise TypeError(f"the compressor hook returned {type(result).__name__}, not bytes or None")


async def _awaited_principal(result: object) -> Principal | None:
    """What an auth hook gave that is not a :class:`Principal` already: awaited if it is
    awaitable, and refused (500, as any failing hook) unless it then is one, or ``None``.
    Kept, anything else would fail later where the usage event is built, and lose it."""
    if inspect.isawaitable(result):
        result = await result
    if result is None or isinstance(result, Principal):
        return result
    raise TypeError(f"the auth hook returned {type(result).__name__}, not a Principal or None")


_TRUE = frozenset({"1", "true", "yes", "on"})


def _allowed_models(context: RequestContext) -> frozenset[str] | None:
    principal = context.principal
    return principal.allowed_models if principal is not None else None


def _check_model(allowed: frozenset[str] | None, model: str, field: str = "model") -> None:
    if allowed is not None and model not in allowed:
        raise PermissionDeniedError(f"{field}: this API key may not use '{model}'.")


def _check_body_models(
    allowed: frozenset[str],
    parsed: MessagesRequest | CountTokensRequest,
    resolver: TargetResolver,
    routed: bool,
    fallbacks: msgspec.Raw | None,
    body_targets: Sequence[Target] | None,
) -> None:
    """Hold every model the client names in the body to the key's allow-list, as its model
    is: the gateway's fallbacks and router candidates (``routed``: the body's own), and what
    the upstream itself would run, Anthropic's ``fallbacks`` and a tool's ``model`` (the
    advisor's). Chains the operator configured are the operator's policy and are not."""
    default = resolver.default_provider
    if fallbacks is not None and body_targets is not None:
        # As written: body_fallbacks made body_targets of the same list of names.
        names = _fallback_names_decoder.decode(fallbacks)
        _check_allowed(allowed, "fallbacks", names, body_targets, default)
    elif fallbacks is not None:
        entries = _upstream_fallback_models(fallbacks)
        if entries is None:
            raise PermissionDeniedError(
                "fallbacks: this API key may use only the models it lists, so the upstream may "
                "not choose the fallback models; name them."
            )
        for field, model in entries:
            _check_model(allowed, model, field)
    if routed:
        candidates = resolver.candidates
        _check_allowed(allowed, "router_candidates", resolver.candidate_names, candidates, default)
    for index, tool in enumerate(parsed.tools or ()):
        if not isinstance(tool.model, msgspec.UnsetType):
            field = f"tools.{index}.model"
            _check_model(allowed, _decode_model_name(tool.model, field), field)


def _upstream_fallback_models(raw: msgspec.Raw) -> list[tuple[str, str]] | None:
    """``(field, model)`` for each entry of a ``fallbacks`` the gateway leaves to the upstream:
    Anthropic's ``[{"model": ...}]``, or names the gateway does not route; ``None`` for
    Anthropic's ``"default"``, where the upstream picks the models."""
    try:
        entries = _upstream_fallbacks_decoder.decode(raw)
    except DECODE_ERRORS as exc:
        raise InvalidRequestError(describe_decode_error(exc, raw, at="fallbacks")) from None
    if isinstance(entries, str):
        return None
    return [
        (f"fallbacks.{i}", entry)
        if isinstance(entry, str)
        else (f"fallbacks.{i}.model", entry.model)
        for i, entry in enumerate(entries or ())
    ]


def _decode_model_name(raw: msgspec.Raw, field: str) -> str:
    try:
        return _model_name_decoder.decode(raw)
    except DECODE_ERRORS as exc:
        raise InvalidRequestError(describe_decode_error(exc, raw, at=field)) from None


def _check_allowed(
    allowed: frozenset[str],
    field: str,
    names: Sequence[str],
    targets: Sequence[Target],
    default_provider: str,
) -> None:
    """Each of ``names`` resolved to the matching one of ``targets`` passes as the model does,
    by the name as written (an alias the key may use as its model, say), or else by its
    target: ``provider/model``, or a bare id for the default provider (which is what a bare
    model means); a bare id never opens another provider's model."""
    for index, (name, target) in enumerate(zip(names, targets, strict=True)):
        if name in allowed:
            continue
        bare = target.provider == default_provider and target.model in allowed
        if not bare and target.name not in allowed:
            raise PermissionDeniedError(
                f"{field}.{index}: this API key may not use '{target.name}'."
            )


def _present(raw: msgspec.Raw | msgspec.UnsetType) -> msgspec.Raw | None:
    return None if isinstance(raw, msgspec.UnsetType) else raw


def _metadata_without_tags(body: bytes) -> Mapping[str, object]:
    """``metadata.tags`` is the gateway's; the upstream's metadata keeps everything else."""
    metadata = read_raw_fields(read_raw_fields(body)["metadata"], "metadata")
    metadata.pop("tags", None)
    return {"metadata": metadata}
