"""Experiment definitions and their lifecycle: draft, running, paused, stopped, concluded.

Only drafts are edited. Starting, pausing, stopping and concluding are the only changes to an
experiment that has run; each is audited and kept in the experiment's history. Concluding records
the marketer's decision; for an isolated experiment it also releases the results it held back,
which then train the main policy (engine.stats counts them from then on).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func
from sqlmodel import Session, col, select

from engine import audit
from engine.catalog import Catalog, load_catalog
from engine.errors import Conflict, InvalidInput, NotFound
from engine.models import Decision, Outcome, utcnow
from engine.stats import apply_increments, facts_from_outcomes, increments
from experiments import allocation
from experiments.models import Experiment, ExperimentAllocation
from experiments.schemas import (
    ConcludeIn,
    ExperimentIn,
    ExperimentStatus,
    ExperimentUpdate,
    StatusChangeIn,
)
from rules.language import parse_rule

__all__ = [
    "TRANSITIONS",
    "change_status",
    "conclude",
    "create_experiment",
    "get_experiment",
    "holding_experiments",
    "list_experiments",
    "record_allocation",
    "update_experiment",
]

Action = str
TRANSITIONS: dict[Action, tuple[tuple[ExperimentStatus, ...], ExperimentStatus]] = {
    "start": (("draft", "paused"), "running"),
    "pause": (("running",), "paused"),
    "stop": (("running", "paused"), "stopped"),
    "conclude": (("running", "paused", "stopped"), "concluded"),
}
"""action -> (statuses it may start from, status it leads to)."""

_DEFINITION = (
    "name",
    "hypothesis",
    "eligibility",
    "arms",
    "allocation",
    "holdout_share",
    "min_share",
    "burn_in",
    "update_minutes",
    "priority",
    "start_at",
    "end_at",
    "stopping",
    "guardrail",
    "isolate",
)


def create_experiment(*, session: Session, experiment_in: ExperimentIn, actor: str) -> Experiment:
    """Store a new draft after checking it against the catalog."""
    if session.get(Experiment, experiment_in.key) is not None:
        raise Conflict(f"experiment {experiment_in.key!r} exists already", field="key")
    fields = experiment_in.model_dump(mode="python")
    catalog = load_catalog(session)
    _check(catalog, fields)
    now = utcnow()
    row = Experiment(
        **_stored(fields),
        key=experiment_in.key,
        status="draft",
        weights={},
        arm_status={},
        history=[{"status": "draft", "at": now.isoformat(), "by": actor, "reason": None}],
        created_at=now,
        created_by=actor,
        updated_at=now,
    )
    row.control = control_arm(row, catalog)
    row.weights = planned_weights(row)
    session.add(row)
    audit.record(
        session,
        actor=actor,
        action="create",
        entity="experiment",
        entity_id=row.key,
        before=None,
        after=definition(row),
    )
    session.flush()
    return row


def update_experiment(
    *, session: Session, key: str, experiment_update: ExperimentUpdate, actor: str
) -> Experiment:
    """Change a draft; an experiment that has started changes only its status."""
    row = get_experiment(session=session, key=key)
    if row.status != "draft":
        raise Conflict(
            f"experiment {key!r} is {row.status}: only drafts are edited; pause, stop or "
            "conclude it, or create a new experiment",
            field="status",
        )
    before = definition(row)
    given = experiment_update.model_dump(mode="python", exclude_unset=True)
    merged = {**before, **given}
    # The merged definition must be valid as a whole (weights against allocation, dates).
    try:
        checked = ExperimentIn.model_validate({"key": key, **_public_fields(merged)})
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(
            f"{field}: {first['msg'].removeprefix('Value error, ')} (with this change)",
            field=field,
        ) from None
    fields = checked.model_dump(mode="python")
    catalog = load_catalog(session)
    _check(catalog, fields)
    for name, value in _stored(fields).items():
        setattr(row, name, value)
    row.control = control_arm(row, catalog)
    row.weights = planned_weights(row)
    row.updated_at = utcnow()
    session.add(row)
    audit.record(
        session,
        actor=actor,
        action="update",
        entity="experiment",
        entity_id=key,
        before=before,
        after=definition(row),
    )
    session.flush()
    return row


def get_experiment(*, session: Session, key: str) -> Experiment:
    row = session.get(Experiment, key)
    if row is None:
        raise NotFound(f"no experiment {key!r}", field="key")
    return row


def list_experiments(
    *, session: Session, status: str | None, limit: int, after: str | None
) -> list[Experiment]:
    """By key; ``after`` is the cursor (the last key of the previous page)."""
    statement = select(Experiment).order_by(col(Experiment.key)).limit(limit)
    if status is not None:
        statement = statement.where(col(Experiment.status) == status)
    if after is not None:
        statement = statement.where(col(Experiment.key) > after)
    return list(session.exec(statement))


def change_status(
    *,
    session: Session,
    key: str,
    action: Action,
    change: StatusChangeIn | None,
    actor: str,
    now: dt.datetime | None = None,
) -> Experiment:
    """start, pause or stop (conclude has its own function: it records a decision)."""
    row = _locked(session, key)
    now = now or utcnow()
    _transition(session, row, action, actor, now, change.reason if change else None)
    if action == "start":
        if row.end_at is not None and row.end_at <= now:
            raise Conflict(
                f"experiment {key!r} ended at {row.end_at.isoformat()}; set a later end_at "
                "while it is a draft, or create a new experiment",
                field="end_at",
            )
        _check(load_catalog(session), definition(row), starting=True)
        if _first_start(row):
            record_allocation(session, row, row.weights, "start", now)
    session.add(row)
    session.flush()
    return row


def conclude(*, session: Session, key: str, conclude_in: ConcludeIn, actor: str) -> Experiment:
    """Record the marketer's decision; release held-back results into the main policy."""
    row = _locked(session, key)
    catalog = load_catalog(session)
    arms = arm_keys(row)
    if conclude_in.winner is not None and conclude_in.winner not in arms:
        raise InvalidInput(
            f"winner {conclude_in.winner!r} is not an arm; arms: {', '.join(arms)}",
            field="winner",
        )
    for i, winner in enumerate(conclude_in.segment_winners or []):
        if winner.experience not in arms:
            raise InvalidInput(
                f"{winner.experience!r} is not an arm; arms: {', '.join(arms)}",
                field=f"segment_winners.{i}.experience",
            )
        parse_rule(winner.where, catalog.specs, field=f"segment_winners.{i}.where")
    now = utcnow()
    row.conclusion = {
        "decision": conclude_in.decision,
        "winner": conclude_in.winner,
        "segment_winners": [w.model_dump() for w in conclude_in.segment_winners or []],
        "note": conclude_in.note,
        "promote": conclude_in.promote,
        "by": actor,
        "at": now.isoformat(),
    }
    _transition(session, row, "conclude", actor, now, conclude_in.note)
    if row.isolate and row.released_at is None:
        _release(session, catalog, row.key)
        row.released_at = now
    session.add(row)
    session.flush()
    return row


