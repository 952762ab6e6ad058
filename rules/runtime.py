"""The rule runtime: rule-set versions run in durable-rules, contained, with a Python fallback.

The only module that imports durable-rules; shared/notes/durable-rules.md says what it breaks and
how it is contained. ``RuleRuntime.activate`` compiles a version (``rules._durable_json``: typed
order codes, ``not`` pushed down, one durable rule per alternative, shards that fit durable's
stack), loads it into an owned host whose background dispatcher does nothing, warms and probes it,
and publishes it. ``evaluate`` posts one message per shard under a session id from a pool, records
the fired rules in a Python dict, always deletes the session state, and answers from the Python
evaluator (``first_match``) when durable-rules fails.

Session states. durable-rules keeps states in a pool of slots and never initialises a fresh slot's
action context; deleting a state before any action ran in its slot frees garbage (crash path 1 in
the notes). Activation therefore fills the first ``MAX_CONCURRENT`` slots of each ruleset with
states whose catch-all fired and deletes them, and a semaphore keeps at most that many evaluations
(so live states per ruleset) in flight: freed slots are reused first, so every state sits in a
warmed slot and can be deleted after any error.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import durable_rules_engine
from durable.engine import Closure, Host

from engine.errors import InvalidInput
from rules._durable_json import (
    CATCH_ALL,
    FLAG_NAME,
    CompiledVersion,
    compile_version,
    fnv1a,
)
from rules.language import And, Compare, Const, Expr, InList, Not, Or, Predicate, compile_predicate

__all__ = ["DurableRulesError", "Fired", "RuleRuntime", "RuleSpec", "first_match"]

logger = logging.getLogger(__name__)

MAX_PRIORITY = 65534
MAX_SID_POOL = 1000
"""durable-rules corrupts its heap past 1,024 live session ids in one ruleset."""
MAX_CONCURRENT = 8
_NO_STATE = "error code: 309"  # durable-rules' ERR_SID_NOT_FOUND, as its binding words it
"""Evaluations in durable-rules at once: each ruleset's first slots are warmed for as many."""


@dataclass(frozen=True)
class RuleSpec:
    """One rule of a version: fires when ``condition`` holds and no earlier rule does.

    ``priority`` 0..65534, lower fires first; ties go to the smaller ``rule_id``.
    """

    rule_id: str
    priority: int
    condition: Expr

    def __post_init__(self) -> None:
        if not isinstance(self.rule_id, str) or not self.rule_id:
            problem = f"rule_id must be a non-empty string, got {self.rule_id!r}"
            raise InvalidInput(problem, field="rule_id")
        if (
            not isinstance(self.priority, int)
            or isinstance(self.priority, bool)
            or not 0 <= self.priority <= MAX_PRIORITY
        ):
            problem = f"priority must be an integer from 0 to {MAX_PRIORITY}, got {self.priority!r}"
            raise InvalidInput(problem, field="priority")
        if not isinstance(self.condition, Compare | InList | And | Or | Not | Const):
            problem = f"condition must be a rule AST, got {type(self.condition).__name__}"
            raise InvalidInput(problem, field="condition")


@dataclass(frozen=True)
class Fired:
    """The rule that answered an evaluation; ``fallback``: the Python evaluator answered."""

    version: int
    rule_id: str
    fallback: bool


class DurableRulesError(RuntimeError):
    """durable-rules could not load a version; the previously active version stays active."""


def _ordered(rules: Sequence[RuleSpec]) -> list[RuleSpec]:
    return sorted(rules, key=lambda rule: (rule.priority, rule.rule_id))


def first_match(rules: Sequence[RuleSpec], attributes: Mapping[str, Any]) -> str | None:
    """The id of the first rule, in (priority, rule_id) order, whose condition holds; else None.

    The reference semantics (``compile_predicate``) and the fallback of ``RuleRuntime``.
    """
    for rule in _ordered(rules):
        if compile_predicate(rule.condition)(attributes):
            return rule.rule_id
    return None


