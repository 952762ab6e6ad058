"""A seeded experiment with known arms, run through the same assignment, allocation and stopping
code the service runs (experiments.allocation, experiments.monitor.judge), in memory.

Customers arrive ``per_update`` at a time; each gets the arm its sticky hash picks under the
allocation in force, and a result drawn from that arm's true distribution. After each batch the
stopping rule looks at the evidence; an adaptive experiment then re-weighs its arms. Used by the
tests and by bench/experiments.py to show that adaptive allocation finds the best arm, stops by
the rule, and gives worse arms less traffic than a fixed split.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.models import utcnow
from experiments.allocation import initial_weights, pick, unit, weights_after
from experiments.evidence import Evidence
from experiments.models import Experiment
from experiments.monitor import judge

__all__ = ["SimulatedExperiment", "run_experiment"]


@dataclass(frozen=True)
class SimulatedExperiment:
    customers: int
    per_arm: list[int]
    stopped: bool
    reason: str | None
    leader: str
    decisive: bool
    evidence: Evidence

    def as_dict(self) -> dict[str, Any]:
        return {
            "customers": self.customers,
            "per_arm": self.per_arm,
            "stopped": self.stopped,
            "reason": self.reason,
            "leader": self.leader,
            "decisive": self.decisive,
        }


def run_experiment(
    *,
    arms: Sequence[str],
    probs: np.ndarray,
    net: np.ndarray,
    allocation: str,
    seed: int,
    max_customers: int,
    per_update: int = 100,
    weights: Sequence[float] | None = None,
    control: str | None = None,
    holdout_share: float = 0.0,
    min_share: float = 0.05,
    burn_in: int = 100,
    p_best: float = 0.95,
    expected_loss: float = 1.0,
    guardrail: dict[str, Any] | None = None,
    stop: bool = True,
) -> SimulatedExperiment:
    """probs: true result distribution per arm, shape (A, L); net: net value per arm and level,
    shape (A, L). With ``stop=False`` it runs to ``max_customers`` whatever the rule says."""
    rng = np.random.default_rng(seed)
    key = f"sim-{seed}"
    levels = [f"L{i}" for i in range(probs.shape[1])]
    row = Experiment(
        key=key,
        name="simulated",
        created_by="simulation",
        arms=[
            {"experience": a, "weight": None if weights is None else float(weights[i])}
            for i, a in enumerate(arms)
        ],
        allocation=allocation,
        control=control,
        holdout_share=holdout_share,
        min_share=min_share,
        burn_in=burn_in,
        stopping={"p_best": p_best, "expected_loss": expected_loss, "max_sample": None},
        guardrail=guardrail,
        arm_status={},
        status="running",
        history=[],
        weights={},
    )
    row.weights = initial_weights(row)
    start = utcnow()
    chosen: list[int] = []
    results: list[int] = []
    allocations: list[list[float]] = []
    verdict = None
    while len(chosen) < max_customers:
        in_force = [row.weights[a] for a in arms]
        batch = [
            arms.index(pick(arms, row.weights, unit(key, f"c{i}")))
            for i in range(len(chosen), min(len(chosen) + per_update, max_customers))
        ]
        # Inverse-CDF draws of each customer's result from their arm's true distribution.
        cdf = np.cumsum(probs[batch], axis=1)
        drawn = (rng.random((len(batch), 1)) > cdf).sum(axis=1)
        chosen.extend(batch)
        results.extend(np.minimum(drawn, probs.shape[1] - 1).tolist())
        allocations.extend([in_force] * len(batch))
        evidence = _evidence(arms, levels, chosen, results, net, allocations, start)
        verdict = judge(row, evidence, start, rng)
        if verdict.harmful:
            row.arm_status = {
                **row.arm_status,
                **{a: {"reason": "guardrail"} for a in verdict.harmful},
            }
            row.weights = initial_weights(row)
        if stop and verdict.stop_reason is not None:
            break
        if allocation == "adaptive" and verdict.burned_in:
            row.weights = weights_after(row, verdict.summary.p_best)
    assert verdict is not None
    evidence = _evidence(arms, levels, chosen, results, net, allocations, start)
    return SimulatedExperiment(
        customers=len(chosen),
        per_arm=np.bincount(chosen, minlength=len(arms)).tolist(),
        stopped=verdict.stop_reason is not None,
        reason=verdict.stop_reason,
        leader=verdict.leader,
        decisive=verdict.decisive,
        evidence=evidence,
    )


def _evidence(
    arms: Sequence[str],
    levels: list[str],
    chosen: list[int],
    results: list[int],
    net: np.ndarray,
    allocations: list[list[float]],
    start: dt.datetime,
) -> Evidence:
    arm = np.array(chosen, dtype=np.int64)
    level = np.array(results, dtype=np.int64)
    return Evidence(
        arms=list(arms),
        levels=levels,
        created_at=[start + dt.timedelta(minutes=i) for i in range(len(chosen))],
        customers=[f"c{i}" for i in range(len(chosen))],
        arm=arm,
        enrolment=np.ones(len(chosen), dtype=bool),
        level=level,
        realised=net[arm, level],
        net=net,
        weights=np.array(allocations),
    )
