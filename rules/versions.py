"""Rule-set versions: compile, list, read, diff and activate (DESIGN section 6).

A version is immutable once compiled; activating one (or an older one: a rollback) is an audited
act that bumps the catalog version, so every worker picks the new active version up on its next
request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from engine import audit
from engine.catalog import Catalog, bump_catalog
from engine.errors import Conflict, NotFound
from engine.models import utcnow
from engine.runtime import Runtime
from experiments.promotion import promoted_rules
from rules.compiler import Compiled, Settings, compile_rules, markdown
from rules.models import RuleSetVersion


def compile_version(
    *, session: Session, runtime: Runtime, settings: Settings, actor: str
) -> RuleSetVersion:
    """Compile the current posterior into a new draft version."""
    catalog = runtime.catalog(session)
    catalog.require_scale()
    snapshot = runtime.stats(session, catalog)
    if not snapshot.tree.counts:
        raise Conflict("no results are logged yet: there is nothing to compile", field=None)
    compiled = compile_rules(
        session=session, catalog=catalog, snapshot=snapshot, settings=settings, title="Rule set"
    )
    compiled = _with_promoted(compiled, promoted_rules(session, catalog, settings.seed), catalog)
    row = RuleSetVersion(
        created_at=utcnow(),
        created_by=actor,
        settings={
            "budget": settings.budget,
            "min_support": settings.min_support,
            "seed": settings.seed,
            "catalog_version": catalog.version,
        },
        rules=compiled.rules,
        metrics=compiled.metrics,
        text="",
    )
    session.add(row)
    session.flush()
    row.text = compiled.text.replace("# Rule set", f"# Rule set version {row.version}", 1)
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="compile",
        entity="rule_set",
        entity_id=str(row.version),
        before=None,
        after={"version": row.version, "settings": row.settings, "rules": len(row.rules)},
    )
    return row


def _with_promoted(
    compiled: Compiled, promoted: list[dict[str, Any]], catalog: Catalog
) -> Compiled:
    """Concluded experiments' winners first (a marketer's decision outranks what the engine
    learned), then the compiled rules; ids and priorities follow the new order."""
    if not promoted:
        return compiled
    customers = compiled.metrics.get("customers") or 1.0
    rules = []
    for priority, rule in enumerate([*promoted, *compiled.rules]):
        rule = {**rule, "rule_id": f"r{priority + 1:02d}", "priority": priority}
        rule.setdefault("traffic_share", round(rule["traffic"] / customers, 4))
        rules.append(rule)
    metrics = {
        **compiled.metrics,
        "rules": len(rules),
        "promoted": [rule["experiment"]["key"] for rule in promoted],
    }
    names = {key: info.name for key, info in catalog.experiences.items()}
    return Compiled(rules=rules, metrics=metrics, text=markdown("Rule set", rules, metrics, names))


def list_versions(*, session: Session, limit: int, before: int | None) -> list[RuleSetVersion]:
    """Newest first; ``before`` pages back."""
    statement = select(RuleSetVersion).order_by(col(RuleSetVersion.version).desc()).limit(limit)
    if before is not None:
        statement = statement.where(col(RuleSetVersion.version) < before)
    return list(session.exec(statement))


def get_version(*, session: Session, version: int, field: str = "version") -> RuleSetVersion:
    row = session.get(RuleSetVersion, version)
    if row is None:
        raise NotFound(f"no rule-set version {version}", field=field)
    return row


def active_version(session: Session) -> RuleSetVersion | None:
    return session.exec(select(RuleSetVersion).where(col(RuleSetVersion.active))).first()


def activate(*, session: Session, version: int, actor: str) -> RuleSetVersion:
    """Make ``version`` the one decisions use (an older one: a rollback)."""
    row = get_version(session=session, version=version)
    bump_catalog(session)  # first: serialises concurrent activations
    before = active_version(session)
    session.execute(update(RuleSetVersion).where(col(RuleSetVersion.active)).values(active=False))
    session.refresh(row)
    row.active, row.activated_at, row.activated_by = True, utcnow(), actor
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="activate",
        entity="rule_set",
        entity_id=str(version),
        before={"active": before.version if before else None},
        after={"active": version},
    )
    return row


def diff(a: RuleSetVersion, b: RuleSetVersion) -> dict[str, Any]:
    """What changed from version ``a`` to ``b``: rules are matched by their condition."""
    before = _by_condition(a.rules)
    after = _by_condition(b.rules)
    changed = []
    for condition in sorted(set(before) & set(after)):
        old, new = before[condition], after[condition]
        if _recommendation(old) != _recommendation(new):
            changed.append({"condition": condition, "before": old, "after": new})
    return {
        "from": a.version,
        "to": b.version,
        "added": [after[c] for c in sorted(set(after) - set(before))],
        "removed": [before[c] for c in sorted(set(before) - set(after))],
        "changed": changed,
        "metrics": {"before": a.metrics, "after": b.metrics},
    }


def _by_condition(rules: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {rule["condition_text"]: rule for rule in rules}


def _recommendation(rule: Mapping[str, Any]) -> tuple[Any, ...]:
    return (rule["experience"], tuple(rule["contenders"]))
