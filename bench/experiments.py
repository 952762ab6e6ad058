"""Experiment benchmark: simulated experiments with a known best arm, through the service's
assignment, allocation and stopping code (experiments.simulate). Prints one JSON object.

- adaptive vs fixed: over SEEDS seeds, how often each stops by the rule and names the true best
  arm, the customers it took, and the share of customers sent to worse arms;
- fixed split: the chi-square p-value of the arm counts against the weights 1:2:3 (6,000
  customers, no stopping), per seed, and how many fall under 0.05 (about 5% expected);
- sample-ratio test: how often it flags a healthy experiment, and a broken one that loses 20%
  of one arm's results.

    python bench/experiments.py [--seeds 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import stats
from experiments.simulate import run_experiment

ARMS = ["no_offer", "discount", "callback"]
PROBS = np.array([[0.32, 0.58, 0.10], [0.20, 0.68, 0.12], [0.27, 0.62, 0.11]])
NET = np.array([[0, 100, 160], [0, 90, 150], [-12, 88, 148]], dtype=float)
BEST = 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    started = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {"adaptive": [], "fixed": []}
    for seed in range(args.seeds):
        for allocation in runs:
            run = run_experiment(
                arms=ARMS,
                probs=PROBS,
                net=NET,
                allocation=allocation,
                seed=seed,
                max_customers=30_000,
            )
            per_arm = np.array(run.per_arm)
            runs[allocation].append(
                {
                    "stopped": run.stopped,
                    "correct": run.decisive and run.leader == ARMS[BEST],
                    "customers": run.customers,
                    "worse_share": 1 - per_arm[BEST] / per_arm.sum(),
                    "regret": float(
                        (PROBS * NET).sum(1)[BEST] * run.customers
                        - ((PROBS * NET).sum(1) * per_arm).sum()
                    ),
                }
            )
    fixed_p = []
    srm_healthy = srm_broken = 0
    rng = np.random.default_rng(0)
    for seed in range(args.seeds):
        run = run_experiment(
            arms=ARMS,
            probs=PROBS,
            net=NET,
            allocation="fixed",
            seed=seed,
            max_customers=6000,
            weights=[1, 2, 3],
            stop=False,
        )
        expected = np.array([1, 2, 3]) / 6 * 6000
        fixed_p.append(float(sps.chisquare(run.per_arm, expected).pvalue))
        healthy = stats.sample_ratio_test(run.per_arm, expected.tolist())
        srm_healthy += bool(healthy and healthy.mismatch)
        lossy = np.array(run.per_arm)
        lossy[2] = rng.binomial(lossy[2], 0.8)  # one arm loses 20% of its results
        broken = stats.sample_ratio_test(lossy.tolist(), expected.tolist())
        srm_broken += bool(broken and broken.mismatch)

    def summary(rows: list[dict[str, float]]) -> dict[str, float]:
        return {
            "stopped": sum(r["stopped"] for r in rows) / len(rows),
            "found_best": sum(r["correct"] for r in rows) / len(rows),
            "median_customers": float(np.median([r["customers"] for r in rows])),
            "mean_worse_arm_share": round(float(np.mean([r["worse_share"] for r in rows])), 4),
            "mean_regret_per_customer": round(
                float(np.mean([r["regret"] / r["customers"] for r in rows])), 4
            ),
        }

    print(
        json.dumps(
            {
                "seeds": args.seeds,
                "true_net_values": dict(
                    zip(ARMS, (PROBS * NET).sum(1).round(2).tolist(), strict=True)
                ),
                "stopping": {"p_best": 0.95, "expected_loss": 1.0, "burn_in": 100},
                "adaptive": summary(runs["adaptive"]),
                "fixed_equal_split": summary(runs["fixed"]),
                "fixed_1_2_3": {
                    "customers": 6000,
                    "chi2_p_values_median": round(float(np.median(fixed_p)), 4),
                    "share_p_below_0.05": sum(p < 0.05 for p in fixed_p) / len(fixed_p),
                },
                "sample_ratio_test": {
                    "healthy_flagged": srm_healthy / args.seeds,
                    "broken_flagged": srm_broken / args.seeds,
                },
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