def record_allocation(
    session: Session, row: Experiment, weights: Mapping[str, float], reason: str, at: dt.datetime
) -> None:
    """Remember the allocation in force from ``at`` (for the sample-ratio test and the plot)."""
    session.add(
        ExperimentAllocation(experiment_key=row.key, at=at, weights=dict(weights), reason=reason)
    )


def arm_keys(row: Experiment) -> list[str]:
    return [arm["experience"] for arm in row.arms]


def control_arm(row: Experiment, catalog: Catalog) -> str | None:
    """The arm that is the catalog's control experience ("do nothing"), if any."""
    for key in arm_keys(row):
        info = catalog.experiences.get(key)
        if info is not None and info.is_control:
            return key
    return None


def planned_weights(row: Experiment) -> dict[str, float]:
    """The allocation before any result: the fixed weights, or an equal split (the burn-in of an
    adaptive experiment), each with the holdout added to control."""
    return allocation.initial_weights(row)


def definition(row: Experiment) -> dict[str, Any]:
    """The marketer's definition as stored (what the audit trail shows before and after)."""
    return {name: getattr(row, name) for name in _DEFINITION}


# Internals -------------------------------------------------------------------------------------


def _locked(session: Session, key: str) -> Experiment:
    statement = select(Experiment).where(col(Experiment.key) == key)
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update()
    row = session.exec(statement).first()
    if row is None:
        raise NotFound(f"no experiment {key!r}", field="key")
    return row


