"""Do agents' overrides beat the engine? Override rates and the value of overrides, observed.

An agent sees the engine's pick and may deliver another experience with a note and a reason
code (engine.overrides). This module reports, over the decisions made for agents in a window:

- the override rate, overall and per agent (overrides / decisions, Wilson 95% interval);
- overrides per reason code;
- the value of overrides against the engine's picks. For an overridden decision the engine's
  pick was never delivered, so its value is not observed: what we have is the engine's own
  estimate q_i of its pick (the expected net value logged with the decision). Per decision the
  gap d_i = r_i - q_i compares the realised net value r_i of what was delivered with that
  estimate. Its mean over overridden decisions, with a 95% interval, says whether overrides did
  better than the engine expected its own pick to do; the same mean over the decisions where the
  agent followed the engine measures how well the engine's estimates hold up at all (near 0 when
  calibrated). Their difference (Welch interval) is the headline figure.

All of it is observational: agents override when they know something the engine does not, on
customers of their own choosing, so these are associations and not the causal effect of
overriding. Intervals cover the noise of the results only, not the error of the engine's
estimates. Decisions without an outcome yet count in the rates but not in the value figures.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlmodel import Session, col, func, or_, select

from engine.catalog import Catalog
from engine.evaluation import realised_net_value
from engine.models import Decision, DecisionOverride, Outcome, utcnow
from engine.ope import Z95
from engine.runtime import Runtime, StatsSnapshot

NO_REASON = "(none)"
NO_AGENT = "(none)"
OBSERVATIONAL = (
    "Observational: agents choose which decisions to override, so these figures are "
    "associations, not the causal effect of overriding. Intervals cover the noise of results, "
    "not the error of the engine's estimates."
)


@dataclass(frozen=True)
class AgentDecision:
    """One decision made for an agent, as this report needs it.

    realised: net value of what was delivered (None: no outcome yet); engine_expected: the
    engine's logged estimate of its own pick; agent_expected: its estimate of the agent's pick
    (None when that was not a candidate, or no override).
    """

    agent: str
    overridden: bool
    reason_code: str | None
    realised: float | None
    engine_expected: float | None
    agent_expected: float | None


# Kernels ---------------------------------------------------------------------------------------


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean with a normal 95% interval, mean +- 1.96 sd / sqrt(n) (ddof = 1): values shape (n,).

    Fewer than two values: the mean alone (None when there is none), no interval.
    """
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None}
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if n < 2:
        return {"n": 1, "mean": round(mean, 4), "ci95": None}
    half = Z95 * float(array.std(ddof=1)) / math.sqrt(n)
    return {"n": n, "mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}


def difference_ci(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """mean(a) - mean(b) with a Welch 95% interval, +- 1.96 sqrt(var_a / n_a + var_b / n_b).

    Either side with fewer than two values: no estimate.
    """
    if len(a) < 2 or len(b) < 2:
        return {"mean": None, "ci95": None}
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean())
    half = Z95 * math.sqrt(float(x.var(ddof=1)) / len(x) + float(y.var(ddof=1)) / len(y))
    return {"mean": round(diff, 4), "ci95": [round(diff - half, 4), round(diff + half, 4)]}


def wilson(successes: int, n: int) -> dict[str, Any]:
    """A rate successes / n with its Wilson score 95% interval (good at rates near 0 and 1)."""
    if n == 0:
        return {"rate": None, "ci95": None}
    p = successes / n
    z2 = Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return {
        "rate": round(p, 4),
        "ci95": [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)],
    }


def summarize(decisions: Iterable[AgentDecision]) -> dict[str, Any]:
    """The report of the module docstring over ``decisions`` (pure; see override_insights)."""
    rows = list(decisions)
    by_agent: dict[str, list[AgentDecision]] = defaultdict(list)
    by_reason: dict[str, list[AgentDecision]] = defaultdict(list)
    for row in rows:
        by_agent[row.agent].append(row)
        if row.overridden:
            by_reason[row.reason_code or NO_REASON].append(row)
    n_overrides = sum(row.overridden for row in rows)
    return {
        "decisions": len(rows),
        "overrides": n_overrides,
        "override_rate": wilson(n_overrides, len(rows)),
        "value": _value(rows),
        "by_agent": [
            {
                "agent": agent,
                "decisions": len(group),
                "overrides": sum(r.overridden for r in group),
                **wilson(sum(r.overridden for r in group), len(group)),
                "value": _value(group),
            }
            for agent, group in sorted(by_agent.items())
        ],
        "by_reason": [
            {
                "reason_code": reason,
                "overrides": len(group),
                "share": round(len(group) / n_overrides, 4),
                "value": _value(group)["overridden"],
            }
            for reason, group in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ],
        "note": OBSERVATIONAL,
    }


