"""Dirichlet kernels against closed forms and Monte Carlo truth; invariants with Hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine import posterior


def test_conjugate_update_matches_closed_form() -> None:
    # Prior Dirichlet(1, 1, 1) and counts (6, 3, 1): posterior Dirichlet(7, 4, 2), mean 7/13 ...
    alpha = np.array([[1.0, 1.0, 1.0]]) + np.array([[6.0, 3.0, 1.0]])
    assert posterior.dirichlet_mean(alpha) == pytest.approx(np.array([[7, 4, 2]]) / 13)
    net = np.array([[10.0, 5.0, 0.0]])
    mean, var = posterior.net_value_moments(alpha, net)
    # E[v] = sum m_l v_l; Var[v] = (sum m_l v_l^2 - E[v]^2) / (a0 + 1)
    m = np.array([7, 4, 2]) / 13
    expected_mean = (m * net[0]).sum()
    expected_var = ((m * net[0] ** 2).sum() - expected_mean**2) / 14
    assert mean[0] == pytest.approx(expected_mean, rel=1e-12)
    assert var[0] == pytest.approx(expected_var, rel=1e-12)


def test_draws_agree_with_closed_form_moments() -> None:
    rng = np.random.default_rng(11)
    alpha = np.array([[7.0, 4.0, 2.0], [0.5, 0.5, 3.0]])
    net = np.array([[10.0, 5.0, 0.0], [-2.0, 8.0, 20.0]])
    draws = posterior.dirichlet_draws(alpha, 200_000, rng)
    assert draws.shape == (200_000, 2, 3)
    values = np.einsum("skl,kl->sk", draws, net)
    mean, var = posterior.net_value_moments(alpha, net)
    assert values.mean(axis=0) == pytest.approx(mean, abs=0.02)
    assert values.var(axis=0) == pytest.approx(var, rel=0.02)


def test_summary_p_best_and_loss_on_a_clear_winner() -> None:
    rng = np.random.default_rng(3)
    alpha = np.array([[900.0, 100.0], [500.0, 500.0]])
    net = np.array([[10.0, 0.0], [10.0, 0.0]])
    draws = np.einsum("skl,kl->sk", posterior.dirichlet_draws(alpha, 4000, rng), net)
    summary = posterior.summarize(alpha, net, draws)
    assert summary.p_best.tolist() == [1.0, 0.0]
    assert summary.expected_loss[0] == 0.0
    assert summary.expected_loss[1] == pytest.approx(4.0, abs=0.05)
    assert summary.ci_low[0] < 9.0 < summary.ci_high[0]


@settings(max_examples=60, deadline=None)
@given(
    alpha=arrays(np.float64, (4, 3), elements=st.floats(0.01, 500.0)),
    net=arrays(np.float64, (4, 3), elements=st.floats(-100.0, 100.0)),
    explore=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**32 - 1),
)
def test_invariants(alpha: np.ndarray, net: np.ndarray, explore: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    draws = posterior.dirichlet_draws(alpha, 500, rng)
    assert np.allclose(draws.sum(axis=-1), 1.0)
    assert (draws >= 0).all()
    values = np.einsum("skl,kl->sk", draws, net)
    summary = posterior.summarize(alpha, net, values)
    assert summary.p_best.sum() == pytest.approx(1.0)
    assert (summary.expected_loss >= -1e-9).all()
    for chosen in range(4):
        propensity = posterior.thompson_propensity(summary.p_best, chosen, explore=explore)
        assert explore / 4 - 1e-12 <= propensity <= 1.0 + 1e-12
    # A rule that lets only some experiences compete: P(best) among them sums to 1, zero outside,
    # and the policy's propensities (rule-restricted Thompson mixed with uniform) sum to 1.
    allowed = sorted({seed % 4, (seed // 4) % 4})
    among = posterior.p_best_among(values, allowed)
    assert among.sum() == pytest.approx(1.0)
    assert all(among[k] == 0 for k in range(4) if k not in allowed)
    total = sum(posterior.thompson_propensity(among, k, explore=explore) for k in range(4))
    assert total == pytest.approx(1.0)
