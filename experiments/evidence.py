"""What an experiment has gathered: its decisions, their results and what each result was worth.

Analysis is by assigned arm (intention to treat): an agent's override of an experiment decision
stays in the arm the customer was assigned to, so the comparison stays randomised.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlmodel import Session, col

from engine.catalog import Catalog
from engine.models import Decision, Outcome
from engine.money import cost_by_level, level_values
from experiments.models import Experiment, ExperimentAllocation

__all__ = ["Evidence", "load_evidence"]


@dataclass(frozen=True)
class Evidence:
    """One experiment's log as arrays over its decisions (shape (D,)) in time order.

    arm: arm index; enrolment: the customer's first decision in the experiment; level: result
    level index, -1 while no result is in; realised: the result's net value (realised value and
    cost where the outcome reported them, else the declared ones), NaN without a result.
    net: mean net value per arm and level over the arm's decisions, shape (A, L).
    weights: the allocation in force at each decision, shape (D, A).
    """

    arms: list[str]
    levels: list[str]
    created_at: list[dt.datetime]
    customers: list[str]
    arm: np.ndarray
    enrolment: np.ndarray
    level: np.ndarray
    realised: np.ndarray
    net: np.ndarray
    weights: np.ndarray

    def counts(self) -> np.ndarray:
        """Results per arm and level, shape (A, L)."""
        done = self.level >= 0
        counts = np.zeros((len(self.arms), len(self.levels)))
        np.add.at(counts, (self.arm[done], self.level[done]), 1.0)
        return counts


def load_evidence(session: Session, catalog: Catalog, row: Experiment) -> Evidence:
    scale = catalog.require_scale()
    arms = [arm["experience"] for arm in row.arms]
    labels = list(scale.labels)
    statement = (
        select(
            col(Decision.customer_id),
            col(Decision.created_at),
            col(Decision.arm),
            col(Decision.attributes),
            col(Decision.overrides),
            col(Outcome.result),
            col(Outcome.value),
            col(Outcome.cost),
            col(Outcome.experience_key),
        )
        .outerjoin(Outcome, col(Outcome.decision_id) == col(Decision.id))
        .where(col(Decision.experiment_key) == row.key)
        .order_by(col(Decision.created_at), col(Decision.id))
    )
    records = session.execute(statement).all()
    n = len(records)
    arm = np.zeros(n, dtype=np.int64)
    level = np.full(n, -1, dtype=np.int64)
    realised = np.full(n, np.nan)
    enrolment = np.zeros(n, dtype=bool)
    net_sum = np.zeros((len(arms), len(labels)))
    net_n = np.zeros((len(arms), 1))
    seen: set[str] = set()
    index = {key: i for i, key in enumerate(arms)}
    level_index = {label: i for i, label in enumerate(labels)}
    memo: dict[tuple[str, str], np.ndarray] = {}
    for i, (
        customer,
        _,
        arm_key,
        attributes,
        overrides,
        result,
        value,
        cost,
        delivered,
    ) in enumerate(records):
        a = index.get(arm_key, 0)
        arm[i] = a
        if customer not in seen:
            seen.add(customer)
            enrolment[i] = True
        net = _net(catalog, arm_key, attributes, overrides, memo)
        net_sum[a] += np.nan_to_num(net)
        net_n[a] += 1
        if result is not None:
            level[i] = level_index[result]
            realised[i] = _realised(catalog, delivered, attributes, overrides, result, value, cost)
    return Evidence(
        arms=arms,
        levels=labels,
        created_at=[r[1] for r in records],
        customers=[r[0] for r in records],
        arm=arm,
        enrolment=enrolment,
        level=level,
        realised=realised,
        net=np.where(net_n > 0, net_sum / np.maximum(net_n, 1), _fallback_net(catalog, arms)),
        weights=_weights_at(session, row, arms, [r[1] for r in records]),
    )


def _net(
    catalog: Catalog,
    experience: str,
    attributes: dict[str, object],
    overrides: dict[str, dict[str, float]],
    memo: dict[tuple[str, str], np.ndarray],
) -> np.ndarray:
    """Value minus cost per level for one decision; memoised where it cannot depend on the
    customer (fixed values and costs, no per-decision overrides)."""
    scale = catalog.require_scale()
    info = catalog.experiences[experience]
    fixed = not (
        scale.per_customer
        or info.cost_attribute
        or overrides.get("values")
        or overrides.get("costs")
    )
    if fixed and (experience, "") in memo:
        return memo[(experience, "")]
    values = level_values(scale, attributes, overrides.get("values"))
    net: np.ndarray = values - cost_by_level(info, scale, attributes, overrides.get("costs"))
    if fixed:
        memo[(experience, "")] = net
    return net


def _fallback_net(catalog: Catalog, arms: Sequence[str]) -> np.ndarray:
    """Net values per level for arms without decisions (the declared, customer-free ones)."""
    fallback: np.ndarray = np.nan_to_num(np.array([_net(catalog, key, {}, {}, {}) for key in arms]))
    return fallback


def _realised(
    catalog: Catalog,
    delivered: str,
    attributes: dict[str, object],
    overrides: dict[str, dict[str, float]],
    result: str,
    value: float | None,
    cost: float | None,
) -> float:
    scale = catalog.require_scale()
    i = scale.index(result)
    info = catalog.experiences[delivered]
    if value is None:
        value = float(np.nan_to_num(level_values(scale, attributes, overrides.get("values"))[i]))
    if cost is None:
        cost = float(cost_by_level(info, scale, attributes, overrides.get("costs"))[i])
    return value - cost


def _weights_at(
    session: Session, row: Experiment, arms: Sequence[str], times: Sequence[dt.datetime]
) -> np.ndarray:
    """The allocation in force at each decision time, shape (D, A)."""
    history: list[tuple[dt.datetime, dict[str, float]]] = [
        (at, weights)
        for at, weights in session.execute(
            select(col(ExperimentAllocation.at), col(ExperimentAllocation.weights))
            .where(col(ExperimentAllocation.experiment_key) == row.key)
            .order_by(col(ExperimentAllocation.at), col(ExperimentAllocation.id))
        )
    ]
    if not history:
        history = [(row.created_at, row.weights)]
    starts = np.array([at.timestamp() for at, _ in history])
    table = np.array([[weights.get(a, 0.0) for a in arms] for _, weights in history])
    stamps = np.array([t.timestamp() for t in times])
    which = np.clip(np.searchsorted(starts, stamps, side="right") - 1, 0, len(history) - 1)
    result: np.ndarray = table[which] if len(times) else np.zeros((0, len(arms)))
    return result
