"""Dirichlet posteriors over result levels and the net-value summaries built on them.

Pure numpy kernels: no I/O, the random generator is a parameter. Shapes: K experiences, L result
levels, S joint draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def dirichlet_mean(alpha: np.ndarray) -> np.ndarray:
    """E[p] = alpha / sum(alpha). alpha: shape (..., L) -> (..., L)."""
    mean: np.ndarray = alpha / alpha.sum(axis=-1, keepdims=True)
    return mean


def net_value_moments(alpha: np.ndarray, net: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of sum_l p_l * net_l for p ~ Dirichlet(alpha), in closed form.

    alpha, net: shape (K, L). With a0 = sum(alpha), m = alpha / a0:
    mean = m . net,  var = (sum_l m_l net_l^2 - mean^2) / (a0 + 1).
    Returns two arrays of shape (K,).
    """
    a0 = alpha.sum(axis=-1)
    m = alpha / a0[..., None]
    mean = (m * net).sum(axis=-1)
    second = (m * net**2).sum(axis=-1)
    return mean, np.maximum(second - mean**2, 0.0) / (a0 + 1.0)


def dirichlet_draws(alpha: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Joint draws p ~ Dirichlet(alpha) for every row: alpha (K, L) -> draws (S, K, L).

    Normalised gamma variates: one vectorised call instead of K calls to rng.dirichlet.
    """
    gammas = rng.standard_gamma(np.broadcast_to(alpha, (n_draws, *alpha.shape)))
    total = gammas.sum(axis=-1, keepdims=True)
    # A gamma draw with tiny alpha can underflow to 0 in every level; fall back to the mean.
    degenerate = total[..., 0] <= 0
    if np.any(degenerate):
        gammas[degenerate] = dirichlet_mean(alpha)[np.nonzero(degenerate)[1]]
        total = gammas.sum(axis=-1, keepdims=True)
    draws: np.ndarray = gammas / total
    return draws


@dataclass(frozen=True)
class NetValueSummary:
    """Per experience, all of shape (K,): expected net value (closed form), 90% interval from the
    draws, P(best) and expected loss (E[max_j v_j - v_k])."""

    mean: np.ndarray
    sd: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_best: np.ndarray
    expected_loss: np.ndarray


def summarize(alpha: np.ndarray, net: np.ndarray, value_draws: np.ndarray) -> NetValueSummary:
    """alpha, net: (K, L); value_draws: (S, K) joint draws of each experience's net value."""
    mean, var = net_value_moments(alpha, net)
    low, high = np.quantile(value_draws, [0.05, 0.95], axis=0)
    best = value_draws.argmax(axis=1)
    p_best = np.bincount(best, minlength=value_draws.shape[1]) / value_draws.shape[0]
    loss = (value_draws.max(axis=1, keepdims=True) - value_draws).mean(axis=0)
    return NetValueSummary(mean, np.sqrt(var), low, high, p_best, loss)


def p_best_among(value_draws: np.ndarray, allowed: list[int]) -> np.ndarray:
    """P(best) of each experience when only ``allowed`` (indexes) compete: shape (K,), zero
    outside ``allowed``. value_draws: (S, K) joint draws."""
    p = np.zeros(value_draws.shape[1])
    best = np.asarray(allowed)[value_draws[:, allowed].argmax(axis=1)]
    p += np.bincount(best, minlength=value_draws.shape[1]) / value_draws.shape[0]
    return p


def thompson_propensity(p_best: np.ndarray, chosen: int, *, explore: float) -> float:
    """P(the policy picks ``chosen``) = (1 - explore) * P(best) + explore / K.

    The policy explores uniformly with probability ``explore`` and otherwise plays Thompson
    sampling, whose choice probability is P(best), estimated from the joint draws. The mixture
    keeps every eligible experience's propensity at least explore / K, which off-policy
    evaluation needs.
    """
    k = p_best.shape[0]
    return float((1.0 - explore) * p_best[chosen] + explore / k)
