"""A rule-set version as a worker evaluates it: at decision time (the active one) and when a
version is evaluated off-policy (any one)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from rules.compiler import sentence
from rules.language import Predicate, compile_predicate, from_json
from rules.models import RuleSetVersion
from rules.versions import active_version


@dataclass(frozen=True)
class ActiveRules:
    """Rules in evaluation order with their compiled conditions; the first that holds fires."""

    version: int
    rules: tuple[Mapping[str, Any], ...]
    predicates: tuple[Predicate, ...]
    texts: tuple[str, ...]

    def first(self, attributes: Mapping[str, Any]) -> int | None:
        """Index of the rule that fires for a customer's stored attributes."""
        for i, holds in enumerate(self.predicates):
            if holds(attributes):
                return i
        return None


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
