"""Rule-set versions compiled to durable-rules JSON for ``rules.runtime``; pure, no durable import.

``compile_version(conditions)`` takes the conditions of one version in firing order (priority, then
rule id) and returns the durable-rules rulesets and the message encoder under which durable-rules'
first firing rule is the first condition that ``compile_predicate`` finds true.

Encoding. A comparison's literal has a kind (``_kind``: string, number, boolean or date). Each
(attribute, kind) pair the version reads is a message key ``a<i>``. With that pair's distinct
literals sorted, ``l_0 < ... < l_{m-1}``, a stored value ``v`` is sent as its order code: ``2j + 1``
when ``v == l_j``, ``2j`` when ``l_{j-1} < v < l_j``; codes run from 0 to ``2m``. For every operator
``v op l_j`` holds exactly when ``code(v) op 2j + 1``. The key is left out of the message exactly
when ``compile_predicate`` treats the value as missing or of another kind (``_stored``). So
durable-rules only ever compares small integers with small integers, which it does right, and
never sees what it gets wrong: a float (it rejects ``1e+16`` and ``5e-324``), a string (it coerces
``"5" == 5`` and finds ``"abc" > 12``) or a boolean (``True == 1``).

Conditions. ``not`` is pushed down to the keys (``not x < 5`` is "x missing, or x >= 5"), each
condition becomes a disjunction of conjunctions, and a key allowed several code intervals splits
its conjunction; each conjunction is one durable-rules rule with the priority of its rule, which is
how ``in`` becomes one durable rule per value.

Containment (shared/notes/durable-rules.md): every rule opens with a test the session state cannot
pass (``$nex $s``), each ruleset ends with a catch-all on the flag set on every message, and rules
are split into shards such that, for any message, durable-rules' alpha walk needs at most
``MAX_STACK`` slots of its fixed 64-slot stack (error 303 otherwise).
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, TypeAlias

from engine.attributes import AttributeType
from engine.errors import InvalidInput
from rules.language import And, Compare, Const, Expr, InList, Not, Or, Value, _kind, _stored

Operator: TypeAlias = Literal["eq", "gte", "lte", "ex", "nex"]
Condition: TypeAlias = tuple[int, Operator, int]
"""``(key index, operator, code)``; key ``FLAG`` is the flag set on every message."""

FLAG = -1
FLAG_NAME = "nbf"
GUARD: dict[str, Any] = {"$nex": {"$s": 1}}
CATCH_ALL = -1
"""The rule index of each shard's catch-all."""
CATCH_ALL_PRIORITY = 65535
MAX_RULES = 65534
MAX_KEYS = 100
MAX_CONJUNCTIONS = 1024
MAX_DURABLE_RULES = 16384
MAX_STACK = 48
"""Slots of durable-rules' 64-slot alpha stack a shard may need; the rest is a safety margin."""
MAX_SHARD_RULES = 2000
MAX_CHILDREN = 256
"""Successors of one alpha node (durable-rules keeps at most ~480 tests and 128 ``$nex``)."""

_DURABLE_OPERATOR = {"eq": "$eq", "gte": "$gte", "lte": "$lte", "ex": "$ex", "nex": "$nex"}
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


# Names durable-rules tells apart only by a 32-bit FNV-1a hash -------------------------------------


def fnv1a(text: str) -> int:
    """durable-rules' 32-bit FNV-1a hash of a name or session id (``fnv1Hash32``, ASCII text)."""
    value = 0x811C9DC5
    for byte in text.encode("ascii"):
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


# The names durable-rules reads itself: message fields, rule settings and operators.
RESERVED_NAMES = (
    *("sid", "id", "$s", "$i", "all", "any", "pri", "count", "cap", "dist", "name", "$m", "$l"),
    *("$r", "$lt", "$lte", "$gt", "$gte", "$eq", "$neq", "$mt", "$imt", "$iall", "$iany", "$ex"),
    *("$nex", "$or", "$and", "$add", "$sub", "$mul", "$div", "$forward"),
)
KEY_NAMES = tuple(f"a{i}" for i in range(MAX_KEYS))


