"""Statistical kernels of experiments: arm posteriors, stopping, guardrail harm, allocation and the
sample-ratio test. Pure functions over numpy arrays; the random generator is a parameter.

Each arm's result distribution has a Dirichlet posterior over the L result levels, with a
uniform Dirichlet(1, ..., 1) prior: an experiment is a fresh, deliberately clean comparison, so it
does not borrow from the main policy's cells. An arm's net value is p @ net (value of each level
minus the cost incurred on it, averaged over the arm's customers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "ArmSummary",
    "SampleRatio",
    "adaptive_weights",
    "fixed_weights",
    "harm_probability",
    "sample_ratio_test",
    "summarize_arms",
    "value_draws",
]

PRIOR = 1.0
"""Dirichlet pseudo-count per level for every arm."""


def value_draws(
    counts: np.ndarray, net: np.ndarray, rng: np.random.Generator, draws: int = 4000
) -> np.ndarray:
    """Joint posterior draws of every arm's expected net value.

    counts: results per arm and level, shape (A, L); net: net value per arm and level, shape
    (A, L). Returns shape (S, A): p ~ Dirichlet(PRIOR + counts) per arm, value = p @ net.
    """
    gammas = rng.standard_gamma(PRIOR + counts, size=(draws, *counts.shape))
    probs = gammas / gammas.sum(axis=2, keepdims=True)
    result: np.ndarray = np.einsum("sal,al->sa", probs, net)
    return result


@dataclass(frozen=True)
class ArmSummary:
    """Posterior summaries per arm, each shape (A,); uplift against the control arm (None when
    the experiment has no control)."""

    mean: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_best: np.ndarray
    expected_loss: np.ndarray
    uplift_mean: np.ndarray | None
    uplift_low: np.ndarray | None
    uplift_high: np.ndarray | None


def summarize_arms(values: np.ndarray, control: int | None) -> ArmSummary:
    """Mean, 90% credible interval, P(best), expected loss and uplift from joint draws.

    values: shape (S, A). P(best)_a = P(v_a = max_b v_b); expected loss_a = E[max_b v_b - v_a],
    the value given up per customer by picking a if it is not the best.
    """
    best = values.max(axis=1, keepdims=True)
    p_best = np.bincount(values.argmax(axis=1), minlength=values.shape[1]) / values.shape[0]
    low, high = np.quantile(values, [0.05, 0.95], axis=0)
    uplift_mean = uplift_low = uplift_high = None
    if control is not None:
        uplift = values - values[:, [control]]
        uplift_mean = uplift.mean(axis=0)
        uplift_low, uplift_high = np.quantile(uplift, [0.05, 0.95], axis=0)
    return ArmSummary(
        mean=values.mean(axis=0),
        ci_low=low,
        ci_high=high,
        p_best=p_best,
        expected_loss=(best - values).mean(axis=0),
        uplift_mean=uplift_mean,
        uplift_low=uplift_low,
        uplift_high=uplift_high,
    )


def harm_probability(
    counts: np.ndarray,
    level: int,
    control: int,
    margin: float,
    rng: np.random.Generator,
    draws: int = 4000,
) -> np.ndarray:
    """P(share of ``level`` in arm a > share in the control arm + margin), shape (A,).

    counts: shape (A, L). The share of one level under a Dirichlet posterior is Beta(PRIOR +
    c_level, PRIOR * (L - 1) + n - c_level); arms are independent.
    """
    n_levels = counts.shape[1]
    hits = counts[:, level]
    rest = counts.sum(axis=1) - hits
    shares = rng.beta(PRIOR + hits, PRIOR * (n_levels - 1) + rest, size=(draws, counts.shape[0]))
    harm: np.ndarray = (shares > shares[:, [control]] + margin).mean(axis=0)
    harm[control] = 0.0
    return harm


def adaptive_weights(
    p_best: np.ndarray,
    active: np.ndarray,
    *,
    min_share: float,
    holdout_share: float,
    control: int | None,
) -> np.ndarray:
    """Thompson allocation over the active arms, floored, with the holdout kept on control.

    p_best: shape (A,); active: bool, shape (A,). Among active arms w = min_share + (1 - m *
    min_share) * P(best) renormalised over active arms (m of them), then the holdout share goes
    to control on top: w' = holdout * [control] + (1 - holdout) * w. Probability matching is what
    Thompson sampling does one customer at a time; applying it as weights per update keeps the
    assignment sticky and the propensities known.
    """
    m = int(active.sum())
    p = np.where(active, p_best, 0.0)
    p = p / p.sum() if p.sum() > 0 else active / m
    weights = np.where(active, min_share + (1.0 - m * min_share) * p, 0.0)
    return _with_holdout(weights, holdout_share, control)


def fixed_weights(
    weights: np.ndarray, active: np.ndarray, *, holdout_share: float, control: int | None
) -> np.ndarray:
    """The marketer's weights over the active arms, renormalised, plus the holdout on control."""
    kept = np.where(active, weights, 0.0)
    return _with_holdout(kept / kept.sum(), holdout_share, control)


def _with_holdout(weights: np.ndarray, holdout_share: float, control: int | None) -> np.ndarray:
    if control is None or holdout_share <= 0:
        return weights
    result: np.ndarray = (1.0 - holdout_share) * weights
    result[control] += holdout_share
    return result


@dataclass(frozen=True)
class SampleRatio:
    observed: list[int]
    expected: list[float]
    chi2: float
    p_value: float
    mismatch: bool


SRM_ALPHA = 0.001
"""The usual threshold for a sample-ratio mismatch: at 0.001 a healthy experiment checked daily
for a year raises a false alarm about once in three years."""


def sample_ratio_test(observed: Sequence[int], expected: Sequence[float]) -> SampleRatio | None:
    """Pearson chi-square test of observed arm counts against expected counts (same total).

    None when there are fewer than two arms with an expected count, or too few units for the
    test (expected count under 5 somewhere).
    """
    obs = np.asarray(observed, dtype=float)
    exp = np.asarray(expected, dtype=float)
    keep = exp > 0
    if keep.sum() < 2 or obs.sum() == 0 or (exp[keep] < 5).any():
        return None
    exp_kept = exp[keep] * obs[keep].sum() / exp[keep].sum()
    chi2, p_value = sps.chisquare(obs[keep], exp_kept)
    return SampleRatio(
        observed=[int(x) for x in obs],
        expected=[round(float(x), 3) for x in exp],
        chi2=round(float(chi2), 4),
        p_value=float(p_value),
        mismatch=bool(p_value < SRM_ALPHA),
    )
