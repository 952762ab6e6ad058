"""Experiment kernels against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import betaln

from experiments import stats


def p_b_beats_a(a1: int, b1: int, a2: int, b2: int) -> float:
    """P(X2 > X1) for X1 ~ Beta(a1, b1), X2 ~ Beta(a2, b2), integer a2 (closed form)."""
    total = 0.0
    for i in range(a2):
        total += np.exp(
            betaln(a1 + i, b1 + b2) - np.log(b2 + i) - betaln(1 + i, b2) - betaln(a1, b1)
        )
    return float(total)


def test_mean_and_p_best_match_closed_forms() -> None:
    # Two levels valued 0 and 1: an arm's value is its share of the second level, a Beta.
    counts = np.array([[60.0, 40.0], [52.0, 48.0]])
    net = np.array([[0.0, 1.0], [0.0, 1.0]])
    draws = stats.value_draws(counts, net, np.random.default_rng(1), draws=200_000)
    summary = stats.summarize_arms(draws, control=0)
    alpha = counts + stats.PRIOR
    assert summary.mean == pytest.approx(alpha[:, 1] / alpha.sum(axis=1), abs=2e-3)
    exact = p_b_beats_a(41, 61, 49, 53)
    assert summary.p_best[1] == pytest.approx(exact, abs=5e-3)
    assert summary.p_best.sum() == pytest.approx(1.0)
    assert summary.uplift_mean is not None
    assert summary.uplift_mean[1] == pytest.approx(49 / 102 - 41 / 102, abs=2e-3)
    # Expected loss: E[max - v]; the leader's is the smaller.
    assert summary.expected_loss[1] < summary.expected_loss[0]


def test_harm_probability_matches_the_beta_comparison() -> None:
    counts = np.array([[70.0, 30.0], [60.0, 40.0]])  # level 0 is "churned"
    harm = stats.harm_probability(counts, 0, 0, 0.0, np.random.default_rng(2), draws=200_000)
    # P(share_1 > share_0) where share ~ Beta(1 + churned, 1 + rest).
    exact = p_b_beats_a(71, 31, 61, 41)
    assert harm[1] == pytest.approx(exact, abs=5e-3)
    assert harm[0] == 0.0


def test_adaptive_weights_keep_floor_and_holdout() -> None:
    p_best = np.array([0.0, 1.0, 0.0])
    active = np.array([True, True, True])
    w = stats.adaptive_weights(p_best, active, min_share=0.05, holdout_share=0.2, control=0)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.2 + 0.8 * 0.05)
    assert w[2] == pytest.approx(0.8 * 0.05)
    stopped = stats.adaptive_weights(
        p_best, np.array([True, True, False]), min_share=0.1, holdout_share=0.0, control=0
    )
    assert stopped[2] == 0.0
    assert stopped.sum() == pytest.approx(1.0)


def test_sample_ratio_test() -> None:
    fine = stats.sample_ratio_test([503, 497], [500.0, 500.0])
    assert fine is not None and not fine.mismatch
    broken = stats.sample_ratio_test([560, 440], [500.0, 500.0])
    assert broken is not None and broken.mismatch and broken.p_value < 0.001
    assert stats.sample_ratio_test([2, 1], [1.5, 1.5]) is None  # too few to test
