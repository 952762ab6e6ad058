"""Simulated experiments with a known best arm, through the service's allocation and stopping
code: adaptive allocation finds the best arm, stops by the rule and spends less traffic on worse
arms than a fixed split."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from experiments.simulate import run_experiment

ARMS = ["no_offer", "discount", "callback"]
PROBS = np.array([[0.32, 0.58, 0.10], [0.20, 0.68, 0.12], [0.27, 0.62, 0.11]])
NET = np.array([[0, 100, 160], [0, 90, 150], [-12, 88, 148]], dtype=float)
BEST = "discount"  # true net values 74.0, 79.2, 67.6


def test_adaptive_finds_the_best_arm_stops_and_spares_worse_arms() -> None:
    worse_share = {"adaptive": [], "fixed": []}
    found = 0
    for seed in range(8):
        for allocation in ("adaptive", "fixed"):
            run = run_experiment(
                arms=ARMS,
                probs=PROBS,
                net=NET,
                allocation=allocation,
                seed=seed,
                max_customers=20_000,
            )
            assert run.stopped, run.as_dict()
            per_arm = np.array(run.per_arm)
            worse_share[allocation].append(1 - per_arm[ARMS.index(BEST)] / per_arm.sum())
            if allocation == "adaptive":
                found += run.leader == BEST and run.decisive
    assert found >= 7
    assert np.mean(worse_share["adaptive"]) < np.mean(worse_share["fixed"]) - 0.1
    assert np.mean(worse_share["fixed"]) > 0.6  # an equal split gives worse arms 2/3


def test_a_fixed_split_reproduces_its_weights() -> None:
    run = run_experiment(
        arms=ARMS,
        probs=PROBS,
        net=NET,
        allocation="fixed",
        seed=3,
        max_customers=6000,
        weights=[1, 2, 3],
        stop=False,
    )
    expected = np.array([1, 2, 3]) / 6 * 6000
    assert sps.chisquare(run.per_arm, expected).pvalue > 0.001


def test_the_guardrail_metric_stops_a_harmful_arm() -> None:
    harmful = PROBS.copy()
    harmful[2] = [0.45, 0.47, 0.08]  # callback loses far more customers than control
    run = run_experiment(
        arms=ARMS,
        probs=harmful,
        net=NET,
        allocation="fixed",
        seed=5,
        max_customers=3000,
        control="no_offer",
        guardrail={"level": "L0", "margin": 0.0, "probability": 0.99},
        stop=False,
    )
    evidence = run.evidence
    late = evidence.arm[-1000:]
    assert (late == ARMS.index("callback")).sum() == 0
