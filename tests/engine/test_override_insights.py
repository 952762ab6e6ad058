"""Override analytics kernels against closed forms and a simulation with a known gap; customer
value concentration and groups with no good action on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.customer_value import concentration
from engine.no_good_action import no_good_action
from engine.override_insights import AgentDecision, difference_ci, mean_ci, summarize, wilson

Z = 1.959963984540054


def test_wilson_interval_closed_form() -> None:
    # 3 of 10: the textbook Wilson 95% interval is 0.108 to 0.603.
    found = wilson(3, 10)
    assert found["rate"] == 0.3
    assert found["ci95"] == pytest.approx([0.1078, 0.6032], abs=1e-4)
    assert wilson(0, 20)["ci95"][0] == 0.0  # never below 0, still an interval above it
    assert wilson(0, 20)["ci95"][1] == pytest.approx(Z**2 / (20 + Z**2), abs=1e-4)
    assert wilson(0, 0) == {"rate": None, "ci95": None}


def test_mean_and_difference_intervals() -> None:
    found = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = Z * math.sqrt(5 / 3) / 2  # sd = sqrt(5/3), n = 4
    assert found == {"n": 4, "mean": 2.5, "ci95": pytest.approx([2.5 - half, 2.5 + half], abs=1e-4)}
    assert mean_ci([7.0]) == {"n": 1, "mean": 7.0, "ci95": None}
    assert mean_ci([]) == {"n": 0, "mean": None, "ci95": None}
    diff = difference_ci([1.0, 2.0, 3.0, 4.0], [0.0, 2.0])
    half = Z * math.sqrt((5 / 3) / 4 + 2.0 / 2)
    assert diff["mean"] == 1.5
    assert diff["ci95"] == pytest.approx([1.5 - half, 1.5 + half], abs=1e-4)
    assert difference_ci([1.0], [1.0, 2.0]) == {"mean": None, "ci95": None}


def _row(agent: str, overridden: bool, realised: float | None, engine: float, reason: str | None = None, agent_pick: float | None = None) -> AgentDecision:  # fmt: skip
    return AgentDecision(agent, overridden, reason, realised, engine, agent_pick)


def test_summary_on_known_decisions() -> None:
    rows = [
        _row("a-1", False, 100.0, 90.0),
        _row("a-1", False, 80.0, 90.0),
        _row("a-1", True, 140.0, 90.0, "customer_request", 70.0),
        _row("a-2", True, 0.0, 60.0, "retention_risk", 50.0),
        _row("a-2", True, 120.0, 60.0, "customer_request", 50.0),
        _row("a-2", False, None, 60.0),  # no outcome yet: in the rate, not in the value
    ]
    report = summarize(rows)
    assert (report["decisions"], report["overrides"]) == (6, 3)
    assert report["override_rate"]["rate"] == 0.5
    agents = {a["agent"]: a for a in report["by_agent"]}
    assert (agents["a-1"]["decisions"], agents["a-1"]["overrides"]) == (3, 1)
    assert agents["a-2"]["rate"] == pytest.approx(2 / 3, abs=1e-4)
    reasons = [(r["reason_code"], r["overrides"], r["share"]) for r in report["by_reason"]]
    assert reasons == [("customer_request", 2, 0.6667), ("retention_risk", 1, 0.3333)]
    value = report["value"]
    # gaps of the overrides: 140 - 90, 0 - 60, 120 - 60 = 50, -60, 60; of the followed: 10, -10
    assert value["overridden"]["gap"]["mean"] == pytest.approx(50 / 3, abs=1e-4)
    assert value["overridden"]["realised"]["mean"] == pytest.approx(260 / 3, abs=1e-4)
    assert value["overridden"]["agent_expected"]["mean"] == pytest.approx(170 / 3, abs=1e-4)
    assert value["followed"]["gap"] == {"n": 2, "mean": 0.0, "ci95": pytest.approx([-Z * 10, Z * 10], abs=1e-4)}  # fmt: skip
    assert value["gap_difference"]["mean"] == pytest.approx(50 / 3, abs=1e-4)
    assert "Observational" in report["note"]


def test_gap_interval_covers_a_known_gap() -> None:
    """Overrides whose results beat the engine's estimate by a true 12 on average (noise sd 40):
    the 95% interval of the gap covers 12 in about 95% of repetitions."""
    rng = np.random.default_rng(3)
    covered = 0
    repetitions = 400
    for _ in range(repetitions):
        engine = rng.uniform(50, 120, 60)
        realised = engine + 12 + rng.normal(0, 40, 60)
        rows = [
            _row("a", True, float(r), float(q), "x") for r, q in zip(realised, engine, strict=True)
        ]
        low, high = summarize(rows)["value"]["overridden"]["gap"]["ci95"]
        covered += low <= 12 <= high
    assert 0.92 <= covered / repetitions <= 0.98


def test_concentration_closed_forms() -> None:
    equal = concentration(np.ones(10), 0.2)
    assert equal["top_share"] == 0.2
    assert [p["value"] for p in equal["curve"]] == pytest.approx([q / 10 for q in range(1, 11)])
    one = concentration(np.array([10.0, 0, 0, 0, 0]), 0.2)
    assert one["top_share"] == 1.0
    pareto = concentration(np.array([80.0] + [20 / 9] * 9), 0.2)  # top 2 of 10
    assert pareto["top_share"] == pytest.approx((80 + 20 / 9) / 100, abs=1e-4)
    assert concentration(np.array([-5.0, 2.0]), 0.2)["top_share"] is None  # no positive total


def test_no_good_action_finds_control_wins_and_money_losers() -> None:
    def exp(key: str, value: float, p_best: float) -> dict[str, object]:
        return {"experience": key, "expected_net_value": value, "ci90": [value - 5, value + 5], "p_best": p_best, "n": 10.0}  # fmt: skip

    report = {
        "nodes": [
            {"segment": "", "depth": 0, "experiences": [exp("no_offer", 50, 0.1), exp("discount", 70, 0.9)]},
            {"segment": "plan=premium", "depth": 1, "experiences": [exp("no_offer", 90, 0.85), exp("discount", 80, 0.15)]},
            {"segment": "plan=basic", "depth": 1, "experiences": [exp("no_offer", -30, 0.3), exp("discount", -10, 0.7)]},
        ]
    }  # fmt: skip
    found = {f["segment"]: f for f in no_good_action(report, control="no_offer")}
    assert set(found) == {"plan=premium", "plan=basic"}
    premium = found["plan=premium"]
    assert (premium["control_wins"], premium["all_offers_lose"], premium["settled"]) == (
        True,
        False,
        True,
    )
    assert premium["best_offer_gain"] == -10
    basic = found["plan=basic"]
    assert (basic["control_wins"], basic["all_offers_lose"]) == (False, True)
    assert basic["reasons"] == ["every offer loses money"]