# The owned durable-rules host ---------------------------------------------------------------------


class _QuietHost(Host):  # type: ignore[misc]
    """A host without the stock background dispatcher, which races request threads (notes, 3)."""

    def _run(self) -> None:
        pass

    def unload(self, name: str) -> None:
        """Frees a ruleset: durable-rules has no public call for it."""
        ruleset = self._ruleset_directory.pop(name)
        self._ruleset_list.remove(ruleset)
        durable_rules_engine.delete_ruleset(ruleset._handle)


@dataclass(eq=False)
class _Version:
    number: int
    rules: tuple[RuleSpec, ...]
    """In firing order; durable rule indexes point into it."""
    predicates: tuple[Predicate, ...]
    compiled: CompiledVersion
    shard_names: list[str] = field(default_factory=list)
    in_flight: int = 0
    retired: bool = False
    answers: dict[tuple[tuple[str, int], ...], int | None] = field(default_factory=dict)
    """durable-rules' answers by message, when the runtime remembers them (``memo_entries``)."""

    def python_answer(self, attributes: Mapping[str, Any]) -> int | None:
        for index, predicate in enumerate(self.predicates):
            if predicate(attributes):
                return index
        return None


class RuleRuntime:
    """Runs the active rule-set version in durable-rules; thread-safe.

    ``sid_pool``: session ids evaluations take one each of (durable-rules finds states by a 32-bit
    hash of the id: the pool's hashes are distinct). An id whose state could not be deleted is
    retired. At most ``min(MAX_CONCURRENT, sid_pool)`` evaluations run in durable-rules at once.

    ``memo_entries``: how many of durable-rules' answers to remember per version, by message. A
    message holds the codes of the customer's values against the thresholds the rules test, so
    customers alike in every tested respect send the same message, and a version's answer to a
    message never changes: a worker meets a few hundred distinct messages, and a remembered one is
    answered without the 60-120 us (GIL held) of a durable-rules post. 0 asks durable-rules every
    time. Fallback answers (durable-rules failed) are never remembered.
    """

    def __init__(self, *, sid_pool: int = 256, memo_entries: int = 0) -> None:
        if isinstance(sid_pool, bool) or not isinstance(sid_pool, int):
            raise InvalidInput(f"sid_pool must be an integer, got {sid_pool!r}", field="sid_pool")
        if not 1 <= sid_pool <= MAX_SID_POOL:
            problem = f"sid_pool must be between 1 and {MAX_SID_POOL}, got {sid_pool}"
            raise InvalidInput(problem, field="sid_pool")
        # Lock order: _activating, _lock, _loading; _counting is taken last and alone.
        self._activating = threading.Lock()  # one activation at a time, in the order called
        self._lock = threading.Lock()  # the active pointer, in-flight counts, closing
        self._active: _Version | None = None
        self._closed = False
        self._loading = threading.Lock()  # registering and freeing rulesets, _loaded
        self._host = _QuietHost()
        self._loaded = 0
        self._serial = count()
        # Session ids: each held by one evaluation (or, for warming, one activation) at a time,
        # so no two threads ever share an entry of _fired.
        self._sids = deque(_distinct_sids(sid_pool, "nb"))  # popleft and append are atomic
        self._concurrent = min(MAX_CONCURRENT, sid_pool)
        self._warming_sids = _distinct_sids(self._concurrent, "nbw")
        self._slots = threading.BoundedSemaphore(self._concurrent)
        self._fired: dict[str, list[int]] = {}
        self._counting = threading.Lock()
        self._memo_entries = memo_entries
        self._counters = dict.fromkeys(
            ("evaluations", "remembered", "fallbacks", "errors", "activations", "retired_sids"), 0
        )

    # Versions ------------------------------------------------------------------------------------

    def activate(self, version: int, rules: Sequence[RuleSpec]) -> None:
        """Compiles, loads, probes and publishes a version (again, for a rollback); the version it
        replaces is freed once no evaluation uses it.

        Raises ``InvalidInput`` for a bad rule set and ``DurableRulesError`` when durable-rules
        cannot run it; either way the active version does not change.
        """
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidInput(f"version must be an integer, got {version!r}", field="version")
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            if not isinstance(rule, RuleSpec):
                problem = f"expected a RuleSpec, got {type(rule).__name__}"
                raise InvalidInput(problem, field=f"rules.{i}")
            if rule.rule_id in seen:
                problem = f"duplicate rule_id {rule.rule_id!r}"
                raise InvalidInput(problem, field=f"rules.{i}.rule_id")
            seen.add(rule.rule_id)
        if self._closed:
            raise RuntimeError("the rule runtime is closed")
        ordered = _ordered(rules)
        compiled = compile_version([r.condition for r in ordered], [r.rule_id for r in ordered])
        loaded = _Version(
            number=version,
            rules=tuple(ordered),
            predicates=tuple(compile_predicate(r.condition) for r in ordered),
            compiled=compiled,
        )
        with self._activating:
            self._load(loaded)
            with self._lock:
                if self._closed:
                    self._retire(loaded)
                    raise RuntimeError("the rule runtime is closed")
                previous, self._active = self._active, loaded
                if previous is not None:
                    self._retire(previous)
        self._count("activations")
        logger.info("rules: version %s active (%d rules)", version, len(ordered))

    @property
    def active_version(self) -> int | None:
        with self._lock:
            return None if self._active is None else self._active.number

    def counters(self) -> dict[str, int]:
        """evaluations, remembered (answered from the memo of durable-rules' answers), fallbacks
        (answered by Python), errors (durable-rules failures),
        activations, retired_sids, and loaded_rulesets (durable rulesets not freed yet)."""
        with self._counting:
            counters = dict(self._counters)
        with self._loading:
            counters["loaded_rulesets"] = self._loaded
        return counters

    def close(self) -> None:
        """Deactivates; rulesets are freed as soon as no evaluation uses them."""
        with self._lock:
            self._closed = True
            previous, self._active = self._active, None
            if previous is not None:
                self._retire(previous)

    def __enter__(self) -> RuleRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Evaluation ----------------------------------------------------------------------------------

    def evaluate(self, attributes: Mapping[str, Any]) -> Fired | None:
        """The first rule of the active version whose condition holds; None if none holds or no
        version is active. durable-rules answers; if it fails in any way, the Python evaluator."""
        self._count("evaluations")
        with self._lock:
            version = self._active
            if version is None:
                return None
            version.in_flight += 1
        try:
            message = version.compiled.encode(attributes)
            fallback = False
            memo_key = tuple(message.items())  # the keys in the version's fixed order
            if memo_key in version.answers:
                index = version.answers[memo_key]
                self._count("remembered")
            else:
                try:
                    index = self._ask(version, message)
                except Exception:
                    logger.exception("rules: durable-rules failed on version %s", version.number)
                    self._count("errors", "fallbacks")
                    index, fallback = version.python_answer(attributes), True
                else:
                    if len(version.answers) < self._memo_entries:
                        version.answers[memo_key] = index
        finally:
            with self._lock:
                version.in_flight -= 1
                if version.retired and version.in_flight == 0:
                    self._free(version)
        if index is None:
            return None
        return Fired(version.number, version.rules[index].rule_id, fallback)

    def _ask(self, version: _Version, message: dict[str, int]) -> int | None:
        """The rule index durable-rules fires first, shard by shard; None: only catch-alls."""
        with self._slots:
            sid = self._sids.popleft()  # IndexError if every id was retired: a failure too
            kept = True
            try:
                for name in version.shard_names:
                    index = self._post(name, sid, message)
                    if index != CATCH_ALL:
                        return index
                return None
            except _StateLeft:
                kept = False
                self._count("retired_sids")
                logger.error("rules: session id %s retired, its state could not be deleted", sid)
                raise
            finally:
                if kept:
                    self._sids.append(sid)

    def _post(self, name: str, sid: str, message: dict[str, int]) -> int:
        """One message through one ruleset: the smallest rule index that fired."""
        try:
            state = self._host.post(name, {"sid": sid, FLAG_NAME: 1, **message})
        finally:
            indexes = self._fired.pop(sid, [])
            try:
                self._host.delete_state(name, sid)
            except Exception as error:
                if _NO_STATE not in str(error):  # a failed post may leave no state behind
                    raise _StateLeft(f"state of {sid} in {name} not deleted") from error
        if isinstance(state, dict) and "exception" in state:
            raise DurableRulesError(f"a durable-rules action failed: {state['exception']}")
        if not indexes:
            raise DurableRulesError("durable-rules fired no rule, not even the catch-all")
        rules = [index for index in indexes if index != CATCH_ALL]
        return min(rules) if rules else CATCH_ALL

    # Loading and freeing -------------------------------------------------------------------------

    def _action(self, index: int) -> Any:
        fired = self._fired

        def record(c: Closure) -> None:
            fired.setdefault(c.s.sid, []).append(index)

        return record

    def _load(self, version: _Version) -> None:
        """Registers every shard under a fresh name and warms it, then probes the version."""
        compiled = version.compiled
        try:
            for shard in compiled.shards:
                name = f"nextbest_v{version.number}_{next(self._serial)}"
                rules = {
                    rule_name: {**rule, "run": self._action(index)}
                    for (rule_name, rule), (_, index) in zip(
                        shard.definition(compiled.keys).items(), shard.chains, strict=True
                    )
                }
                with self._loading:
                    self._host.register_rulesets({name: rules})
                    self._loaded += 1
                    version.shard_names.append(name)
                self._warm(name)
            for probe in compiled.probes():
                got, expected = self._ask(version, probe), compiled.expected(probe)
                if got != expected:
                    raise DurableRulesError(f"probe {probe} fired rule {got}, expected {expected}")
        except Exception as error:
            self._count("errors")
            with self._loading:
                self._unload(version)
            logger.exception("rules: version %s could not be loaded", version.number)
            if isinstance(error, DurableRulesError):
                raise
            problem = f"durable-rules could not load version {version.number}"
            raise DurableRulesError(problem) from error

    def _warm(self, name: str) -> None:
        """Fills the ruleset's first slots with states whose catch-all fired, then deletes them.

        The flag alone passes the fewest tests (the catch-all's, and tests of missing keys). A
        state that fired nothing sits in a fresh slot and is left alone: freeing the whole
        ruleset stays safe.
        """
        for sid in self._warming_sids:
            self._host.post(name, {"sid": sid, FLAG_NAME: 1})
            if not self._fired.pop(sid, []):
                raise DurableRulesError(f"warming {name}: the catch-all did not fire")
        for sid in self._warming_sids:
            self._host.delete_state(name, sid)

    def _retire(self, version: _Version) -> None:
        """Caller holds ``self._lock``."""
        version.retired = True
        if version.in_flight == 0:
            self._free(version)

    def _free(self, version: _Version) -> None:
        """Caller holds ``self._lock``."""
        with self._loading:
            self._unload(version)

    def _unload(self, version: _Version) -> None:
        """Caller holds ``self._loading``."""
        while version.shard_names:
            name = version.shard_names.pop()
            try:
                self._host.unload(name)
                self._loaded -= 1
            except Exception:
                logger.exception("rules: ruleset %s could not be freed", name)
                self._count("errors")

    def _count(self, *names: str) -> None:
        with self._counting:
            for name in names:
                self._counters[name] += 1


class _StateLeft(DurableRulesError):
    """A session state could not be deleted: its id must not be used again."""


def _distinct_sids(n: int, prefix: str) -> list[str]:
    """n session ids with distinct durable-rules hashes (two live ids of one hash share a state)."""
    hash_to_sid: dict[int, str] = {}
    for i in count():
        sid = f"{prefix}{i}"
        hash_to_sid.setdefault(fnv1a(sid), sid)
        if len(hash_to_sid) == n:
            return list(hash_to_sid.values())
    raise AssertionError("unreachable")
