"""Assignment at decision time: the running experiments as a worker holds them, and the arm an
eligible customer gets.

A customer is in at most one running experiment: the one they are already enrolled in (their
last experiment decision names it), else the first by priority (highest first, then the earliest
started) whose eligibility holds and whose arms are all open to them (eligible and not
suppressed by a guardrail). A customer for whom some arm is closed stays with the main policy,
so no arm gets a filtered population.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlmodel
from sqlalchemy import Engine, bindparam, select
from sqlmodel import Session, col

from engine import prepared
from engine.catalog import Catalog
from engine.models import Decision
from experiments.allocation import pick, unit
from experiments.models import Experiment
from rules.language import Predicate, compile_predicate, parse_rule

__all__ = ["Assignment", "RunningExperiments", "enrolments", "load_running"]


@dataclass(frozen=True)
class Assignment:
    experiment_key: str
    arm: str
    propensity: float
    """The arm's share of the allocation in force (the holdout included for control)."""


@dataclass(frozen=True)
class _Running:
    key: str
    arms: tuple[str, ...]
    open_arms: tuple[str, ...]
    weights: Mapping[str, float]
    eligibility: Predicate | None
    start_at: dt.datetime | None
    end_at: dt.datetime | None
    isolate: bool


@dataclass(frozen=True)
class RunningExperiments:
    """The running experiments in priority order, as loaded at ``loaded_at``."""

    experiments: tuple[_Running, ...]
    loaded_at: float

    def __bool__(self) -> bool:
        return bool(self.experiments)

    def assign(
        self,
        *,
        customer_id: str,
        attributes: Mapping[str, object],
        candidates: Sequence[str],
        enrolled: Mapping[str, str],
        now: dt.datetime,
    ) -> Assignment | None:
        """The customer's experiment and arm, or None (the main policy decides).

        enrolled: experiment key -> the arm of the customer's last decision in it.
        """
        open_now = set(candidates)
        live = [e for e in self.experiments if _live(e, now)]
        mine = next((e for e in live if e.key in enrolled), None)
        for experiment in [mine] if mine is not None else live:
            if experiment.eligibility is not None and not experiment.eligibility(attributes):
                continue
            if not open_now.issuperset(experiment.open_arms):
                continue
            arm = enrolled.get(experiment.key)
            if arm not in experiment.open_arms:
                arm = pick(experiment.arms, experiment.weights, unit(experiment.key, customer_id))
            return Assignment(experiment.key, arm, experiment.weights[arm])
        return None


def _live(experiment: _Running, now: dt.datetime) -> bool:
    return (experiment.start_at is None or experiment.start_at <= now) and (
        experiment.end_at is None or now < experiment.end_at
    )


def load_running(session: Session, catalog: Catalog, loaded_at: float) -> RunningExperiments:
    rows = session.exec(
        sqlmodel.select(Experiment).where(col(Experiment.status) == "running")
    ).all()
    ordered = sorted(rows, key=lambda r: (-r.priority, _started(r), r.key))
    return RunningExperiments(
        experiments=tuple(
            _Running(
                key=row.key,
                arms=tuple(arm["experience"] for arm in row.arms),
                open_arms=tuple(
                    arm["experience"] for arm in row.arms if arm["experience"] not in row.arm_status
                ),
                weights=dict(row.weights),
                eligibility=compile_predicate(parse_rule(row.eligibility, catalog.specs))
                if row.eligibility
                else None,
                start_at=row.start_at,
                end_at=row.end_at,
                isolate=row.isolate,
            )
            for row in ordered
        ),
        loaded_at=loaded_at,
    )


def _started(row: Experiment) -> str:
    starts = [h["at"] for h in row.history if h["status"] == "running"]
    return starts[0] if starts else ""


def enrolments(engine: Engine, customer_id: str, keys: Sequence[str]) -> dict[str, str]:
    """experiment key -> arm of the customer's most recent decision in each of ``keys``.

    The hot path of a decision while experiments run: one lookup per running experiment through
    ix_decisions_customer_experiment, compiled once per dialect (engine.prepared), outside any
    transaction (no write lock on SQLite), in one round trip on PostgreSQL. A decision usually
    sends these lookups with its read of the customer (engine.decisions.read_state)."""
    return enrolled_arms(
        keys, prepared.read_all(engine, enrolment_queries(engine, customer_id, keys))
    )


def enrolment_queries(
    engine: Engine, customer_id: str, keys: Sequence[str]
) -> list[prepared.Query]:
    """The lookups ``enrolments`` runs, one per key, for engine.prepared.read_all."""
    statement = prepared.Prepared.of(_ENROLMENT, engine)
    return [
        (statement, statement.parameters({"customer_id": customer_id, "experiment_key": key}))
        for key in keys
    ]


def enrolled_arms(
    keys: Sequence[str], results: Sequence[Sequence[tuple[Any, ...]]]
) -> dict[str, str]:
    """``enrolments``' answer from the rows of its lookups (in the order of ``keys``)."""
    return {
        key: rows[0][0]
        for key, rows in zip(keys, results, strict=True)
        if rows and rows[0][0] is not None
    }


_ENROLMENT = (
    select(col(Decision.arm))
    .where(col(Decision.customer_id) == bindparam("customer_id"))
    .where(col(Decision.experiment_key) == bindparam("experiment_key"))
    .order_by(col(Decision.created_at).desc())
    .limit(1)
)
