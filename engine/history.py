"""A customer's history as an agent reads it: the last decisions with what happened after each.

Each decision comes with the engine's pick and its logged estimate, the agent's override (with
its note and reason code), the customer's reaction and the outcome, and which experience was
delivered. Results without a decision (historical triples) are summarised by the exposure counts
per experience: the results table is not indexed by customer (storing a result stays cheap), so
a profile never scans it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlmodel import Session, col, select

from engine.customers import get_customer
from engine.models import Decision, DecisionOverride, DecisionReaction, Exposure, Outcome


def customer_history(*, session: Session, customer_id: str, limit: int = 20) -> dict[str, Any]:
    """The customer's ``limit`` latest decisions, newest first, and results per experience."""
    customer = get_customer(session=session, customer_id=customer_id)
    decisions = list(
        session.exec(
            select(Decision)
            .where(col(Decision.customer_id) == customer_id)
            .order_by(col(Decision.created_at).desc(), col(Decision.id))
            .limit(limit)
        )
    )
    ids = [d.id for d in decisions]
    overrides = {
        row.decision_id: row
        for row in session.exec(
            select(DecisionOverride).where(col(DecisionOverride.decision_id).in_(ids))
        )
    }
    reactions = {
        row.decision_id: row
        for row in session.exec(
            select(DecisionReaction).where(col(DecisionReaction.decision_id).in_(ids))
        )
    }
    outcomes = {
        row.decision_id: row
        for row in session.exec(select(Outcome).where(col(Outcome.decision_id).in_(ids)))
    }
    exposures = session.exec(
        select(Exposure.experience_key, Exposure.count)
        .where(col(Exposure.customer_id) == customer_id)
        .order_by(col(Exposure.experience_key))
    ).all()
    return {
        "customer_id": customer.id,
        "name": customer.name,
        "last_contact": decisions[0].created_at if decisions else None,
        "decisions": [
            _entry(d, overrides.get(d.id), reactions.get(d.id), outcomes.get(d.id))
            for d in decisions
        ],
        "results_by_experience": {str(key): int(count) for key, count in exposures},
    }


def _entry(
    decision: Decision,
    override: DecisionOverride | None,
    reaction: DecisionReaction | None,
    outcome: Outcome | None,
) -> dict[str, Any]:
    estimate = _estimate(decision.candidates, decision.experience_key)
    return {
        "decision_id": decision.id,
        "created_at": decision.created_at,
        "channel": decision.channel,
        "agent_id": decision.agent_id,
        "experience": decision.experience_key,
        "source": decision.source,
        "propensity": decision.propensity,
        "rule_id": decision.rule_id,
        "ruleset_version": decision.ruleset_version,
        "expected_net_value": estimate.get("expected_net_value"),
        "ci90": estimate.get("ci90"),
        "delivered": override.experience_key if override else decision.experience_key,
        "override": None
        if override is None
        else {
            "experience": override.experience_key,
            "note": override.note,
            "reason_code": override.reason_code,
            "agent_id": override.agent_id,
            "created_at": override.created_at,
        },
        "reaction": None
        if reaction is None
        else {"reaction": reaction.reaction, "created_at": reaction.created_at},
        "outcome": None
        if outcome is None
        else {
            "result": outcome.result,
            "experience": outcome.experience_key,
            "value": outcome.value,
            "cost": outcome.cost,
            "occurred_at": outcome.occurred_at,
            "settled": outcome.source == "settled",
        },
    }


def _estimate(candidates: Sequence[Mapping[str, Any]], experience: str) -> Mapping[str, Any]:
    return next((c for c in candidates if c["experience"] == experience), {})


__all__ = ["customer_history"]