def _check_names() -> None:
    """Message keys and the flag must hash apart from each other and from durable's own names."""
    ours = [fnv1a(name) for name in (*KEY_NAMES, FLAG_NAME)]
    reserved = {fnv1a(name) for name in RESERVED_NAMES}
    if len(set(ours)) != len(ours) or set(ours) & reserved:
        raise RuntimeError("message key names collide in durable-rules' 32-bit name hash")


_check_names()


# Keys and codes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageKey:
    """One (attribute, kind) pair the version reads; ``literals`` sorted and distinct."""

    name: str
    attribute: str
    kind: AttributeType
    literals: tuple[Value, ...]

    @property
    def top(self) -> int:
        """The highest code: a value above every literal."""
        return 2 * len(self.literals)

    def code(self, value: Any) -> int:
        """The order code of a value of this key's kind (module docstring)."""
        j = bisect_left(self.literals, value)
        return 2 * j + 1 if j < len(self.literals) and self.literals[j] == value else 2 * j

    @cached_property
    def codes(self) -> frozenset[int]:
        """The codes a value can have: no boolean lies above true, no date between two adjacent."""
        if self.kind == "boolean":
            return frozenset({self.code(False), self.code(True)})
        codes = set(range(self.top + 1))
        if self.kind == "date":
            ordinals = [d.toordinal() for d in self.literals if isinstance(d, dt.date)]
            codes -= {2 * j for j in range(1, len(ordinals)) if ordinals[j] - ordinals[j - 1] == 1}
            codes -= {0} if ordinals[0] == dt.date.min.toordinal() else set()
            codes -= {self.top} if ordinals[-1] == dt.date.max.toordinal() else set()
        return frozenset(codes)


def _literals_by_key(conditions: Sequence[Expr]) -> list[tuple[str, AttributeType, set[Any]]]:
    """The (attribute, kind) pairs read, most-read first (shared prefixes in the alpha network)."""
    pair_to_literals: dict[tuple[str, AttributeType], set[Any]] = {}
    pair_to_rules: dict[tuple[str, AttributeType], int] = {}

    def walk(node: Expr, seen: set[tuple[str, AttributeType]]) -> None:
        if isinstance(node, And | Or):
            for item in node.items:
                walk(item, seen)
        elif isinstance(node, Not):
            walk(node.item, seen)
        elif isinstance(node, Compare | InList):
            values = (node.value,) if isinstance(node, Compare) else node.values
            for value in values:
                kind = _kind(value)
                if kind is not None:
                    pair = (node.attribute, kind)
                    pair_to_literals.setdefault(pair, set()).add(value)
                    seen.add(pair)

    for condition in conditions:
        seen: set[tuple[str, AttributeType]] = set()
        walk(condition, seen)
        for pair in seen:
            pair_to_rules[pair] = pair_to_rules.get(pair, 0) + 1
    first_seen = {pair: i for i, pair in enumerate(pair_to_literals)}
    pairs = sorted(pair_to_literals, key=lambda pair: (-pair_to_rules[pair], first_seen[pair]))
    return [(attribute, kind, pair_to_literals[(attribute, kind)]) for attribute, kind in pairs]


# Conditions as disjunctions of conjunctions over the keys ----------------------------------------

Constraint: TypeAlias = frozenset[int] | None
"""None: the key is missing; a set: the key is present with one of these codes."""
Conjunction: TypeAlias = dict[int, Constraint]
Disjunction: TypeAlias = list[Conjunction]


class _TooComplex(Exception):
    pass


def _merge(a: Conjunction, b: Conjunction) -> Conjunction | None:
    merged = dict(a)
    for key, constraint in b.items():
        if key not in merged:
            merged[key] = constraint
            continue
        mine = merged[key]
        if mine is None or constraint is None:
            if mine is not constraint:
                return None  # missing and present
            continue
        both = mine & constraint
        if not both:
            return None
        merged[key] = both
    return merged


def _identity(conjunction: Conjunction) -> tuple[tuple[int, tuple[int, ...] | None], ...]:
    return tuple(
        (key, None if codes is None else tuple(sorted(codes)))
        for key, codes in sorted(conjunction.items())
    )


