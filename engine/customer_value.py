"""Where the value is: each customer's realised net value, its concentration and its segments.

A customer's value over a window is the sum, over their stored results (historical triples and
outcomes of decisions), of the result's value minus the cost of the experience delivered on it:
reported money where a result has it, else the outcome scale's value and the experience's cost
for the customer (engine.money), a learned level value where the scale declares none. Values and
costs based on attributes use the customer's current attributes. Customers without results in
the window are worth 0 and count in the base.

The report gives the share of value from the top ``top`` fraction of customers (the Pareto
figure), the concentration curve at every tenth of the base, and value per segment at a depth of
the segment tree. It is kept with the statistics snapshot until a result or a customer changes.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
from sqlalchemy import Table, func
from sqlalchemy import select as sa_select
from sqlmodel import Session

from engine.catalog import Catalog
from engine.errors import InvalidInput
from engine.insights import customer_chunks, customers_fingerprint
from engine.models import Outcome, utcnow
from engine.money import cost_by_level, level_values
from engine.runtime import Runtime, StatsSnapshot

Group = tuple[str, str, int, float, int, float, int]
"""(experience, result, n, sum of reported values, n reported, sum of reported costs, n reported)"""


def concentration(values: np.ndarray, top: float) -> dict[str, Any]:
    """Share of the total held by the ``top`` fraction of the largest values, and the curve of
    that share at every tenth: values shape (n,). None when the total is not positive."""
    n = len(values)
    ordered = np.sort(values)[::-1]
    total = float(ordered.sum())
    if n == 0 or total <= 0:
        return {"top_share": None, "curve": []}
    cumulative = np.cumsum(ordered) / total
    k = max(1, math.ceil(top * n))
    curve = [
        {
            "customers": round(q / 10, 1),
            "value": round(float(cumulative[max(1, round(q * n / 10)) - 1]), 4),
        }
        for q in range(1, 11)
    ]
    return {"top_share": round(float(cumulative[k - 1]), 4), "curve": curve}


def customer_value(
    *, session: Session, runtime: Runtime, days: float = 365.0, depth: int = 1, top: float = 0.2
) -> dict[str, Any]:
    """The report of the module docstring for results of the last ``days``, segments at
    ``depth`` (1: the first attribute of the segmentation)."""
    catalog = runtime.catalog(session)
    catalog.require_scale()
    if not 0 <= depth <= len(catalog.segmentation):
        raise InvalidInput(
            f"depth {depth} is outside the segmentation ({len(catalog.segmentation)} levels)",
            field="depth",
        )
    snapshot = runtime.stats(session, catalog)
    slot: dict[Any, Any] = snapshot.memo(("customer_value", catalog.version), dict)
    key = (days, depth, top, customers_fingerprint(session))
    found = slot.get(key)
    if found is None:
        slot.clear()
        found = slot[key] = _report(session, catalog, snapshot, days, depth, top)
    return {**found, "as_of": utcnow()}


def _report(
    session: Session,
    catalog: Catalog,
    snapshot: StatsSnapshot,
    days: float,
    depth: int,
    top: float,
) -> dict[str, Any]:
    since = utcnow() - dt.timedelta(days=days)
    groups = _groups(session, since)
    values: list[float] = []
    segments: dict[str, list[float]] = defaultdict(list)
    with_results = 0
    for customers in customer_chunks(session):
        for customer in customers:
            own = groups.get(customer.id, ())
            worth = sum(_group_value(catalog, snapshot, customer.attributes, g) for g in own)
            with_results += bool(own)
            values.append(worth)
            path = _segment_path(catalog, customer.attributes)
            segments[path[depth]].append(worth)
    array = np.array(values)
    total = float(array.sum())
    return {
        "window": {"days": days, "since": since},
        "customers": len(values),
        "customers_with_results": with_results,
        "total": round(total, 2),
        "mean": round(total / len(values), 4) if values else None,
        "negative_customers": int((array < 0).sum()),
        "top": top,
        **concentration(array, top),
        "depth": depth,
        "segmentation": list(catalog.segmentation[:depth]),
        "by_segment": sorted(
            (
                {
                    "segment": segment,
                    "customers": len(worths),
                    "total": round(sum(worths), 2),
                    "mean": round(sum(worths) / len(worths), 4),
                    "share": round(sum(worths) / total, 4) if total > 0 else None,
                }
                for segment, worths in segments.items()
            ),
            key=lambda row: (-row["total"], row["segment"]),
        ),
    }


def _segment_path(catalog: Catalog, attributes: Mapping[str, Any]) -> list[str]:
    from engine.attributes import segment_path

    return segment_path(catalog.specs, catalog.segmentation, attributes)


def _groups(session: Session, since: dt.datetime) -> dict[str, list[Group]]:
    """Results since ``since`` per customer, grouped by experience and result (one pass)."""
    table: Table = Outcome.__table__  # type: ignore[attr-defined]
    c = table.c
    statement = (
        sa_select(
            c.customer_id,
            c.experience_key,
            c.result,
            func.count(),
            func.coalesce(func.sum(c.value), 0.0),
            func.count(c.value),
            func.coalesce(func.sum(c.cost), 0.0),
            func.count(c.cost),
        )
        .where(c.occurred_at >= since)
        .group_by(c.customer_id, c.experience_key, c.result)
    )
    found: dict[str, list[Group]] = defaultdict(list)
    for customer_id, *group in session.connection().execute(statement):
        found[customer_id].append(tuple(group))
    return found


def _group_value(
    catalog: Catalog, snapshot: StatsSnapshot, attributes: Mapping[str, Any], group: Group
) -> float:
    """Net value of ``n`` results of one experience and level for one customer."""
    key, result, n, value_sum, n_values, cost_sum, n_costs = group
    scale = catalog.require_scale()
    info = catalog.experiences.get(key)
    if info is None or result not in scale.labels:
        return 0.0
    level = scale.index(result)
    value = level_values(scale, attributes)[level]
    if np.isnan(value):
        value = float(snapshot.learned_values(key, len(scale.levels))[level])
    cost = float(cost_by_level(info, scale, attributes)[level])
    return float(value_sum + (n - n_values) * value - cost_sum - (n - n_costs) * cost)


__all__ = ["concentration", "customer_value"]
