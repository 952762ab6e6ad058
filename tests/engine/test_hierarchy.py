"""Hierarchical posteriors against truth: pooling helps sparse segments, intervals cover, fatigue
and the automatic segmentation are recovered from data."""

from __future__ import annotations

from math import lgamma

import numpy as np
import pytest

from engine import hierarchy, posterior

VALUES = np.array([0.0, 100.0, 160.0])


def fit(levels, rows, experiences=("x",), control=None, order=("a", "b")):
    """fit_tree on rows of (segment, experience, bucket, level, count)."""
    seg, exp, bucket, lvl, cnt = (np.array(c) for c in zip(*rows, strict=True))
    return hierarchy.fit_tree(
        levels,
        seg.astype(int),
        list(experiences),
        exp.astype(int),
        bucket.astype(int),
        lvl.astype(int),
        cnt.astype(float),
        order=list(order),
        n_levels=3,
        n_buckets=3,
        control=control,
    )


def simulate_tree(seed: int, n_parents: int = 8, n_children: int = 30, kappa: float = 40.0):
    """Truth: parent distributions, children ~ Dirichlet(kappa x parent), sparse child counts."""
    rng = np.random.default_rng(seed)
    levels, truth, rows, counts_of = [], [], [], []
    for p in range(n_parents):
        parent = rng.dirichlet([4.0, 6.0, 2.0])
        for c in range(n_children):
            child = rng.dirichlet(kappa * parent)
            n = int(rng.integers(2, 25))  # sparse: 2 to 24 results per child
            counts = rng.multinomial(n, child).astype(float)
            s = len(levels)
            levels.append({"a": f"p{p}", "b": f"c{c}"})
            truth.append(child)
            counts_of.append(counts)
            rows += [(s, 0, 0, level, n) for level, n in enumerate(counts) if n > 0]
    paths = [["", f"a={lv['a']}", f"a={lv['a']}|b={lv['b']}"] for lv in levels]
    return fit(levels, rows), np.array(truth), np.array(counts_of), paths


def test_dm_marginal_matches_a_direct_sum() -> None:
    counts = np.array([[3.0, 1.0, 0.0]])
    means = np.array([[0.5, 0.3, 0.2]])
    kappa = 2.0
    a = kappa * means[0]
    direct = (
        lgamma(kappa)
        - lgamma(kappa + 4)
        + sum(lgamma(a[i] + counts[0, i]) - lgamma(a[i]) for i in range(3))
    )
    assert hierarchy.dm_log_marginal(counts, means, kappa)[0] == pytest.approx(direct, rel=1e-12)


def test_effective_concentration_never_exceeds_either_source() -> None:
    # a child can be no surer than its uncertain parent, nor than its own spread around it
    assert hierarchy.effective_concentration(1e9, 50.0) == pytest.approx(50.0, rel=1e-6)
    assert hierarchy.effective_concentration(40.0, 1e9) == pytest.approx(40.0, rel=1e-6)
    assert hierarchy.effective_concentration(40.0, 50.0) < 40.0


def test_kappa_is_recovered_roughly() -> None:
    tree, *_ = simulate_tree(seed=5, n_children=60)
    # the children's kappa (depth 2) was 40: the fit lands within a factor of about two
    assert 15 < tree.kappas[2, 0] < 100


def test_pooling_beats_no_pooling_on_sparse_segments() -> None:
    tree, truth, counts, paths = simulate_tree(seed=1)
    pooled = np.array([tree.cell(path, "x", 0)[0] for path in paths])
    unpooled = counts + 1.0
    mse_pooled = ((posterior.dirichlet_mean(pooled) - truth) ** 2).sum(axis=1).mean()
    mse_unpooled = ((posterior.dirichlet_mean(unpooled) - truth) ** 2).sum(axis=1).mean()
    assert mse_pooled < 0.7 * mse_unpooled


def test_ninety_percent_intervals_cover_the_truth() -> None:
    hits, cells = 0, 0
    rng = np.random.default_rng(0)
    for seed in range(3):
        tree, truth, _, paths = simulate_tree(seed=10 + seed)
        alpha = np.array([tree.cell(path, "x", 0)[0] for path in paths])
        draws = posterior.dirichlet_draws(alpha, 4000, rng) @ VALUES
        low, high = np.quantile(draws, [0.05, 0.95], axis=0)
        value = truth @ VALUES
        hits += int(((low <= value) & (value <= high)).sum())
        cells += len(paths)
    assert cells >= 200
    assert 0.85 <= hits / cells <= 0.95