def _value(rows: Sequence[AgentDecision]) -> dict[str, Any]:
    """Realised net value against the engine's estimate of its own pick, for overridden and
    followed decisions (those with an outcome and a logged estimate)."""
    settled = [r for r in rows if r.realised is not None and r.engine_expected is not None]
    gaps: dict[bool, list[float]] = {True: [], False: []}
    for row in settled:
        gaps[row.overridden].append(float(row.realised or 0.0) - float(row.engine_expected or 0.0))

    def side(overridden: bool) -> dict[str, Any]:
        group = [r for r in settled if r.overridden == overridden]
        out = {
            "realised": mean_ci([r.realised for r in group if r.realised is not None]),
            "engine_expected": mean_ci(
                [r.engine_expected for r in group if r.engine_expected is not None]
            ),
            "gap": mean_ci(gaps[overridden]),
        }
        if overridden:
            out["agent_expected"] = mean_ci(
                [r.agent_expected for r in group if r.agent_expected is not None]
            )
        return out

    return {
        "overridden": side(True),
        "followed": side(False),
        "gap_difference": difference_ci(gaps[True], gaps[False]),
    }


# Service ---------------------------------------------------------------------------------------


def override_insights(*, session: Session, runtime: Runtime, days: float = 90.0) -> dict[str, Any]:
    """Override rates and the value of overrides over the decisions of the last ``days`` that
    were made for an agent or overridden by one (see the module docstring).

    Kept with the statistics snapshot (a new outcome makes a new one) while no decision or
    override is added: the newest decision (indexed) and the number of overrides decide whether
    to recompute.
    """
    catalog = runtime.catalog(session)
    catalog.require_scale()
    snapshot = runtime.stats(session, catalog)
    newest = session.exec(select(func.max(col(Decision.created_at)))).one()
    n_overrides = session.exec(select(func.count()).select_from(DecisionOverride)).one()
    slot: dict[Any, Any] = snapshot.memo(("override_insights", catalog.version), dict)
    key = (days, str(newest), int(n_overrides))
    found = slot.get(key)
    if found is None:
        slot.clear()
        found = slot[key] = _report(session, catalog, snapshot, days)
    return found


def _report(
    session: Session, catalog: Catalog, snapshot: StatsSnapshot, days: float
) -> dict[str, Any]:
    since = utcnow() - dt.timedelta(days=days)
    statement = (
        select(Decision, DecisionOverride, Outcome)
        .outerjoin(DecisionOverride, col(DecisionOverride.decision_id) == col(Decision.id))
        .outerjoin(Outcome, col(Outcome.decision_id) == col(Decision.id))
        .where(col(Decision.created_at) >= since)
        .where(
            or_(col(Decision.agent_id).is_not(None), col(DecisionOverride.decision_id).is_not(None))
        )
    )
    rows = []
    for decision, override, outcome in session.exec(statement):
        realised = None
        if outcome is not None and outcome.experience_key in catalog.experiences:
            realised = realised_net_value(catalog, snapshot, decision, outcome)
        estimates = _estimates(decision.candidates)
        overridden = override is not None and override.experience_key != decision.experience_key
        rows.append(
            AgentDecision(
                agent=(override.agent_id if override else None) or decision.agent_id or NO_AGENT,
                overridden=overridden,
                reason_code=override.reason_code if override else None,
                realised=realised,
                engine_expected=estimates.get(decision.experience_key),
                agent_expected=estimates.get(override.experience_key) if override else None,
            )
        )
    return {"window": {"days": days, "since": since}, **summarize(rows)}


def _estimates(candidates: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {c["experience"]: float(c["expected_net_value"]) for c in candidates}


__all__ = [
    "OBSERVATIONAL",
    "AgentDecision",
    "difference_ci",
    "mean_ci",
    "override_insights",
    "summarize",
    "wilson",
]
