"""Hierarchical Dirichlet posteriors over result levels along the segment tree.

For each experience and exposure bucket the cells form a tree: the root (all customers) and below
it one node per path of attribute levels along the segmentation. A cell's prior is
``kappa_d * m``, where ``m`` is the posterior mean of its parent computed without the cell's own
counts (leave-one-out, so a child that holds most of its parent's data does not count its evidence
twice) and ``kappa_d`` is one concentration per depth, fitted by empirical Bayes: it maximises the
Dirichlet-multinomial marginal likelihood of the cells at that depth,

    log p(n | kappa m) = sum_c [ lgamma(kappa) - lgamma(kappa + N_c)
                                 + sum_l lgamma(kappa m_cl + n_cl) - lgamma(kappa m_cl) ],

over ``kappa`` in [KAPPA_MIN, KAPPA_MAX] (scipy.optimize.minimize_scalar on log kappa). Small
segments borrow strength from their parents; large ones speak for themselves. The bucket roots
(exposure 0, 1, 2+) shrink toward the experience's pooled root, which shrinks toward a flat prior
of ROOT_STRENGTH pseudo-results.

Pure numpy/scipy: no I/O; counts arrive as arrays.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import gammaln

KAPPA_MIN = 0.5
KAPPA_MAX = 1000.0
ROOT_STRENGTH = 1.0
"""Pseudo-results of the flat prior at the top of each experience's tree."""

NodeKey = str
"""A node of the segment tree: "" (root) or "plan=premium|tenure_months=<12"."""


def dm_log_marginal(counts: np.ndarray, prior_means: np.ndarray, kappa: float) -> float:
    """Sum over cells of the Dirichlet-multinomial log marginal likelihood (without the
    multinomial coefficient, which does not depend on kappa).

    counts, prior_means: shape (C, L); prior_means rows sum to 1.
    """
    alpha = kappa * prior_means
    totals = counts.sum(axis=1)
    per_cell = (
        gammaln(kappa)
        - gammaln(kappa + totals)
        + (gammaln(alpha + counts) - gammaln(alpha)).sum(axis=1)
    )
    return float(per_cell.sum())


def fit_kappa(counts: np.ndarray, prior_means: np.ndarray) -> float:
    """Empirical-Bayes concentration for cells with these counts and prior means: shape (C, L).

    With no cell holding more than one result's worth of evidence the likelihood is flat; the
    upper bound then wins, which means "trust the parent": the right answer for no data.
    """
    informative = counts.sum(axis=1) > 0
    if not informative.any():
        return KAPPA_MAX
    c, m = counts[informative], np.clip(prior_means[informative], 1e-9, None)
    m = m / m.sum(axis=1, keepdims=True)
    result = minimize_scalar(
        lambda log_kappa: -dm_log_marginal(c, m, float(np.exp(log_kappa))),
        bounds=(np.log(KAPPA_MIN), np.log(KAPPA_MAX)),
        method="bounded",
        options={"xatol": 1e-3},
    )
    return float(np.exp(result.x))


@dataclass(frozen=True)
class TreePosterior:
    """Posterior Dirichlet parameters of every cell with data, and the fitted kappas.

    alpha[(node, experience, bucket)]: shape (L,). pooled[experience]: the experience's root over
    all buckets. kappas[depth]: concentration used for cells at that depth (depth 0 = bucket
    roots under the pooled root).
    """

    alpha: Mapping[tuple[NodeKey, str, int], np.ndarray]
    pooled: Mapping[str, np.ndarray]
    counts: Mapping[tuple[NodeKey, str, int], np.ndarray]
    kappas: Sequence[float]
    depth: int

    def cell(self, path: Sequence[NodeKey], experience: str, bucket: int) -> tuple[np.ndarray, int]:
        """Posterior alpha of the deepest cell with data on ``path`` (root first), and its depth.

        Falls back to the pooled root of the experience (depth -1) when even the bucket root has
        no data, and to the flat prior when the experience has none at all.
        """
        for depth in range(len(path) - 1, -1, -1):
            found = self.alpha.get((path[depth], experience, bucket))
            if found is not None:
                return found, depth
        pooled = self.pooled.get(experience)
        if pooled is not None:
            return pooled, -1
        n_levels = len(next(iter(self.pooled.values()))) if self.pooled else 1
        return np.full(n_levels, ROOT_STRENGTH / n_levels), -1


def node_paths(finest: Sequence[Mapping[str, str]], order: Sequence[str]) -> list[list[NodeKey]]:
    """For each finest segment (attribute -> level), the node keys from the root down along
    ``order``: shape (n_segments, len(order) + 1)."""
    paths = []
    for levels in finest:
        keys = [""]
        for name in order:
            part = f"{name}={levels.get(name, 'unknown')}"
            keys.append(part if not keys[-1] else f"{keys[-1]}|{part}")
        paths.append(keys)
    return paths


def fit_tree(
    segment_levels: Sequence[Mapping[str, str]],
    segment_index: np.ndarray,
    experiences: Sequence[str],
    experience_index: np.ndarray,
    buckets: np.ndarray,
    level_index: np.ndarray,
    counts: np.ndarray,
    *,
    order: Sequence[str],
    n_levels: int,
) -> TreePosterior:
    """Fit the hierarchical posterior from flat cell rows.

    segment_levels: the finest segments (attribute -> level), indexed by segment_index;
    segment_index, experience_index, buckets, level_index, counts: shape (n_rows,), one row per
    stored cell (decayed counts).
    """
    paths = node_paths(segment_levels, order)
    depth = len(order)
    node_counts: dict[tuple[NodeKey, str, int], np.ndarray] = defaultdict(
        lambda: np.zeros(n_levels)
    )
    for s, e, b, lv, n in zip(
        segment_index.tolist(),
        experience_index.tolist(),
        buckets.tolist(),
        level_index.tolist(),
        counts.tolist(),
        strict=True,
    ):
        for node in paths[s]:
            node_counts[(node, experiences[e], b)][lv] += n
    parent_of = {path[d]: path[d - 1] for path in paths for d in range(1, depth + 1)}

    pooled: dict[str, np.ndarray] = {}
    for (node, experience, _), n in node_counts.items():
        if node == "":
            pooled[experience] = (
                pooled.get(experience, np.full(n_levels, ROOT_STRENGTH / n_levels)) + n
            )
    alpha: dict[tuple[NodeKey, str, int], np.ndarray] = {}
    kappas: list[float] = []
    by_depth: dict[int, list[tuple[NodeKey, str, int]]] = defaultdict(list)
    for key in node_counts:
        by_depth[0 if key[0] == "" else key[0].count("|") + 1].append(key)
    for d in range(depth + 1):
        keys = by_depth.get(d, [])
        if not keys:
            kappas.append(KAPPA_MAX)
            continue
        child = np.array([node_counts[k] for k in keys])
        parents = np.array(
            [pooled[k[1]] if d == 0 else alpha[(parent_of[k[0]], k[1], k[2])] for k in keys]
        )
        # Leave-one-out: the parent's posterior without this cell's own counts.
        loo = np.clip(parents - child, 1e-9, None)
        means = loo / loo.sum(axis=1, keepdims=True)
        kappa = fit_kappa(child, means)
        kappas.append(kappa)
        for k, m, n in zip(keys, means, child, strict=True):
            alpha[k] = kappa * m + n
    return TreePosterior(
        alpha=alpha, pooled=pooled, counts=dict(node_counts), kappas=kappas, depth=depth
    )
