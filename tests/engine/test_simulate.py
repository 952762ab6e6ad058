"""Tests of the simulated retention world: truth, oracle, historical log, runner and baselines."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from engine.simulate import (
    EpsilonGreedySegment,
    OraclePolicy,
    SegmentThompson,
    UniformRandom,
    World,
    make_world,
    run_policy,
)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(0)


@pytest.fixture(scope="module")
def customers(world: World) -> list[dict[str, Any]]:
    return world.sample_customers(20_000, np.random.default_rng(7))


def _keys(world: World) -> list[str]:
    return [e.key for e in world.experiences]


def _customer(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "plan": "basic",
        "tenure_months": 5.0,
        "region": "north",
        "monthly_spend": 20.0,
        "complaints_90d": 0.0,
        "paperless": False,
    }
    return base | changes


def test_world_layout(world: World) -> None:
    assert world.levels == ("churned", "retained", "upgraded")
    assert world.level_values.tolist() == [0.0, 100.0, 160.0]
    assert [a.name for a in world.attributes] == [
        "plan",
        "tenure_months",
        "region",
        "monthly_spend",
        "complaints_90d",
        "paperless",
    ]
    assert _keys(world) == [
        "no_offer",
        "retention_email",
        "loyalty_points",
        "discount_10",
        "discount_20",
        "free_month",
        "callback_senior",
        "upgrade_offer",
    ]
    assert [e.key for e in world.experiences if e.is_control] == ["no_offer"]
    # callback always costs 12; a discount costs nothing when the customer churns
    assert world.net_values[6].tolist() == [-12.0, 88.0, 148.0]
    assert world.net_values[3].tolist() == [0.0, 92.0, 152.0]
    assert world.net_values[7].tolist() == [0.0, 100.0, 155.0]
    assert 0 < world.drift_day < world.horizon_days


def test_world_is_deterministic_for_a_seed() -> None:
    a, b, c = make_world(3), make_world(3), make_world(4)
    assert np.array_equal(a.probs_table, b.probs_table)
    assert not np.array_equal(a.probs_table, c.probs_table)
    log_a = a.historical_log(50, 300, np.random.default_rng(1))
    log_b = b.historical_log(50, 300, np.random.default_rng(1))
    assert log_a == log_b
    report_a = run_policy(a, SegmentThompson(a), n_decisions=500, rng=np.random.default_rng(2))
    report_b = run_policy(b, SegmentThompson(b), n_decisions=500, rng=np.random.default_rng(2))
    assert report_a == report_b


def test_customers_are_json_like_and_some_leaves_are_sparse(
    world: World, customers: list[dict[str, Any]]
) -> None:
    json.dumps(customers[:100])
    first = customers[0]
    assert isinstance(first["tenure_months"], float)
    assert isinstance(first["monthly_spend"], float)
    assert isinstance(first["complaints_90d"], float)
    assert isinstance(first["paperless"], bool)
    plan_tenure_region = Counter(
        (c["plan"], world.attributes[1].bin(c["tenure_months"]), c["region"]) for c in customers
    )
    shares = np.array(list(plan_tenure_region.values())) / len(customers)
    assert len(plan_tenure_region) == 36
    assert shares.min() < 0.01
    assert shares.max() > 0.05


def test_probabilities_are_a_distribution(world: World, customers: list[dict[str, Any]]) -> None:
    rng = np.random.default_rng(0)
    n = len(customers)
    probs = world.true_probs(
        customers,
        rng.integers(0, 8, n),
        rng.integers(0, 4, n),
        rng.uniform(0, world.horizon_days, n),
    )
    assert probs.shape == (n, 3)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert ((probs > 0) & (probs < 1)).all()
    assert ((world.probs_table > 0) & (world.probs_table < 1)).all()


def test_true_net_value_is_the_expectation_of_net_values(
    world: World, customers: list[dict[str, Any]]
) -> None:
    rng = np.random.default_rng(1)
    n = 500
    args = (customers[:n], rng.integers(0, 8, n), rng.integers(0, 3, n), rng.uniform(0, 180, n))
    expected = (world.true_probs(*args) * world.net_values[args[1]]).sum(axis=1)
    assert np.allclose(world.true_net_value(*args), expected)


def test_oracle_sometimes_chooses_no_offer_and_varies(
    world: World, customers: list[dict[str, Any]]
) -> None:
    n = len(customers)
    best, best_values, values = world.oracle(customers, np.zeros((n, 8), dtype=int), np.zeros(n))
    assert values.shape == (n, 8)
    assert np.array_equal(best_values, values.max(axis=1))
    share_no_offer = float(np.mean(best == world.control_index))
    assert 0.05 <= share_no_offer <= 0.40
    assert len(set(best.tolist())) >= 4


def test_oracle_best_depends_on_segment(world: World) -> None:
    people = [
        _customer(),
        _customer(plan="premium", tenure_months=60.0, monthly_spend=95.0),
        _customer(tenure_months=20.0, complaints_90d=5.0),
        _customer(tenure_months=20.0, monthly_spend=45.0),
    ]
    best, _, _ = world.oracle(people, np.zeros((4, 8), dtype=int), np.zeros(4))
    assert [_keys(world)[i] for i in best] == [
        "discount_10",
        "no_offer",
        "callback_senior",
        "upgrade_offer",
    ]


def test_fatigue_shrinks_the_effect_of_a_repeated_experience(
    world: World, customers: list[dict[str, Any]]
) -> None:
    n = 2000
    people = customers[:n]
    t = np.zeros(n)
    control = world.true_probs(people, np.zeros(n, dtype=int), np.zeros(n), t)
    for k in range(1, 8):
        effects = []
        for exposures in (0, 1, 2, 5):
            probs = world.true_probs(people, np.full(n, k), np.full(n, exposures), t)
            effects.append(np.abs(probs - control).sum(axis=1))
        moved = effects[0] > 1e-9
        assert moved.mean() > 0.5, world.experiences[k].key
        assert (effects[1][moved] < 0.75 * effects[0][moved]).all()
        assert (effects[2][moved] < 0.5 * effects[1][moved]).all()
        assert np.array_equal(effects[2], effects[3])  # bucket 2+


def test_the_drift_changes_the_best_experience_of_new_basic_customers(world: World) -> None:
    people = [_customer(region=r) for r in ("north", "south", "east", "west")]
    zero = np.zeros((4, 8), dtype=int)
    before, _, _ = world.oracle(people, zero, np.full(4, world.drift_day - 1))
    after, _, _ = world.oracle(people, zero, np.full(4, world.drift_day))
    assert {_keys(world)[i] for i in before} == {"discount_10"}
    assert {_keys(world)[i] for i in after} == {"discount_20"}


def test_drift_moves_a_sizeable_share_of_customers(
    world: World, customers: list[dict[str, Any]]
) -> None:
    n = len(customers)
    zero = np.zeros((n, 8), dtype=int)
    before, _, _ = world.oracle(customers, zero, np.full(n, 0.0))
    after, _, _ = world.oracle(customers, zero, np.full(n, world.horizon_days))
    assert np.mean(before != after) > 0.1


def test_draw_results_follows_the_probabilities(world: World) -> None:
    probs = np.tile([0.2, 0.5, 0.3], (60_000, 1))
    levels = world.draw_results(probs, np.random.default_rng(3))
    shares = np.bincount(levels, minlength=3) / len(levels)
    assert np.allclose(shares, [0.2, 0.5, 0.3], atol=0.01)


def _slow_exposure_counts(triples: list[dict[str, Any]]) -> list[int]:
    seen: Counter[tuple[str, str]] = Counter()
    counts = []
    for triple in triples:
        key = (triple["customer_id"], triple["experience"])
        counts.append(seen[key])
        seen[key] += 1
    return counts


def test_historical_log_counts_exposures_per_customer_and_experience(world: World) -> None:
    customers, triples = world.historical_log(20, 600, np.random.default_rng(5), truth=True)
    assert len(customers) == 20
    assert customers[0]["customer_id"] == "c-00001"
    days = [tr["day"] for tr in triples]
    assert days == sorted(days)
    counts = _slow_exposure_counts(triples)
    assert [tr["exposures"] for tr in triples] == counts
    assert max(counts) >= 2


def test_historical_log_shape_and_logging_policy(world: World) -> None:
    end = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    customers, triples = world.historical_log(2000, 20_000, np.random.default_rng(6), truth=True)
    assert set(triples[0]) == {
        "customer_id",
        "experience",
        "result",
        "occurred_at",
        "day",
        "exposures",
        "propensity",
        "expected_net_value",
    }
    _, plain = world.historical_log(10, 10, np.random.default_rng(6))
    assert set(plain[0]) == {"customer_id", "experience", "result", "occurred_at", "day"}
    assert all(tr["occurred_at"].tzinfo is not None for tr in triples[:10])
    assert end - dt.timedelta(days=1) < triples[-1]["occurred_at"] <= end
    assert triples[0]["day"] < world.drift_day < triples[-1]["day"]
    assert {tr["experience"] for tr in triples} == set(_keys(world))
    assert {tr["result"] for tr in triples} == set(world.levels)
    assert all(0 < tr["propensity"] < 1 for tr in triples)
    # not uniform: agents give callbacks to customers who complain
    by_complaints = Counter(
        (
            customers[int(tr["customer_id"][2:]) - 1]["attributes"]["complaints_90d"] >= 3,
            tr["experience"] == "callback_senior",
        )
        for tr in triples
    )
    rate_angry = by_complaints[True, True] / (
        by_complaints[True, True] + by_complaints[True, False]
    )
    rate_calm = by_complaints[False, True] / (
        by_complaints[False, True] + by_complaints[False, False]
    )
    assert rate_angry > 2 * rate_calm


def test_historical_log_size(world: World) -> None:
    _, triples = world.historical_log(5000, 50_000, np.random.default_rng(8))
    assert len(triples) == 50_000


def test_thompson_beats_uniform_and_the_oracle_has_no_regret() -> None:
    world = make_world(1)
    uniform = run_policy(
        world, UniformRandom(world), n_decisions=20_000, rng=np.random.default_rng(1)
    )
    thompson = run_policy(
        world, SegmentThompson(world), n_decisions=20_000, rng=np.random.default_rng(1)
    )
    assert uniform.regret > 1.1 * thompson.regret > 0
    assert thompson.drift_decision == 11_112
    assert thompson.regret_per_decision_early_post_drift is not None
    json.dumps(thompson.as_dict())

    oracle = run_policy(world, OraclePolicy(world), n_decisions=3000, rng=np.random.default_rng(1))
    assert oracle.regret == 0.0
    assert oracle.oracle_best_share == 1.0
    assert oracle.wasted_offer_share == 0.0
    assert oracle.expected_net_value == oracle.oracle_value


def test_epsilon_greedy_learns_something() -> None:
    world = make_world(1)
    rng = np.random.default_rng(2)
    greedy = run_policy(world, EpsilonGreedySegment(world), n_decisions=5000, rng=rng)
    uniform = run_policy(world, UniformRandom(world), n_decisions=5000, rng=rng)
    assert greedy.regret < uniform.regret


def test_report_windows_without_a_post_drift_period() -> None:
    world = make_world(0)
    report = run_policy(world, UniformRandom(world), n_decisions=1, rng=np.random.default_rng(0))
    assert report.drift_decision == 1
    assert report.regret_per_decision_post_drift is None
    assert report.regret_per_decision_early_post_drift is None
    assert report.regret_per_decision_pre_drift == report.regret_per_decision


class _Invalid:
    def choose(self, attrs: Any, exposures: np.ndarray, t: float, rng: np.random.Generator) -> int:
        return 8

    def update(self, attrs: Any, exposures: np.ndarray, t: float, chosen: int, level: int) -> None:
        return None


_W = make_world(0)
_ONE = [_customer()]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: _W.sample_customers(-1, np.random.default_rng()), "n must be >= 0, got -1"),
        (
            lambda: _W.true_probs(_ONE, np.array([8]), np.array([0]), np.array([0.0])),
            "exp_index must be in [0, 8), got 8",
        ),
        (
            lambda: _W.true_probs(_ONE, np.array([0, 1]), np.array([0]), np.array([0.0])),
            "exp_index must have shape (1,), got (2,)",
        ),
        (
            lambda: _W.true_net_value(_ONE, np.array([0]), np.array([-1]), np.array([0.0])),
            "exposures must be >= 0, got -1",
        ),
        (
            lambda: _W.oracle(_ONE, np.zeros((1, 7)), np.array([0.0])),
            "exposures must have shape (1, 8), got (1, 7)",
        ),
        (
            lambda: _W.oracle([_customer(plan="gold")], np.zeros((1, 8)), np.array([0.0])),
            "plan must be one of basic, plus, premium, got 'gold'",
        ),
        (
            lambda: _W.oracle([{"plan": "basic"}], np.zeros((1, 8)), np.array([0.0])),
            "every customer needs attribute 'tenure_months'",
        ),
        (
            lambda: _W.historical_log(0, 10, np.random.default_rng()),
            "n_customers must be >= 1, got 0",
        ),
        (
            lambda: _W.historical_log(5, 10, np.random.default_rng(), days=0.0),
            "days must be > 0, got 0.0",
        ),
        (
            lambda: _W.historical_log(5, 10, np.random.default_rng(), end=dt.datetime(2026, 1, 1)),
            "end must be timezone-aware, got datetime.datetime(2026, 1, 1, 0, 0)",
        ),
        (
            lambda: run_policy(_W, UniformRandom(_W), n_decisions=0, rng=np.random.default_rng()),
            "n_decisions must be >= 1, got 0",
        ),
        (
            lambda: run_policy(_W, _Invalid(), n_decisions=5, rng=np.random.default_rng()),
            "policy chose experience 8; valid indices are 0..7",
        ),
        (lambda: EpsilonGreedySegment(_W, epsilon=1.5), "epsilon must be in [0, 1], got 1.5"),
    ],
)
def test_bad_input(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()