def _unique(disjunction: Iterable[Conjunction]) -> Disjunction:
    seen: dict[Any, Conjunction] = {}
    for conjunction in disjunction:
        seen.setdefault(_identity(conjunction), conjunction)
    if len(seen) > MAX_CONJUNCTIONS:
        raise _TooComplex
    return list(seen.values())


def _any(parts: Iterable[Disjunction]) -> Disjunction:
    return _unique(itertools.chain.from_iterable(parts))


def _all(parts: Iterable[Disjunction]) -> Disjunction:
    result: Disjunction = [{}]
    for part in parts:
        merged = (_merge(a, b) for a in result for b in part)
        result = _unique(m for m in merged if m is not None)
        if not result:
            break
    return result


class _Translator:
    """Conditions to disjunctions over the message keys (``positive=False``: of the negation)."""

    def __init__(self, keys: Sequence[MessageKey]) -> None:
        self.keys = keys
        self.pair_to_index = {(key.attribute, key.kind): i for i, key in enumerate(keys)}

    def atom(self, index: int, codes: frozenset[int], positive: bool) -> Disjunction:
        if positive:
            return [{index: codes}] if codes else []
        rest = self.keys[index].codes - codes
        missing: Conjunction = {index: None}
        return [missing, {index: rest}] if rest else [missing]

    def translate(self, node: Expr, positive: bool) -> Disjunction:
        if isinstance(node, Const):
            return [{}] if node.value == positive else []
        if isinstance(node, Not):
            return self.translate(node.item, not positive)
        if isinstance(node, And | Or):
            parts = [self.translate(item, positive) for item in node.items]
            return _all(parts) if isinstance(node, And) == positive else _any(parts)
        if isinstance(node, Compare):
            kind = _kind(node.value)
            if kind is None:  # NaN, infinities, datetimes: compile_predicate never matches them
                return [] if positive else [{}]
            index = self.pair_to_index[(node.attribute, kind)]
            key, test = self.keys[index], _COMPARE[node.op]
            literal = key.code(node.value)
            codes = frozenset(c for c in key.codes if test(c, literal))
            return self.atom(index, codes, positive)
        if isinstance(node, InList):
            return self.in_list(node, positive)
        raise TypeError(f"not a rule AST node: {node!r}")

    def in_list(self, node: InList, positive: bool) -> Disjunction:
        # compile_predicate: typed (some kind present) and found (a value of that kind is listed)
        # != negated. Per kind: found_k = key_k in codes_k, present_k = key_k in all codes.
        index_to_codes: dict[int, set[int]] = {}
        for value in node.values:
            kind = _kind(value)
            if kind is not None:
                index = self.pair_to_index[(node.attribute, kind)]
                index_to_codes.setdefault(index, set()).add(self.keys[index].code(value))
        found = [(i, frozenset(codes)) for i, codes in index_to_codes.items()]
        present = [(i, self.keys[i].codes) for i in index_to_codes]

        def anyof(atoms: list[tuple[int, frozenset[int]]], sign: bool) -> Disjunction:
            return (
                _any(self.atom(i, c, True) for i, c in atoms)
                if sign
                else _all(self.atom(i, c, False) for i, c in atoms)
            )

        if not node.negated:
            return anyof(found, positive)
        if positive:  # typed and not found
            return _all([anyof(present, True), anyof(found, False)])
        return _any([anyof(present, False), anyof(found, True)])


def _runs(codes: frozenset[int], possible: frozenset[int]) -> list[tuple[int, int]]:
    """``codes`` as few intervals as possible, codes no value can have being free to join them."""
    runs: list[tuple[int, int]] = []
    extend = False
    for code in sorted(possible):
        if code in codes and extend:
            runs[-1] = (runs[-1][0], code)
        elif code in codes:
            runs.append((code, code))
        extend = code in codes
    return runs


