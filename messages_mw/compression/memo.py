"""A bounded memo of text rewrites, shared by the requests that one compressor handles.

Agents resend their whole history on every turn, so all of a request's tool output but the newest
turn's was compressed by an earlier request already. A text's rewrite is a pure function of its
JSON and of its :class:`~.rewrite.Rule`, so remembering it changes no output byte and turns the
repeated work into a dictionary lookup. Deduplication is decided per request, outside the memo.
It also keeps each session's latest :class:`~.history.History`, and the parts of request bodies
around their messages (:class:`~.history.Frame`), so that a request's resent messages and its
other fields cost a byte comparison rather than a decoding and a walk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar, cast

from msgspec import Raw

from .bundles import Bundle
from .rewrite import Rewrite, Rule, rewrite_text

if TYPE_CHECKING:
    from .history import Frame, History

__all__ = ["DEFAULT_MEMO_BYTES", "BundleRules", "CompressionMemo", "bundle_rules"]

DEFAULT_MEMO_BYTES = 64 * 1024 * 1024
# What the memo holds besides the bytes of its texts, counted so that ``max_bytes`` bounds the
# memory it really keeps: measured once with tracemalloc (CPython 3.11, 64 bits). Per entry: its
# ordered-dict slot (110), its key with the tool call's id (200), the entry (70), the rewrite
# (70), and the headers of its copy of the text (a ``Raw`` and its bytes, 90).
_ENTRY_OVERHEAD = 540
# Per other ``Raw`` an entry holds (a call's part, a rewrite's new output or JSON), and per frame.
_RAW_OVERHEAD = 90
_FRAME_OVERHEAD = 160
# Per key of a history, a frame, a label or a shell rule: its slot, tuple and bytes' headers
# (the bytes themselves are counted); per label and shell rule, its string's or rule's objects.
_KEY_OVERHEAD = 250
_VALUE_OVERHEAD = 150
# Bundles whose rules are kept (a few objects each, shared by the keys of entries: not
# counted), and labels of tool calls.
_MAX_BUNDLES = 64
_MAX_LABELS = 4096
# Shell calls' rules, each kept with its call's input (at most ``walk._CACHED_INPUT_BYTES``)
# and command line. Labels and shell rules each get a sixteenth of the bound at most: they are
# cheap to make again, and the default bound holds their counts' worth.
_MAX_SHELL_RULES = 1024
_TABLE_SHARE = 16
# Histories kept under one key: sessions whose first messages begin alike, or a session's
# branches (a retried or edited turn); frames kept under one key: bodies that begin alike.
_MAX_HISTORIES = 8


_T = TypeVar("_T")
# A search tool's matches are what ``rg`` prints, so they get its profile: exact lines, and a
# file's matches capped as in any grep output.
_SEARCH_COMMAND = "rg"


class BundleRules(NamedTuple):
    """A bundle's rules for text no command line decides: other tools' output, its search
    tools' matches, and a user's pasted text (``None``: left alone)."""

    text: Rule
    search: Rule
    pasted: Rule | None


def bundle_rules(bundle: Bundle) -> BundleRules:
    """New instances of ``bundle``'s rules (see :meth:`CompressionMemo.rules` for shared ones)."""
    pasted = bundle.pasted_text
    return BundleRules(
        Rule(bundle.text),
        Rule(bundle.text, _SEARCH_COMMAND),
        None if pasted is None else Rule(pasted, pasted=True),
    )


