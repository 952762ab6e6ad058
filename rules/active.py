"""A rule-set version as a worker evaluates it: at decision time (the active one) and when a
version is evaluated off-policy (any one)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from rules.compiler import sentence
from rules.language import Predicate, compile_predicate, from_json
from rules.models import RuleSetVersion
from rules.versions import active_version

if TYPE_CHECKING:
    from rules.runtime import RuleRuntime, RuleSpec


@dataclass(frozen=True)
class ActiveRules:
    """Rules in evaluation order with their compiled conditions; the first that holds fires.

    With a ``runtime`` running this version (the worker's durable-rules host, rules.runtime),
    durable-rules answers; else, or if the runtime has moved on to another version meanwhile, the
    Python evaluator compiled from the same AST.
    """

    version: int
    rules: tuple[Mapping[str, Any], ...]
    predicates: tuple[Predicate, ...]
    texts: tuple[str, ...]
    runtime: RuleRuntime | None = None

    def first(self, attributes: Mapping[str, Any]) -> int | None:
        """Index of the rule that fires for a customer's stored attributes."""
        if self.runtime is not None:
            fired = self.runtime.evaluate(attributes)
            if fired is None and self.runtime.active_version == self.version:
                return None
            if fired is not None and fired.version == self.version:
                return self._index[fired.rule_id]
        for i, holds in enumerate(self.predicates):
            if holds(attributes):
                return i
        return None

    @cached_property
    def _index(self) -> dict[str, int]:
        return {rule["rule_id"]: i for i, rule in enumerate(self.rules)}

    def specs(self) -> list[RuleSpec]:
        """The version as the durable-rules runtime takes it."""
        from rules.runtime import RuleSpec

        return [
            RuleSpec(rule["rule_id"], rule["priority"], from_json(rule["condition"]))
            for rule in self.rules
        ]


def load_active(session: Session, names: Mapping[str, str]) -> ActiveRules | None:
    row = active_version(session)
    return None if row is None else _ready(row, names)


def load_version(session: Session, version: int, names: Mapping[str, str]) -> ActiveRules | None:
    """Any version (draft, active or old), ready to evaluate; None when it does not exist."""
    row = session.get(RuleSetVersion, version)
    return None if row is None else _ready(row, names)


def _ready(row: RuleSetVersion, names: Mapping[str, str]) -> ActiveRules:
    assert row.version is not None
    rules = tuple(row.rules)
    return ActiveRules(
        version=row.version,
        rules=rules,
        predicates=tuple(compile_predicate(from_json(rule["condition"])) for rule in rules),
        texts=tuple(sentence(rule, names) for rule in rules),
    )