def _chains(conjunction: Conjunction, keys: Sequence[MessageKey]) -> list[tuple[Condition, ...]]:
    """The durable conditions of one conjunction: one chain per combination of code intervals."""
    options: list[list[list[Condition]]] = []
    for index in sorted(conjunction):
        constraint, possible = conjunction[index], keys[index].codes
        if constraint is None:
            options.append([[(index, "nex", 1)]])
            continue
        alternatives: list[list[Condition]] = []
        for lo, hi in _runs(constraint, possible):
            if lo == hi:
                alternatives.append([(index, "eq", lo)])
            elif lo == min(possible) and hi == max(possible):
                alternatives.append([(index, "ex", 1)])
            else:
                bounds: list[Condition] = [(index, "gte", lo)] if lo > min(possible) else []
                alternatives.append(bounds + ([(index, "lte", hi)] if hi < max(possible) else []))
        options.append(alternatives)
    chains = [tuple(itertools.chain.from_iterable(combo)) for combo in itertools.product(*options)]
    return [chain or ((FLAG, "eq", 1),) for chain in chains]


# Shards: how much of durable-rules' alpha stack a set of chains can need -------------------------


@dataclass
class _Node:
    children: dict[Condition, _Node] = field(default_factory=dict)
    key_to_width: dict[int, int] = field(default_factory=dict)
    peak: int = 0


def _key_width(conditions: list[Condition], top: int) -> int:
    """Most successors on one key a message can push: all ``$nex`` ones, or the tests it passes."""
    missing = sum(1 for _, op, _ in conditions if op == "nex")
    delta = [0] * (top + 2)
    for _, op, code in conditions:
        lo, hi = {"eq": (code, code), "gte": (code, top), "lte": (0, code)}.get(op, (0, top))
        if op != "nex":
            delta[lo] += 1
            delta[hi + 1] -= 1
    return max(missing, *itertools.accumulate(delta))


class _Network:
    """A model of one shard's alpha network (a trie of condition chains under the guard node).

    durable-rules walks it depth first from a stack of 64 slots: popping a node pushes every
    successor the message passes (a ``$nex`` successor whenever its key is missing). With ``w(n)``
    the most successors of ``n`` one message can push, the walk below ``n`` needs at most
    ``peak(n) = w(n) - 1 + max(1, max over successors c of peak(c))`` slots (0 at a leaf).
    """

    def __init__(self, keys: Sequence[MessageKey]) -> None:
        self.tops = [key.top for key in keys]
        self.root = _Node()
        self.widest = 0

    def add(self, chain: tuple[Condition, ...]) -> None:
        path, node = [self.root], self.root
        for condition in chain:
            child = node.children.get(condition)
            if child is None:
                child = node.children[condition] = _Node()
                key = condition[0]
                on_key = [c for c in node.children if c[0] == key]
                top = 1 if key == FLAG else self.tops[key]
                node.key_to_width[key] = _key_width(on_key, top)
                self.widest = max(self.widest, len(node.children))
            node = child
            path.append(node)
        for node in reversed(path):
            if node.children:
                below = max(child.peak for child in node.children.values())
                node.peak = sum(node.key_to_width.values()) - 1 + max(1, below)

    def fits(self) -> bool:
        return self.root.peak <= MAX_STACK and self.widest <= MAX_CHILDREN


# The compiled version ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One durable ruleset: chains in firing order, each with its rule index (``CATCH_ALL``)."""

    chains: tuple[tuple[tuple[Condition, ...], int], ...]

    def definition(self, keys: Sequence[MessageKey]) -> dict[str, dict[str, Any]]:
        """The durable-rules JSON, ``{"c0": {"all": [...], "pri": 1}, ...}``, without actions."""
        names = [key.name for key in keys]
        rules: dict[str, dict[str, Any]] = {}
        for n, (chain, index) in enumerate(self.chains):
            tests = [
                {_DURABLE_OPERATOR[op]: {FLAG_NAME if k == FLAG else names[k]: code}}
                for k, op, code in chain
            ]
            priority = CATCH_ALL_PRIORITY if index == CATCH_ALL else index + 1
            rules[f"c{n}"] = {"all": [{"m": {"$and": [GUARD, *tests]}}], "pri": priority}
        return rules


