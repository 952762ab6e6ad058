"""An experiment's report: per arm results, value, uplift, P(best), expected loss, the
sample-ratio test, allocation over time and cumulative value (JSON; the plots are in
experiments.plots)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from sqlmodel import Session

from engine.catalog import Catalog
from engine.models import utcnow
from experiments import stats
from experiments.evidence import Evidence, load_evidence
from experiments.models import Experiment
from experiments.monitor import judge
from experiments.schemas import ExperimentReport

__all__ = ["PLOTS", "build_report", "report_evidence"]

PLOTS = ("posterior", "allocation", "cumulative")
MAX_POINTS = 60
"""Time buckets in the allocation and cumulative-value series."""


def report_evidence(session: Session, catalog: Catalog, row: Experiment) -> Evidence:
    return load_evidence(session, catalog, row)


def build_report(
    *,
    session: Session,
    catalog: Catalog,
    row: Experiment,
    seed: int = 0,
    now: dt.datetime | None = None,
    evidence: Evidence | None = None,
) -> ExperimentReport:
    now = now or utcnow()
    evidence = evidence or load_evidence(session, catalog, row)
    verdict = judge(row, evidence, now, np.random.default_rng(seed))
    summary, counts = verdict.summary, verdict.counts
    arms = []
    for a, key in enumerate(evidence.arms):
        n_results = counts[a].sum()
        in_arm = evidence.arm == a
        arms.append(
            {
                "experience": key,
                "is_control": key == row.control,
                "status": "stopped" if key in row.arm_status else "active",
                "stopped": row.arm_status.get(key),
                "weight": row.weights.get(key, 0.0),
                "customers": int((in_arm & evidence.enrolment).sum()),
                "decisions": int(in_arm.sum()),
                "results": int(n_results),
                "counts": {lvl: int(c) for lvl, c in zip(evidence.levels, counts[a], strict=True)},
                "distribution": {
                    lvl: round(float(c / n_results), 4) if n_results else None
                    for lvl, c in zip(evidence.levels, counts[a], strict=True)
                },
                "expected_net_value": round(float(summary.mean[a]), 4),
                "ci90": [round(float(summary.ci_low[a]), 4), round(float(summary.ci_high[a]), 4)],
                "uplift": None
                if summary.uplift_mean is None or key == row.control
                else {
                    "mean": round(float(summary.uplift_mean[a]), 4),
                    "ci90": [
                        round(float(summary.uplift_low[a]), 4),  # type: ignore[index]
                        round(float(summary.uplift_high[a]), 4),  # type: ignore[index]
                    ],
                },
                "p_best": round(float(summary.p_best[a]), 4),
                "expected_loss": round(float(summary.expected_loss[a]), 4),
            }
        )
    return ExperimentReport(
        key=row.key,
        name=row.name,
        status=row.status,
        hypothesis=row.hypothesis,
        allocation=row.allocation,
        generated_at=now,
        levels=evidence.levels,
        arms=arms,
        sample_ratio=sample_ratio(evidence),
        stopping=verdict.as_dict(row),
        allocation_over_time=allocation_over_time(evidence),
        cumulative_value=cumulative_value(evidence),
        conclusion=row.conclusion,
        plots={name: f"/v1/experiments/{row.key}/plots/{name}.svg" for name in PLOTS},
    )


def sample_ratio(evidence: Evidence) -> dict[str, Any]:
    """Chi-square tests of the customers enrolled per arm, and of those with a result, against
    the allocation in force when each was enrolled. Units are customers (their first decision),
    because a customer keeps their arm: repeat decisions follow the customer, not the weights."""
    enrolled = evidence.enrolment
    with_result = enrolled & (evidence.level >= 0)
    tests = {}
    for name, mask in (("assignments", enrolled), ("results", with_result)):
        observed = np.bincount(evidence.arm[mask], minlength=len(evidence.arms))
        expected = evidence.weights[mask].sum(axis=0)
        test = stats.sample_ratio_test(observed.tolist(), expected.tolist())
        tests[name] = None if test is None else test.__dict__
    broken = [name for name, test in tests.items() if test is not None and test["mismatch"]]
    warning = None
    if broken:
        warning = (
            "Sample ratio mismatch in "
            + " and ".join(broken)
            + f" (p < {stats.SRM_ALPHA}): the arms did not get the shares the allocation says. "
            "Assignment or logging is broken (for example results lost for one arm); do not "
            "trust the comparison until the cause is found."
        )
    return {**tests, "alpha": stats.SRM_ALPHA, "warning": warning}


def _buckets(times: list[dt.datetime]) -> tuple[np.ndarray, list[dt.datetime]]:
    """Bucket index per time and each bucket's end, at most MAX_POINTS equal buckets."""
    stamps = np.array([t.timestamp() for t in times])
    first, last = stamps.min(), stamps.max()
    width = max((last - first) / MAX_POINTS, 1.0)
    index = np.minimum(((stamps - first) // width).astype(int), MAX_POINTS - 1)
    ends = [
        dt.datetime.fromtimestamp(first + (i + 1) * width, tz=dt.UTC)
        for i in range(int(index.max()) + 1)
    ]
    return index, ends


def allocation_over_time(evidence: Evidence) -> list[dict[str, Any]]:
    """Share of newly enrolled customers per arm in each time bucket, with the planned shares."""
    if not evidence.enrolment.any():
        return []
    times = [t for t, e in zip(evidence.created_at, evidence.enrolment, strict=True) if e]
    index, ends = _buckets(times)
    arms = evidence.arm[evidence.enrolment]
    planned = evidence.weights[evidence.enrolment]
    points = []
    for b, end in enumerate(ends):
        mask = index == b
        n = int(mask.sum())
        if n == 0:
            continue
        shares = np.bincount(arms[mask], minlength=len(evidence.arms)) / n
        points.append(
            {
                "until": end.isoformat(),
                "customers": n,
                "shares": dict(zip(evidence.arms, np.round(shares, 4).tolist(), strict=True)),
                "planned": dict(
                    zip(
                        evidence.arms, np.round(planned[mask].mean(axis=0), 4).tolist(), strict=True
                    )
                ),
            }
        )
    return points


def cumulative_value(evidence: Evidence) -> list[dict[str, Any]]:
    """Per time bucket and arm: results so far and their realised net value so far (sum and
    per result)."""
    done = evidence.level >= 0
    if not done.any():
        return []
    times = [t for t, d in zip(evidence.created_at, done, strict=True) if d]
    index, ends = _buckets(times)
    arms, realised = evidence.arm[done], evidence.realised[done]
    n_arms = len(evidence.arms)
    total = np.zeros(n_arms)
    count = np.zeros(n_arms)
    points = []
    for b, end in enumerate(ends):
        mask = index == b
        np.add.at(total, arms[mask], realised[mask])
        np.add.at(count, arms[mask], 1)
        points.append(
            {
                "until": end.isoformat(),
                "arms": {
                    key: {
                        "results": int(count[a]),
                        "value": round(float(total[a]), 4),
                        "per_result": round(float(total[a] / count[a]), 4) if count[a] else None,
                    }
                    for a, key in enumerate(evidence.arms)
                },
            }
        )
    return points
