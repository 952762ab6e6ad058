"""Delayed outcomes and upkeep of the statistics.

A decision with no outcome after the scale's attribution window settles to the scale's default
result (DESIGN section 4), so that silence is counted as what it means. ``maintain`` does that in
batches and re-bases the decay epoch when it is due; ``nextbest settle`` runs it once, and every
worker of ``nextbest serve`` runs it in the background (``NEXTBEST_MAINTENANCE_SECONDS``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from engine.catalog import Catalog, load_catalog, rebase_if_due
from engine.models import Decision, DecisionOverride, Outcome
from engine.triples import Triple, store_triples
from experiments.monitor import update_experiments
from experiments.service import holding_experiments


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
    held = holding_experiments(session) if due else set()
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
            held_for=decision.experiment_key if decision.experiment_key in held else None,
        )
        for decision, delivered in due
    ]
    store_triples(session, catalog=catalog, triples=triples)
    return len(triples)


log = logging.getLogger("nextbest.maintenance")


@dataclass(frozen=True)
class Upkeep:
    settled: int
    rebased: bool
    experiments: list[str]
    """What the experiments' upkeep changed (experiments.monitor), one line each."""


def maintain(engine: Engine, *, now: dt.datetime, batch: int = 5000) -> Upkeep:
    """Settle every due decision (one transaction per ``batch``) and re-base the epoch if due.

    Several workers may run this at once: when two settle the same decision, the unique index on
    outcomes.decision_id stops the second, whose batch rolls back and is left to the winner.
    """
    settled = 0
    while True:
        try:
            with Session(engine, expire_on_commit=False) as session:
                done = settle_due(
                    session=session, catalog=load_catalog(session), now=now, limit=batch
                )
                session.commit()
        except (IntegrityError, OperationalError) as error:
            log.info("another worker is settling (%s); leaving it to them", type(error).__name__)
            break
        settled += done
        if done < batch:
            break
    with Session(engine) as session:
        rebased = rebase_if_due(session=session, now=now)
        session.commit()
    try:
        changes = update_experiments(engine, now=now)
    except (IntegrityError, OperationalError) as error:
        log.info("another worker is updating experiments (%s)", type(error).__name__)
        changes = []
    return Upkeep(settled=settled, rebased=rebased, experiments=changes)