@dataclass(frozen=True)
class CompiledVersion:
    keys: tuple[MessageKey, ...]
    shards: tuple[Shard, ...]

    def encode(self, attributes: Mapping[str, Any]) -> dict[str, int]:
        """The message fields of a customer: each key whose value has the key's kind, as a code."""
        message: dict[str, int] = {}
        for key in self.keys:
            value = _stored(attributes.get(key.attribute), key.kind)
            if value is not None:
                message[key.name] = key.code(value)
        return message

    def expected(self, message: Mapping[str, int]) -> int | None:
        """The rule index durable-rules should answer for a message (what probes are checked by)."""
        for shard in self.shards:
            passed = [
                index
                for chain, index in shard.chains
                if index != CATCH_ALL and all(_passes(c, message, self.keys) for c in chain)
            ]
            if passed:
                return min(passed)
        return None

    def probes(self) -> list[dict[str, int]]:
        """Messages a loaded version is checked with: none, all low, all high, each key's codes."""
        if not self.keys:
            return [{}]
        low = {key.name: min(key.codes) for key in self.keys}
        high = {key.name: max(key.codes) for key in self.keys}
        probes: list[dict[str, int]] = [{}, low, high]
        for key in self.keys[:8]:
            probes += [{**low, key.name: code} for code in sorted(key.codes)[1:9]]
        return probes


def _passes(condition: Condition, message: Mapping[str, int], keys: Sequence[MessageKey]) -> bool:
    index, op, code = condition
    if index == FLAG:
        return True
    value = message.get(keys[index].name)
    if op == "nex":
        return value is None
    if value is None:
        return False
    return {"eq": value == code, "gte": value >= code, "lte": value <= code}.get(op, True)


def compile_version(conditions: Sequence[Expr], rule_ids: Sequence[str]) -> CompiledVersion:
    """Durable rulesets for conditions in firing order; ``rule_ids`` name them in errors.

    Raises ``InvalidInput`` when the version is beyond what durable-rules can hold.
    """
    if len(conditions) > MAX_RULES:
        problem = f"a rule set holds at most {MAX_RULES} rules, got {len(conditions)}"
        raise InvalidInput(problem, field="rules")
    found = _literals_by_key(conditions)
    if len(found) > MAX_KEYS:
        problem = f"the rules compare at most {MAX_KEYS} attribute types, got {len(found)}"
        raise InvalidInput(problem, field="rules")
    keys = tuple(
        MessageKey(KEY_NAMES[i], attribute, kind, tuple(sorted(literals)))
        for i, (attribute, kind, literals) in enumerate(found)
    )
    translator = _Translator(keys)
    ordered: list[tuple[tuple[Condition, ...], int]] = []
    for index, condition in enumerate(conditions):
        try:
            disjunction = translator.translate(condition, True)
            chains = [chain for conj in disjunction for chain in _chains(conj, keys)]
            if len(chains) > MAX_CONJUNCTIONS:
                raise _TooComplex
        except _TooComplex:
            problem = f"rule {rule_ids[index]!r} expands to more than {MAX_CONJUNCTIONS} durable"
            problem += " rules; write it with fewer alternatives"
            raise InvalidInput(problem, field=f"rules.{index}.condition") from None
        ordered += [(chain, index) for chain in chains]
        if len(ordered) > MAX_DURABLE_RULES:
            problem = f"the rule set expands to more than {MAX_DURABLE_RULES} durable rules"
            raise InvalidInput(problem, field="rules")
        if {} in disjunction:
            break  # always true: no later rule can fire
    return CompiledVersion(keys, _shard(ordered, keys))


def _shard(
    ordered: list[tuple[tuple[Condition, ...], int]], keys: Sequence[MessageKey]
) -> tuple[Shard, ...]:
    """Chains in firing order cut into shards that fit durable-rules' limits (greedily)."""
    catch_all: tuple[tuple[Condition, ...], int] = (((FLAG, "eq", 1),), CATCH_ALL)
    shards: list[Shard] = []
    current: list[tuple[tuple[Condition, ...], int]] = []
    seen: set[tuple[Condition, ...]] = set()
    network = _Network(keys)
    network.add(catch_all[0])
    for chain, index in ordered:
        if chain in seen:
            continue  # the same chain of an earlier rule fires first
        network.add(chain)
        if not network.fits() or len(current) == MAX_SHARD_RULES:
            shards.append(Shard((*current, catch_all)))
            current, seen, network = [], set(), _Network(keys)
            network.add(catch_all[0])
            network.add(chain)
        current.append((chain, index))
        seen.add(chain)
    shards.append(Shard((*current, catch_all)))
    return tuple(shards)
