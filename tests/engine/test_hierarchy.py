"""Hierarchical posteriors against truth: pooling helps sparse segments, intervals cover."""

from __future__ import annotations

import numpy as np
import pytest

from engine import hierarchy, posterior

VALUES = np.array([0.0, 100.0, 160.0])


def simulate_tree(seed: int, n_parents: int = 8, n_children: int = 30, kappa: float = 40.0):
    """Truth: parent distributions, children ~ Dirichlet(kappa x parent), sparse child counts."""
    rng = np.random.default_rng(seed)
    levels, truth, rows = [], [], []
    for p in range(n_parents):
        parent = rng.dirichlet([4.0, 6.0, 2.0])
        for c in range(n_children):
            child = rng.dirichlet(kappa * parent)
            n = int(rng.integers(2, 25))  # sparse: 2 to 24 results per child
            counts = rng.multinomial(n, child).astype(float)
            levels.append({"a": f"p{p}", "b": f"c{c}"})
            truth.append(child)
            rows.append(counts)
    seg, lvl, cnt = [], [], []
    for s, counts in enumerate(rows):
        for level, n in enumerate(counts):
            if n > 0:
                seg.append(s)
                lvl.append(level)
                cnt.append(n)
    k = len(seg)
    tree = hierarchy.fit_tree(
        levels,
        np.array(seg),
        ["x"],
        np.zeros(k, dtype=int),
        np.zeros(k, dtype=int),
        np.array(lvl),
        np.array(cnt),
        order=["a", "b"],
        n_levels=3,
    )
    leaves = [f"a={lv['a']}|b={lv['b']}" for lv in levels]
    return tree, np.array(truth), np.array(rows), leaves


def test_dm_marginal_matches_a_direct_sum() -> None:
    counts = np.array([[3.0, 1.0, 0.0]])
    means = np.array([[0.5, 0.3, 0.2]])
    kappa = 2.0
    from math import lgamma

    a = kappa * means[0]
    direct = (
        lgamma(kappa)
        - lgamma(kappa + 4)
        + sum(lgamma(a[i] + counts[0, i]) - lgamma(a[i]) for i in range(3))
    )
    assert hierarchy.dm_log_marginal(counts, means, kappa) == pytest.approx(direct, rel=1e-12)


def test_kappa_is_recovered_roughly() -> None:
    tree, *_ = simulate_tree(seed=5, n_children=60)
    # the children's kappa (depth 2) was 40: the fit lands within a factor of about two
    assert 15 < tree.kappas[2] < 100


def test_pooling_beats_no_pooling_on_sparse_segments() -> None:
    tree, truth, counts, leaves = simulate_tree(seed=1)
    pooled = np.array([tree.alpha[(leaf, "x", 0)] for leaf in leaves])
    unpooled = counts + 1.0
    mse_pooled = ((posterior.dirichlet_mean(pooled) - truth) ** 2).sum(axis=1).mean()
    mse_unpooled = ((posterior.dirichlet_mean(unpooled) - truth) ** 2).sum(axis=1).mean()
    assert mse_pooled < 0.7 * mse_unpooled


def test_ninety_percent_intervals_cover_the_truth() -> None:
    hits, cells = 0, 0
    rng = np.random.default_rng(0)
    for seed in range(3):
        tree, truth, _, leaves = simulate_tree(seed=10 + seed)
        alpha = np.array([tree.alpha[(leaf, "x", 0)] for leaf in leaves])
        draws = posterior.dirichlet_draws(alpha, 4000, rng) @ VALUES
        low, high = np.quantile(draws, [0.05, 0.95], axis=0)
        value = truth @ VALUES
        hits += int(((low <= value) & (value <= high)).sum())
        cells += len(leaves)
    assert cells >= 200
    assert 0.85 <= hits / cells <= 0.95


def test_cell_falls_back_to_the_deepest_node_with_data() -> None:
    tree, *_ = simulate_tree(seed=2, n_parents=2, n_children=3)
    alpha, depth = tree.cell(["", "a=p0", "a=p0|b=nowhere"], "x", 0)
    assert depth == 1
    assert np.array_equal(alpha, tree.alpha[("a=p0", "x", 0)])
    _, unseen_depth = tree.cell(["", "a=p0"], "x", 2)
    assert unseen_depth == -1
