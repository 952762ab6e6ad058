"""Guardrails: a marketer's limits, enforced before the engine chooses (DESIGN section 6).

Kinds (each may carry a ``condition`` in the rule language: it then applies only to customers
who match it):

- ``forbid``: never choose ``experience`` (which may be the control).
- ``contact_limit``: at most ``limit`` offers (decisions whose experience is not a control) per
  customer per ``period_days``, on ``channel`` when one is named; when reached, every offer is
  suppressed and the control remains.
- ``cooldown``: for ``period_days`` after the customer declined an offer (of ``experience``, or
  of any experience), suppress that experience (or every offer).
- ``max_exposures``: suppress ``experience`` (or any experience) once the customer has ``limit``
  results with it.
- ``budget``: at most ``limit`` decisions choosing ``experience`` per ``period_days`` across all
  customers. Each worker counts from the database at most every BUDGET_RECOUNT_SECONDS and adds
  its own decisions in between, so concurrent workers may overshoot by what they decide within
  that interval.

A decision lists every suppressed candidate with the guardrail that suppressed it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from engine import audit
from engine.catalog import Catalog, bump_catalog
from engine.errors import InvalidInput, NotFound
from engine.models import Decision, DecisionReaction, Exposure, utcnow
from rules.language import Predicate, compile_predicate, parse_rule
from rules.models import Guardrail

KINDS = ("forbid", "contact_limit", "cooldown", "max_exposures", "budget")
BUDGET_RECOUNT_SECONDS = 2.0

# What each kind needs and accepts: (required fields, allowed fields).
_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "forbid": ({"experience"}, {"experience", "condition"}),
    "contact_limit": ({"limit", "period_days"}, {"limit", "period_days", "channel", "condition"}),
    "cooldown": ({"period_days"}, {"period_days", "experience", "condition"}),
    "max_exposures": ({"limit"}, {"limit", "experience", "condition"}),
    "budget": ({"experience", "limit", "period_days"}, {"experience", "limit", "period_days"}),
}


def create_guardrail(
    *, session: Session, catalog: Catalog, fields: Mapping[str, Any], actor: str
) -> Guardrail:
    """Validate ``fields`` for their kind (errors name the field) and store the guardrail."""
    kind = fields["kind"]
    required, allowed = _FIELDS[kind]
    names = ("experience", "condition", "channel", "limit", "period_days")
    given = {name for name in names if fields.get(name) is not None}
    missing, extra = sorted(required - given), sorted(given - allowed)
    if missing:
        raise InvalidInput(f"a {kind} guardrail needs {missing[0]}", field=missing[0])
    if extra:
        raise InvalidInput(f"a {kind} guardrail takes no {extra[0]}", field=extra[0])
    if fields.get("experience") is not None:
        catalog.experience(fields["experience"], field="experience")
    if fields.get("condition"):
        parse_rule(fields["condition"], catalog.specs, field="condition")
    row = Guardrail(
        kind=kind,
        name=fields["name"],
        experience_key=fields.get("experience"),
        condition=fields.get("condition"),
        channel=fields.get("channel"),
        limit=fields.get("limit"),
        period_days=fields.get("period_days"),
        created_at=utcnow(),
        created_by=actor,
    )
    session.add(row)
    bump_catalog(session)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="create",
        entity="guardrail",
        entity_id=str(row.id),
        before=None,
        after=public(row),
    )
    return row


def deactivate_guardrail(*, session: Session, guardrail_id: int, actor: str) -> Guardrail:
    row = get_guardrail(session=session, guardrail_id=guardrail_id)
    if row.active:
        row.active = False
        session.add(row)
        bump_catalog(session)
        session.flush()
        audit.record(
            session,
            actor=actor,
            action="deactivate",
            entity="guardrail",
            entity_id=str(row.id),
            before={"active": True},
            after={"active": False},
        )
    return row


def get_guardrail(*, session: Session, guardrail_id: int) -> Guardrail:
    row = session.get(Guardrail, guardrail_id)
    if row is None:
        raise NotFound(f"no guardrail {guardrail_id}", field="id")
    return row


def list_guardrails(*, session: Session, active: bool | None = None) -> list[Guardrail]:
    statement = select(Guardrail).order_by(col(Guardrail.id))
    if active is not None:
        statement = statement.where(col(Guardrail.active) == active)
    return list(session.exec(statement))


def public(row: Guardrail) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "name": row.name,
        "experience": row.experience_key,
        "condition": row.condition,
        "channel": row.channel,
        "limit": row.limit,
        "period_days": row.period_days,
        "active": row.active,
        "created_at": row.created_at,
        "created_by": row.created_by,
    }


# Enforcement -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    row: Guardrail
    applies: Predicate | None


class Guardrails:
    """The active guardrails of one catalog version, ready to enforce (one per worker)."""

    def __init__(self, catalog: Catalog, rows: Sequence[Guardrail]) -> None:
        self._catalog = catalog
        self._rules = [
            _Rule(row, compile_predicate(parse_rule(row.condition, catalog.specs)))
            if row.condition
            else _Rule(row, None)
            for row in rows
            if row.active
        ]
        self._controls = {k for k, info in catalog.experiences.items() if info.is_control}
        self._lock = threading.Lock()
        self._budget_counts: dict[int, tuple[float, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def suppressed(
        self,
        session: Session,
        *,
        customer_id: str,
        attributes: Mapping[str, Any],
        candidates: Sequence[str],
        channel: str | None,
        now: dt.datetime,
    ) -> dict[str, list[dict[str, Any]]]:
        """Candidate -> the guardrails that suppress it (absent: allowed)."""
        out: dict[str, list[dict[str, Any]]] = {}
        offers = [k for k in candidates if k not in self._controls]
        for rule in self._rules:
            row = rule.row
            if rule.applies is not None and not rule.applies(attributes):
                continue
            # A forbid may name the control too ("always act for these customers"); the
            # contact policies and budgets limit offers only.
            among = candidates if row.kind == "forbid" else offers
            hit = self._hits(session, row, customer_id, among, channel, now)
            for key in hit:
                out.setdefault(key, []).append(
                    {"guardrail_id": row.id, "name": row.name, "kind": row.kind}
                )
        return out

    def _hits(
        self,
        session: Session,
        row: Guardrail,
        customer_id: str,
        among: Sequence[str],
        channel: str | None,
        now: dt.datetime,
    ) -> list[str]:
        targets = [k for k in among if row.experience_key in (None, k)]
        if not targets:
            return []
        since = now - dt.timedelta(days=row.period_days or 0.0)
        if row.kind == "forbid":
            return targets
        if row.kind == "contact_limit":
            if row.channel is not None and channel != row.channel:
                return []
            statement = (
                select(func.count())
                .select_from(Decision)
                .where(
                    col(Decision.customer_id) == customer_id,
                    col(Decision.created_at) >= since,
                    col(Decision.experience_key).not_in(self._controls),
                )
            )
            if row.channel is not None:
                statement = statement.where(col(Decision.channel) == row.channel)
            return targets if session.exec(statement).one() >= (row.limit or 0) else []
        if row.kind == "cooldown":
            declines = (
                select(Decision.experience_key)
                .join(DecisionReaction, col(DecisionReaction.decision_id) == col(Decision.id))
                .where(
                    col(Decision.customer_id) == customer_id,
                    col(DecisionReaction.reaction) == "declined",
                    col(DecisionReaction.created_at) >= since,
                )
            )
            declined = set(session.exec(declines))
            if row.experience_key is None:
                return targets if declined else []
            return targets if row.experience_key in declined else []
        if row.kind == "max_exposures":
            counts = dict(
                session.exec(
                    select(Exposure.experience_key, Exposure.count).where(
                        col(Exposure.customer_id) == customer_id,
                        col(Exposure.experience_key).in_(targets),
                    )
                ).all()
            )
            return [k for k in targets if counts.get(k, 0) >= (row.limit or 0)]
        return targets if self._budget_used(session, row, since) >= (row.limit or 0) else []

    def _budget_used(self, session: Session, row: Guardrail, since: dt.datetime) -> int:
        assert row.id is not None
        with self._lock:
            cached = self._budget_counts.get(row.id)
        if cached is not None and time.monotonic() - cached[0] < BUDGET_RECOUNT_SECONDS:
            return cached[1]
        used = session.exec(
            select(func.count())
            .select_from(Decision)
            .where(
                col(Decision.experience_key) == row.experience_key,
                col(Decision.created_at) >= since,
            )
        ).one()
        with self._lock:
            self._budget_counts[row.id] = (time.monotonic(), used)
        return used

    def chose(self, experience: str) -> None:
        """This worker decided ``experience``: count it against budgets until the next recount."""
        with self._lock:
            for rule in self._rules:
                row = rule.row
                if row.kind == "budget" and row.experience_key == experience and row.id:
                    found = self._budget_counts.get(row.id)
                    if found is not None:
                        self._budget_counts[row.id] = (found[0], found[1] + 1)


__all__ = [
    "KINDS",
    "Guardrails",
    "create_guardrail",
    "deactivate_guardrail",
    "get_guardrail",
    "list_guardrails",
    "public",
]
