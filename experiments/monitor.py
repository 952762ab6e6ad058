"""The experiments' upkeep, run by every worker's maintenance loop (and ``nextbest settle``):
adaptive weights on their cadence, the guardrail metric, and the stopping rule.

Each running experiment is handled in its own transaction with its row locked (PostgreSQL) or the
database write lock held (SQLite), so two workers never both stop or re-weigh one experiment.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from engine import audit
from engine.catalog import load_catalog
from engine.models import utcnow
from experiments import allocation, stats
from experiments.evidence import Evidence, load_evidence
from experiments.models import Experiment, ExperimentAllocation
from experiments.schemas import ConcludeIn, StatusChangeIn
from experiments.service import change_status, conclude, record_allocation

__all__ = ["STOPPING_ACTOR", "Verdict", "judge", "update_experiments"]

STOPPING_ACTOR = "nextbest:stopping-rule"


@dataclass(frozen=True)
class Verdict:
    """What the stopping rule and the guardrail metric say of an experiment now."""

    summary: stats.ArmSummary
    counts: np.ndarray
    burned_in: bool
    leader: str
    decisive: bool
    stop_reason: str | None
    harmful: dict[str, float]
    """Arms the guardrail metric stops now, with P(harm)."""

    def as_dict(self, row: Experiment) -> dict[str, Any]:
        rule = row.stopping
        return {
            "rule": rule,
            "burned_in": self.burned_in,
            "leader": self.leader,
            "decisive": self.decisive,
            "stop_now": self.stop_reason is not None,
            "reason": self.stop_reason,
            "results": int(self.counts.sum()),
        }


def judge(
    row: Experiment, evidence: Evidence, now: dt.datetime, rng: np.random.Generator
) -> Verdict:
    """Apply the stopping rule and the guardrail metric to the evidence (no side effects)."""
    counts = evidence.counts()
    keys = evidence.arms
    control = keys.index(row.control) if row.control in keys else None
    summary = stats.summarize_arms(stats.value_draws(counts, evidence.net, rng), control)
    active = allocation.active_arms(row)
    per_arm = counts.sum(axis=1)
    burned_in = bool((per_arm[active] >= max(row.burn_in, 1)).all())
    p_best = np.where(active, summary.p_best, -1.0)
    lead = int(np.argmax(p_best))
    decisive = (
        burned_in
        and summary.p_best[lead] >= row.stopping["p_best"]
        and summary.expected_loss[lead] <= row.stopping["expected_loss"]
    )
    harmful: dict[str, float] = {}
    if row.guardrail is not None and control is not None:
        level = evidence.levels.index(row.guardrail["level"])
        harm = stats.harm_probability(counts, level, control, row.guardrail["margin"], rng)
        for a, key in enumerate(keys):
            if (
                active[a]
                and a != control
                and per_arm[a] >= max(row.burn_in, 1)
                and harm[a] >= row.guardrail["probability"]
            ):
                harmful[key] = round(float(harm[a]), 4)
    reason = None
    max_sample = row.stopping.get("max_sample")
    if decisive:
        reason = (
            f"{keys[lead]} is best with P(best) {summary.p_best[lead]:.3f} and expected loss "
            f"{summary.expected_loss[lead]:.3f}"
        )
    elif max_sample is not None and counts.sum() >= max_sample:
        reason = f"the maximum sample of {max_sample} results is reached"
    elif row.end_at is not None and now >= row.end_at:
        reason = f"the end date {row.end_at.isoformat()} is reached"
    elif int(active.sum()) - len(harmful) <= 1:
        reason = "every arm but one is stopped by the guardrail metric"
    return Verdict(summary, counts, burned_in, keys[lead], bool(decisive), reason, harmful)


def update_experiments(engine: Engine, now: dt.datetime | None = None, seed: int = 0) -> list[str]:
    """One pass over the running experiments; returns what changed, one line per change."""
    now = now or utcnow()
    with Session(engine) as session:
        keys = list(session.exec(select(Experiment.key).where(col(Experiment.status) == "running")))
    changes: list[str] = []
    for key in keys:
        with Session(engine) as session:
            changes.extend(_update_one(session, key, now, np.random.default_rng(seed)))
            session.commit()
    return changes


def _update_one(
    session: Session, key: str, now: dt.datetime, rng: np.random.Generator
) -> list[str]:
    statement = select(Experiment).where(col(Experiment.key) == key)
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update()
    row = session.exec(statement).first()
    if row is None or row.status != "running":
        return []
    if row.start_at is not None and now < row.start_at:
        return []
    catalog = load_catalog(session)
    evidence = load_evidence(session, catalog, row)
    verdict = judge(row, evidence, now, rng)
    changes = []
    if verdict.harmful:
        row.arm_status = {
            **row.arm_status,
            **{
                arm: {
                    "stopped_at": now.isoformat(),
                    "reason": f"P({row.guardrail['level']} share above control's"  # type: ignore[index]
                    f" + {row.guardrail['margin']}) = {p}",  # type: ignore[index]
                }
                for arm, p in verdict.harmful.items()
            },
        }
        audit.record(
            session,
            actor=STOPPING_ACTOR,
            action="stop_arm",
            entity="experiment",
            entity_id=row.key,
            before=None,
            after={"arms": sorted(verdict.harmful)},
        )
        changes.append(f"{row.key}: guardrail stopped {', '.join(sorted(verdict.harmful))}")
        _reweigh(session, row, allocation.initial_weights(row), "guardrail stopped an arm", now)
    if verdict.stop_reason is not None:
        if row.stopping["on_stop"] == "conclude":
            conclude(
                session=session,
                key=row.key,
                conclude_in=ConcludeIn(
                    decision="winner" if verdict.decisive else "none",
                    winner=verdict.leader if verdict.decisive else None,
                    note=f"Stopping rule: {verdict.stop_reason}.",
                ),
                actor=STOPPING_ACTOR,
            )
        else:
            change_status(
                session=session,
                key=row.key,
                action="pause",
                change=StatusChangeIn(reason=f"stopping rule: {verdict.stop_reason}"),
                actor=STOPPING_ACTOR,
                now=now,
            )
        changes.append(f"{row.key}: {row.status} ({verdict.stop_reason})")
        return changes
    if row.allocation == "adaptive" and verdict.burned_in and _due(session, row, now):
        _reweigh(
            session,
            row,
            allocation.weights_after(row, verdict.summary.p_best),
            "adaptive update",
            now,
        )
        changes.append(f"{row.key}: weights {row.weights}")
    return changes


def _due(session: Session, row: Experiment, now: dt.datetime) -> bool:
    last = session.exec(
        select(ExperimentAllocation.at)
        .where(col(ExperimentAllocation.experiment_key) == row.key)
        .order_by(col(ExperimentAllocation.at).desc())
        .limit(1)
    ).first()
    return last is None or (now - last).total_seconds() >= row.update_minutes * 60 - 1e-6


def _reweigh(
    session: Session, row: Experiment, weights: dict[str, float], reason: str, now: dt.datetime
) -> None:
    row.weights = weights
    row.updated_at = now
    session.add(row)
    record_allocation(session, row, weights, reason, now)
    session.flush()
