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


def additive_world(seed: int, interaction: float = 0.0, sizes=(6, 8, 5)):
    """Crossed attributes a, b, c whose main effects add on the logits of the levels (plus a x b
    interactions of sd ``interaction``), 1 to 14 fresh results per finest segment. Returns the
    levels, the rows for fit, the truth (S, L) and each segment's path."""
    rng = np.random.default_rng(seed)
    effects = [rng.normal(0.0, 0.6, (n, 2)) for n in sizes]
    pairs = rng.normal(0.0, interaction, (sizes[0], sizes[1], 2))
    levels, rows, truth, paths = [], [], [], []
    for a, b, c in np.ndindex(*sizes):
        logits = np.r_[
            0.0, [1.0, -1.0] + effects[0][a] + effects[1][b] + effects[2][c] + pairs[a, b]
        ]
        p = np.exp(logits) / np.exp(logits).sum()
        s = len(levels)
        levels.append({"a": f"a{a}", "b": f"b{b}", "c": f"c{c}"})
        counts = rng.multinomial(int(rng.integers(1, 15)), p)
        rows += [(s, 0, 0, level, n) for level, n in enumerate(counts) if n > 0]
        truth.append(p)
        paths.append(["", f"a=a{a}", f"a=a{a}|b=b{b}", f"a=a{a}|b=b{b}|c=c{c}"])
    return levels, rows, np.array(truth), paths


def test_the_additive_model_recovers_known_effects() -> None:
    rng = np.random.default_rng(7)
    levels = [{"a": f"a{a}", "b": f"b{b}"} for a in range(3) for b in range(4)]
    design = hierarchy.additive_design(levels)
    assert design.shape == (12, 1 + 3 + 4)
    beta = np.array(
        [[0.5, 0.4, 0.0, -0.6, 0.3, 0.0, -0.4, 0.2], [-1.5, 0.0, 0.5, 0.2, 0.0, -0.3, 0.4, 0.1]]
    )
    repeat_effect = np.array([-0.5, -0.2])  # exposure bucket 1 against bucket 0
    counts = np.zeros((12, 1, 3, 3))
    truth = []
    for s in range(12):
        logits = design[s] @ beta.T
        truth.append(np.exp(np.r_[0.0, logits]) / np.exp(np.r_[0.0, logits]).sum())
        repeat = np.exp(np.r_[0.0, logits + repeat_effect])
        counts[s, 0, 0] = rng.multinomial(4000, truth[-1])
        counts[s, 0, 1] = rng.multinomial(1000, repeat / repeat.sum())
    fit = hierarchy.fit_additive_logit(design, counts)
    fitted = fit.fresh_probs(design, np.broadcast_to(fit.beta[0], (12, *fit.beta.shape[1:])))
    assert np.abs(fitted - np.array(truth)).max() < 0.02
    # the bucket term is the repeats' own: it comes out near the truth, not in the attributes
    assert fit.beta[0, :, -2] == pytest.approx(repeat_effect, abs=0.1)
    # converged: the log posterior's gradient vanishes at the fit
    precision = np.full(fit.x.shape[1], hierarchy.EFFECT_PRIOR_SD**-2.0)
    precision[0] = hierarchy.INTERCEPT_PRIOR_SD**-2.0
    gradient = fit.residual[0].T @ fit.x - fit.beta[0] * precision
    assert np.abs(gradient).max() < 1e-6


def test_a_cell_prior_leaves_out_the_cell_own_results() -> None:
    levels, rows, _, _ = additive_world(seed=2, sizes=(3, 4, 2))
    finest = np.zeros((len(levels), 1, 3, 3))
    for s, _, bucket, level, n in rows:
        finest[s, 0, bucket, level] += n
    paths = hierarchy.node_paths(levels, ["a", "b", "c"])
    rows_of_segment = [np.unique([p[d] for p in paths], return_inverse=True)[1] for d in range(4)]
    predictions, strengths = hierarchy._additive_base(levels, finest, rows_of_segment)
    design = hierarchy.additive_design(levels)
    for s in (0, 5, 17):
        without = finest.copy()
        without[s] = 0.0
        refit = hierarchy.fit_additive_logit(design, without)
        expected = refit.fresh_probs(design[s : s + 1], refit.beta[0][None])[0]
        assert predictions[3][rows_of_segment[3][s], 0] == pytest.approx(expected, abs=0.01)
    assert (strengths[3] > 0).all()


def test_the_additive_base_shares_effects_across_branches_and_intervals_cover(monkeypatch) -> None:
    def leaf_fit(seed: int):
        levels, rows, truth, paths = additive_world(seed)
        tree = fit(levels, rows, order=("a", "b", "c"))
        alpha = np.array([tree.cell(path, "x", 0)[0] for path in paths])
        return tree, alpha, truth

    rng = np.random.default_rng(0)
    errors, hits, cells = [], 0, 0
    for seed in range(4):
        tree, alpha, truth = leaf_fit(seed)
        assert tree.base_weights[2, 0] >= 0.75  # the a x b nodes lean on the additive model
        value = truth @ VALUES
        errors.append(((posterior.dirichlet_mean(alpha) @ VALUES - value) ** 2).mean())
        draws = posterior.dirichlet_draws(alpha, 2000, rng) @ VALUES
        low, high = np.quantile(draws, [0.05, 0.95], axis=0)
        hits += int(((low <= value) & (value <= high)).sum())
        cells += len(value)
    assert 0.85 <= hits / cells <= 0.95
    # the tree alone (weight 0) on the same worlds
    monkeypatch.setattr(hierarchy, "BASE_WEIGHT_GRID", np.array([0.0]))
    alone = []
    for seed in range(4):
        _, alpha, truth = leaf_fit(seed)
        alone.append(((posterior.dirichlet_mean(alpha) @ VALUES - truth @ VALUES) ** 2).mean())
    assert np.mean(errors) < 0.6 * np.mean(alone), (np.mean(errors), np.mean(alone))
