"""What happens after a decision and before its outcome: an agent's override, the customer's
immediate reaction. Both are appended next to the decision, never written over it, so the
engine's choice and the agent's stay side by side; the outcome then trains the experience that
was actually delivered (engine.decisions.record_outcome)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from engine import audit
from engine.catalog import Catalog
from engine.errors import Conflict, InvalidInput, NotFound
from engine.models import Decision, DecisionOverride, DecisionReaction, Outcome
from engine.schemas import OverrideIn, OverridePublic, ReactionIn, ReactionPublic


def _decision(session: Session, decision_id: str) -> Decision:
    decision = session.get(Decision, decision_id)
    if decision is None:
        raise NotFound(f"no decision {decision_id!r}", field="decision_id")
    return decision


def _has_outcome(session: Session, decision_id: str) -> bool:
    query = select(Outcome.id).where(col(Outcome.decision_id) == decision_id)
    return session.exec(query).first() is not None


def override_decision(
    *, session: Session, catalog: Catalog, decision_id: str, override_in: OverrideIn, actor: str
) -> tuple[OverridePublic, bool]:
    """Record the agent's choice. Returns (override, created); a same-body repeat is a no-op."""
    decision = _decision(session, decision_id)
    info = catalog.experience(override_in.experience)
    if not info.active:
        raise InvalidInput(f"experience {info.key!r} is not active", field="experience")
    existing = session.get(DecisionOverride, decision_id)
    if existing is not None:
        same = (existing.experience_key, existing.note, existing.reason_code) == (
            override_in.experience,
            override_in.note,
            override_in.reason_code,
        )
        if same:
            return _public(existing, decision), False
        raise Conflict(
            f"decision {decision_id!r} was overridden already (to {existing.experience_key!r})",
            field="decision_id",
        )
    if _has_outcome(session, decision_id):
        raise Conflict(
            f"decision {decision_id!r} has its outcome already; it can no longer be overridden",
            field="decision_id",
        )
    row = DecisionOverride(
        decision_id=decision_id,
        experience_key=override_in.experience,
        note=override_in.note,
        reason_code=override_in.reason_code,
        agent_id=override_in.agent_id or decision.agent_id,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="override",
        entity="decision",
        entity_id=decision_id,
        before={"experience": decision.experience_key},
        after={
            "experience": row.experience_key,
            "note": row.note,
            "reason_code": row.reason_code,
            "agent_id": row.agent_id,
        },
    )
    return _public(row, decision), True


def _public(row: DecisionOverride, decision: Decision) -> OverridePublic:
    return OverridePublic(
        decision_id=row.decision_id,
        engine_experience=decision.experience_key,
        experience=row.experience_key,
        note=row.note,
        reason_code=row.reason_code,
        agent_id=row.agent_id,
        created_at=row.created_at,
    )


def record_reaction(
    *, session: Session, decision_id: str, reaction_in: ReactionIn
) -> tuple[ReactionPublic, bool]:
    """The customer's immediate answer (accepted or declined), once per decision."""
    _decision(session, decision_id)
    existing = session.exec(
        select(DecisionReaction).where(col(DecisionReaction.decision_id) == decision_id)
    ).first()
    if existing is not None:
        if existing.reaction == reaction_in.reaction:
            return _reaction_public(existing), False
        raise Conflict(
            f"decision {decision_id!r} has a reaction already ({existing.reaction})",
            field="reaction",
        )
    row = DecisionReaction(decision_id=decision_id, reaction=reaction_in.reaction)
    session.add(row)
    session.flush()
    return _reaction_public(row), True


def _reaction_public(row: DecisionReaction) -> ReactionPublic:
    return ReactionPublic(
        decision_id=row.decision_id,
        reaction=row.reaction,
        created_at=row.created_at,
    )