def _transition(
    session: Session,
    row: Experiment,
    action: Action,
    actor: str,
    now: dt.datetime,
    reason: str | None,
) -> None:
    sources, target = TRANSITIONS[action]
    if row.status not in sources:
        raise Conflict(
            f"cannot {action} experiment {row.key!r}: it is {row.status}; {action} applies to "
            f"{' or '.join(sources)} experiments",
            field="status",
        )
    before = row.status
    row.status = target
    row.history = [
        *row.history,
        {"status": target, "at": now.isoformat(), "by": actor, "reason": reason},
    ]
    row.updated_at = now
    audit.record(
        session,
        actor=actor,
        action=action,
        entity="experiment",
        entity_id=row.key,
        before={"status": before},
        after={"status": row.status, "conclusion": row.conclusion},
    )


def _first_start(row: Experiment) -> bool:
    return sum(1 for h in row.history if h["status"] == "running") == 1


def _stored(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The definition fields as the row keeps them (JSON for arms, stopping and guardrail)."""
    return {name: fields[name] for name in _DEFINITION}


def _public_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: fields[name] for name in _DEFINITION}


def _check(catalog: Catalog, fields: Mapping[str, Any], *, starting: bool = False) -> None:
    """Checks that need the catalog: the arms, control, the guardrail level, eligibility."""
    catalog.require_scale()
    arms = [arm["experience"] for arm in fields["arms"]]
    controls = []
    for i, key in enumerate(arms):
        info = catalog.experience(key, field=f"arms.{i}.experience")
        if not info.active:
            raise InvalidInput(
                f"experience {key!r} is inactive; activate it or choose another arm",
                field=f"arms.{i}.experience",
            )
        if info.is_control:
            controls.append(key)
    if len(controls) > 1:
        raise InvalidInput(
            f"at most one arm may be a control experience; got {', '.join(controls)}",
            field="arms",
        )
    if fields["holdout_share"] > 0 and not controls:
        raise InvalidInput(
            "holdout_share needs a control arm (an experience with is_control) to hold out on",
            field="holdout_share",
        )
    guardrail = fields.get("guardrail")
    if guardrail is not None:
        if not controls:
            raise InvalidInput(
                "the guardrail metric compares arms with the control arm; add one",
                field="guardrail",
            )
        catalog.result_index(guardrail["level"], field="guardrail.level")
    if fields.get("eligibility"):
        parse_rule(fields["eligibility"], catalog.specs, field="eligibility")
    if not starting and fields.get("end_at") is not None and fields["end_at"] <= utcnow():
        raise InvalidInput("end_at is in the past", field="end_at")


def _release(session: Session, catalog: Catalog, key: str) -> int:
    """Add the results this experiment held back to the cell statistics (one transaction)."""
    held = select(Outcome).where(col(Outcome.held_for) == key).order_by(col(Outcome.id))
    rows = list(session.exec(held))
    if rows:
        apply_increments(
            session,
            increments(
                facts_from_outcomes(catalog, rows),
                epoch=catalog.epoch,
                half_life_days=catalog.half_life_days,
            ),
        )
    return len(rows)


def holding_experiments(session: Session) -> set[str]:
    """Isolated experiments that hold their results back from the cells (not concluded yet)."""
    rows = session.exec(
        select(Experiment.key).where(
            col(Experiment.isolate).is_(True), col(Experiment.released_at).is_(None)
        )
    )
    return set(rows)


def assigned_counts(session: Session, key: str) -> dict[str, int]:
    """Decisions per arm so far."""
    rows = session.execute(
        select(Decision.arm, func.count())
        .where(col(Decision.experiment_key) == key)
        .group_by(col(Decision.arm))
    )
    return {arm: int(n) for arm, n in rows.all() if arm is not None}
