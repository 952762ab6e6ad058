"""Delayed outcomes: a decision with no outcome after the scale's attribution window settles to
the scale's default result (DESIGN section 4), so that silence is counted as what it means."""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session, col, select

from engine.catalog import Catalog
from engine.models import Decision, DecisionOverride, Outcome
from engine.triples import Triple, store_triples


def settle_due(*, session: Session, catalog: Catalog, now: dt.datetime, limit: int = 5000) -> int:
    """Record the default result for up to ``limit`` decisions past their attribution window.

    The result counts at the end of the window and trains the experience delivered (the agent's
    override when there is one). Returns how many decisions were settled.
    """
    scale = catalog.scale
    if scale is None:
        return 0
    window = dt.timedelta(days=scale.attribution_days)
    due = session.exec(
        select(Decision, DecisionOverride.experience_key)
        .outerjoin(DecisionOverride, col(DecisionOverride.decision_id) == col(Decision.id))
        .outerjoin(Outcome, col(Outcome.decision_id) == col(Decision.id))
        .where(col(Outcome.id).is_(None), col(Decision.created_at) < now - window)
        .order_by(col(Decision.created_at), col(Decision.id))
        .limit(limit)
    ).all()
    triples = [
        Triple(
            customer_id=decision.customer_id,
            experience_key=delivered or decision.experience_key,
            result=scale.default_result,
            occurred_at=decision.created_at + window,
            value=None,
            cost=None,
            attributes=decision.attributes,
            decision_id=decision.id,
            source="settled",
        )
        for decision, delivered in due
    ]
    store_triples(session, catalog=catalog, triples=triples)
    return len(triples)