def test_cell_falls_back_to_the_deepest_node_with_data() -> None:
    tree, *_ = simulate_tree(seed=2, n_parents=2, n_children=3)
    alpha, depth = tree.cell(["", "a=p0", "a=p0|b=nowhere"], "x", 0)
    assert depth == 1
    assert np.array_equal(alpha, tree.alpha[("a=p0", "x", 0)])
    _, unseen_depth = tree.cell(["", "a=p0"], "y", 0)
    assert unseen_depth == -1
    assert tree.counts[("a=p0", "x", 0)].sum() > 0
    assert ("a=p0", "x", 2) not in tree.counts  # no repeats seen there
    assert ("a=p0", "x", 2) in tree.alpha  # but the repeat cell has its fatigue prior
    assert len(tree.counts) == sum(1 for _ in tree.counts) == 1 + 2 + 2 * 3  # fresh cells


def fatigued_world(seed: int, w: float = 0.4, n_segments: int = 40):
    """A control (no offer) and an offer per segment; a repeated offer's log-odds effect against
    the control is scaled by ``w``. Returns the fitted tree, the truth of the offer's repeats
    (shape (n_segments, L)), their raw counts and the segments' paths."""
    rng = np.random.default_rng(seed)
    levels, rows, truth, repeat_counts = [], [], [], []
    for s in range(n_segments):
        control = rng.dirichlet([6.0, 12.0, 2.0])
        effect = rng.normal([0.0, 0.8, 0.4], 0.3)
        offer = control * np.exp(effect)
        offer /= offer.sum()
        repeat = control * np.exp(w * effect)
        repeat /= repeat.sum()
        levels.append({"a": f"s{s % 4}", "b": f"s{s}"})
        draws = [(0, 0, control, 60), (1, 0, offer, 60), (1, 1, repeat, 4)]
        for exp, bucket, p, n in draws:
            counts = rng.multinomial(n, p)
            rows += [(s, exp, bucket, lv, c) for lv, c in enumerate(counts) if c > 0]
            if bucket == 1:
                repeat_counts.append(counts)
        truth.append(repeat)
    tree = fit(levels, rows, experiences=("none", "offer"), control="none")
    paths = [["", f"a={lv['a']}", f"a={lv['a']}|b={lv['b']}"] for lv in levels]
    return tree, np.array(truth), np.array(repeat_counts, dtype=float), paths


def test_fatigue_weight_is_recovered_and_repeats_borrow_from_fresh_cells() -> None:
    tree, truth, repeat_counts, paths = fatigued_world(seed=3)
    assert 0.2 <= tree.fatigue[1] <= 0.6
    fitted = np.array([tree.cell(path, "offer", 1)[0] for path in paths])
    error = ((posterior.dirichlet_mean(fitted) - truth) ** 2).sum(axis=1).mean()
    raw = ((posterior.dirichlet_mean(repeat_counts + 1.0) - truth) ** 2).sum(axis=1).mean()
    assert error < 0.5 * raw


def test_without_a_control_repeats_shrink_toward_the_fresh_cell() -> None:
    levels = [{"a": "s0", "b": "s0"}]
    rows = [(0, 0, 0, 1, 50.0), (0, 0, 0, 0, 10.0)]
    tree = fit(levels, rows)
    assert tree.fatigue[1] == 1.0
    fresh, _ = tree.cell(["", "a=s0", "a=s0|b=s0"], "x", 0)
    repeat, _ = tree.cell(["", "a=s0", "a=s0|b=s0"], "x", 1)
    assert np.allclose(posterior.dirichlet_mean(repeat), posterior.dirichlet_mean(fresh))


def test_evidence_order_puts_the_informative_attribute_first() -> None:
    rng = np.random.default_rng(4)
    levels, counts = [], []
    for matters in range(3):
        for noise in range(4):
            levels.append({"matters": f"m{matters}", "noise": f"n{noise}"})
            p = [[0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]][matters]
            counts.append([rng.multinomial(200, p), rng.multinomial(200, p[::-1])])
    order = hierarchy.evidence_order(levels, np.array(counts, dtype=float), ["noise", "matters"])
    assert order == ["matters", "noise"]
    assert hierarchy.evidence_order(levels, np.zeros((12, 2, 3)), ["noise"], max_depth=0) == []
