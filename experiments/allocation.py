"""Who gets which arm: sticky hashing of customer and experiment over the allocation in force.

A customer's unit ``u`` in [0, 1) is a SHA-256 hash of the experiment key and the customer id, so
every worker, before and after a restart, puts the same customer in the same place; the arm is
the one whose cumulative weight interval holds ``u``. A customer keeps the arm of their first
decision in the experiment while that arm runs (engine.decisions reads it back), so a later
change of adaptive weights moves new customers only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from experiments import stats
from experiments.models import Experiment

__all__ = ["active_arms", "initial_weights", "pick", "unit", "weights_after"]


def unit(experiment_key: str, customer_id: str) -> float:
    """The customer's uniform position for this experiment: 53 bits of SHA-256 in [0, 1)."""
    digest = hashlib.sha256(f"{experiment_key}\x1f{customer_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def pick(arms: Sequence[str], weights: Mapping[str, float], u: float) -> str:
    """The arm whose cumulative-weight interval holds ``u`` (weights sum to 1)."""
    total = 0.0
    last = None
    for arm in arms:
        w = weights.get(arm, 0.0)
        if w <= 0:
            continue
        total += w
        last = arm
        if u < total:
            return arm
    if last is None:
        raise ValueError("no arm has weight")
    return last  # u within float rounding of 1


def active_arms(row: Experiment) -> np.ndarray:
    """bool, shape (A,): the arms the guardrail metric has not stopped."""
    return np.array([arm["experience"] not in row.arm_status for arm in row.arms])


def initial_weights(row: Experiment) -> dict[str, float]:
    """Fixed weights (or an equal split), or the equal split of an adaptive burn-in; holdout on
    control; arms stopped by the guardrail get nothing."""
    keys = [arm["experience"] for arm in row.arms]
    active = active_arms(row)
    if row.allocation == "fixed":
        given = np.array([arm.get("weight") or 1.0 for arm in row.arms], dtype=float)
    else:
        given = np.ones(len(keys))
    control = keys.index(row.control) if row.control in keys else None
    weights = stats.fixed_weights(given, active, holdout_share=row.holdout_share, control=control)
    return _rounded(keys, weights)


def weights_after(row: Experiment, p_best: np.ndarray) -> dict[str, float]:
    """The adaptive allocation for the current P(best) of each arm (shape (A,))."""
    keys = [arm["experience"] for arm in row.arms]
    control = keys.index(row.control) if row.control in keys else None
    weights = stats.adaptive_weights(
        p_best,
        active_arms(row),
        min_share=row.min_share,
        holdout_share=row.holdout_share,
        control=control,
    )
    return _rounded(keys, weights)


def _rounded(keys: Sequence[str], weights: np.ndarray) -> dict[str, float]:
    return {key: round(float(w), 9) for key, w in zip(keys, weights, strict=True)}