class _Table(dict[Hashable, _T], Generic[_T]):
    """Values made once per key (labels, shell rules), cleared all at once when full, with the
    bytes they hold (``held``)."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.held = 0


class _Entry:
    """One remembered rewrite; ``used`` is set by every hit and cleared by eviction."""

    __slots__ = ("call", "raw", "rewrite", "size", "used")

    def __init__(self, raw: Raw, call: tuple[Raw, ...], rewrite: Rewrite, size: int) -> None:
        self.raw = raw
        self.call = call
        self.rewrite = rewrite
        self.size = size
        self.used = False


class CompressionMemo:
    """Rewrites of texts seen before, bounded by ``max_bytes``.

    A tool result's text is remembered under its tool call's id (and its place in the result),
    and found again only when its bytes and the call's are the same as then: comparing bytes is
    cheaper than hashing them, and an agent resends each result under the same id. Other texts
    are remembered under their bytes. When the memo is full, the oldest entries go first, but an
    entry used since it was last looked at gets a second chance (the clock algorithm), so a
    long session's early results stay while they are resent.

    Thread-safe, since the built-in compressor runs large bodies in worker threads: changes
    happen under a lock, and a lookup is one dictionary read of keys hashed in C, atomic under
    the GIL (``hits`` and ``misses`` may miss a count under contention). A rewrite is computed
    outside the lock, so a slow text never holds up other requests; two threads that miss on
    the same text both compute it, with the same result.

    Histories and frames (see :mod:`.history`) count against the same bound and are dropped
    first, oldest first: they only spare lookups of the texts the memo holds. Labels and shell
    rules count too, each kept to a small share of it. What is counted is the memory really
    kept, objects included, so that ``max_bytes`` bounds a worker's memory: estimated from
    lengths and constants measured once, since measuring objects on every call would cost more
    than the lookups save. ``len()`` counts texts only, and ``hits`` counts a message found in
    a history as one hit.
    """

    def __init__(self, max_bytes: int = DEFAULT_MEMO_BYTES) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._rules: dict[Bundle, BundleRules] = {}
        self._labels: _Table[str] = _Table(_MAX_LABELS)
        self._shell_rules: _Table[Rule] = _Table(_MAX_SHELL_RULES)
        # Histories and frames, under keys of their own kinds (see the engine).
        self._histories: OrderedDict[Hashable, tuple[History, ...] | tuple[Frame, ...]]
        self._histories = OrderedDict()
        self._held: dict[Hashable, int] = {}  # their bytes under each key (the key's apart)
        self._lock = threading.Lock()

    @property
    def bytes_held(self) -> int:
        """The size of what the memo holds, as counted against ``max_bytes``."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def rules(self, bundle: Bundle) -> BundleRules:
        """``bundle``'s rules for other tools' output, search tools' and pasted text, one
        instance each for as long as the memo knows the bundle: the keys holding them compare
        by identity."""
        found = self._rules.get(bundle)
        if found is not None:
            return found
        rules = bundle_rules(bundle)
        with self._lock:
            if len(self._rules) >= _MAX_BUNDLES:
                self._rules.clear()
            return self._rules.setdefault(bundle, rules)

    def label(self, key: Hashable, describe: Callable[[], str]) -> str:
        """``describe()``, remembered under ``key`` (which must name everything it reads)."""
        return self._remembered(self._labels, key, describe, len)

    def shell_rule(self, key: Hashable, make: Callable[[], Rule]) -> Rule:
        """``make()``, the rule for a shell call's output, remembered under ``key`` (which
        must name everything it reads): an agent reruns the same commands, and each new output
        would otherwise decode the call's input and parse its command line again."""
        return self._remembered(self._shell_rules, key, make, _rule_size)

    def _remembered(
        self, table: _Table[_T], key: Hashable, make: Callable[[], _T], size: Callable[[_T], int]
    ) -> _T:
        """``make()`` from ``table``, computed once per key (``size`` tells the bytes it holds);
        the table is cleared when it has ``table.limit`` values or its share of the bound."""
        found = table.get(key)
        if found is None:
            found = make()
            held = _key_size(key) + _VALUE_OVERHEAD + size(found)
            share = self.max_bytes // _TABLE_SHARE
            with self._lock:
                if key in table or held > share:
                    return found
                if len(table) >= table.limit or table.held + held > share:
                    self._clear(table)
                table[key] = found
                table.held += held
                self._bytes += held
                if self._bytes > self.max_bytes:
                    self._shrink(key)
        return found

    def _clear(self, table: _Table[_T]) -> None:
        """Empty a table of labels or shell rules. Called under the lock."""
        self._bytes -= table.held
        table.held = 0
        table.clear()

    def rewrite(self, raw: Raw, rule: Rule) -> Rewrite:
        """``rewrite_text(raw, rule)``, remembered under the bytes of ``raw`` (and ``rule``, as
        :meth:`rules` gives it)."""
        data = bytes(raw)  # the key, and the entry's copy of the text (``Raw`` shares it)
        return self.call_rewrite((rule, data), (), Raw(data), lambda: rule)

    def call_rewrite(
        self, key: Hashable, call: tuple[Raw, ...], raw: Raw, rule: Callable[[], Rule]
    ) -> Rewrite:
        """``rewrite_text(raw, rule())`` for the text ``key`` names, remembered with ``call``
        (what ``rule()`` reads, such as the tool call's name and input) and found again only
        when ``raw`` and ``call`` are the same. Only copies of ``raw`` and ``call`` are kept, never
        the request buffer they may be views of."""
        found = self._entries.get(key)
        if found is not None and found.raw == raw and found.call == call:
            found.used = True
            self.hits += 1
            return found.rewrite
        self.misses += 1
        raw = raw.copy()
        rewrite = rewrite_text(raw, rule())
        size = _entry_size(raw, call, rewrite)
        if size <= self.max_bytes:
            self._store(key, _Entry(raw, tuple([part.copy() for part in call]), rewrite, size))
        return rewrite

    def histories(self, key: Hashable) -> tuple[History, ...]:
        """The histories kept under ``key``, oldest first."""
        return cast("tuple[History, ...]", self._histories.get(key, ()))

    def keep_history(self, key: Hashable, history: History, replaces: Sequence[History]) -> None:
        """Keep ``history`` under ``key``, instead of ``replaces``. A history over half the
        bound is not kept."""
        if history.size <= self.max_bytes // 2:
            with self._lock:
                kept = [old for old in self.histories(key) if old not in replaces]
                self._keep(key, (*kept, history))

    def frames(self, key: Hashable) -> tuple[Frame, ...]:
        """The frames kept under ``key``, oldest first."""
        return cast("tuple[Frame, ...]", self._histories.get(key, ()))

    def keep_frame(self, key: Hashable, frame: Frame) -> None:
        """Keep ``frame`` under ``key``, unless an equal one is kept."""
        if frame.size <= self.max_bytes // 2:
            with self._lock:
                kept = self.frames(key)
                if frame not in kept:
                    self._keep(key, (*kept, frame))

    def _keep(self, key: Hashable, kept: tuple[History, ...] | tuple[Frame, ...]) -> None:
        """Keep the newest of ``kept`` under ``key``, as the newest key. Called under the lock."""
        kept = kept[-_MAX_HISTORIES:]
        held = sum([old.size for old in kept])
        replaced = self._held.get(key)
        if replaced is None:
            replaced = -_key_size(key)  # a new key, whose own bytes count too
        self._bytes += held - replaced
        self._histories.pop(key, None)
        self._histories[key], self._held[key] = kept, held
        self._shrink(key)

    def _drop_history(self, keep: Hashable) -> bool:
        """Drop the oldest histories not under ``keep`` (else all but the newest under it);
        ``False`` when there is nothing to drop. Called under the lock."""
        for key in self._histories:
            if key != keep:
                del self._histories[key]
                self._bytes -= self._held.pop(key) + _key_size(key)
                return True
        kept = self._histories.get(keep, ())
        if len(kept) < 2:
            return False
        self._histories[keep] = kept[-1:]
        dropped = sum([old.size for old in kept[:-1]])
        self._held[keep] -= dropped
        self._bytes -= dropped
        return True

    def _store(self, key: Hashable, entry: _Entry) -> None:
        with self._lock:
            replaced = self._entries.pop(key, None)
            if replaced is not None:
                self._bytes -= replaced.size
            self._entries[key] = entry
            self._bytes += entry.size
            self._shrink(key)

    def _shrink(self, key: Hashable) -> None:
        """Drop histories, then texts, until the memo is within its bound, but never what
        ``key`` names; then labels and shell rules, should what ``key`` names not fit beside
        them. Called under the lock."""
        while self._bytes > self.max_bytes:
            if not self._drop_history(key) and not self._drop_entry(key):
                self._clear(self._labels)
                self._clear(self._shell_rules)
                return

    def _drop_entry(self, key: Hashable) -> bool:
        """Drop the oldest text not used since it was last looked at (the clock algorithm),
        never ``key``'s; ``False`` when there is no other. Called under the lock."""
        entries = self._entries
        while len(entries) > (key in entries):
            oldest, dropped = entries.popitem(last=False)
            if dropped.used or oldest == key:
                dropped.used = False
                entries[oldest] = dropped
            else:
                self._bytes -= dropped.size
                return True
        return False


def _entry_size(raw: Raw, call: tuple[Raw, ...], rewrite: Rewrite) -> int:
    """The bytes an entry holds: its texts, as :meth:`Rewrite.size` counts them, and the
    objects that hold them."""
    size = len(raw) + rewrite.size(raw) + _ENTRY_OVERHEAD
    if call:
        size += sum(map(len, call)) + _RAW_OVERHEAD * len(call)
    if rewrite.output is not raw:
        size += _RAW_OVERHEAD
    if rewrite.json is not None and rewrite.json is not rewrite.output:
        size += _RAW_OVERHEAD
    if rewrite.frame is not None:
        size += _FRAME_OVERHEAD
    return size


def _key_size(key: Hashable) -> int:
    """The bytes a key holds: its parts that are bytes (the start of a body, a call's input),
    and the objects that hold them."""
    size = _KEY_OVERHEAD
    if type(key) is tuple:
        for part in key:
            if type(part) is bytes:
                size += len(part)
    return size


def _rule_size(rule: Rule) -> int:
    """The bytes a shell call's rule holds besides its objects: its command line."""
    return 0 if rule.command is None else len(rule.command)
