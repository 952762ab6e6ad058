"""Policy-model benchmark: how far the simulator's regret moves with the *model* (the engine's
hierarchical Dirichlet tree against an effect-sharing multinomial logit) and with the *exploration*
(Thompson sampling against the posterior mean). Prints one JSON object.

The logit model is a prototype, not the engine's policy: per experience, a Bayesian multinomial
logit (churn the reference level) on the one-hot bins of the six attributes, the interactions
tenure x complaints and plan x spend, and exposure-bucket terms; N(0, 1.5^2) priors (intercepts
N(0, 5^2)); Laplace posterior refitted every 250 decisions by Newton's method, results weighted by
the same 90-day half-life; 2% uniform exploration like the engine. Its features are functions of
the finest segment and the exposure bucket, so the service could fit it from the stored cell
counts (CellStats are sufficient statistics for it).

``scale`` multiplies the posterior's standard deviation in the Thompson draw: 1 is Thompson
sampling, 0 the posterior mean (greedy). Slow (a Python loop per decision, about 30-70 s a run).

    python bench/policy_models.py [--seeds 1,2,3,4,5] [--scales 1,0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import _world
from engine.policy import HierarchicalThompson
from engine.simulate import UniformRandom, World, make_world, run_policy

PRIOR_SD = 1.5
INTERCEPT_SD = 5.0


def features(attrs: Mapping[str, Any], bucket: int) -> np.ndarray:
    """Design row of one customer and exposure bucket: shape (D,)."""
    codes = np.unravel_index(_world.leaf_index([attrs])[0], _world.LEAF_SHAPE)
    row = [1.0]
    for code, n in zip(codes, _world.LEAF_SHAPE, strict=True):
        row += [float(code == j) for j in range(1, n)]
    tenure_complaints = codes[1] * 3 + codes[4]
    plan_spend = codes[0] * 3 + codes[3]
    row += [float(tenure_complaints == j) for j in range(1, 9)]
    row += [float(plan_spend == j) for j in range(1, 9)]
    row += [float(bucket == 1), float(bucket >= 2)]
    return np.array(row)


class LogitThompson:
    """Per-experience Bayesian multinomial logit, Laplace posterior, Thompson draws scaled."""

    name = "logit"

    def __init__(self, world: World, *, scale: float, explore: float = 0.02) -> None:
        self._net = world.net_values
        self._k = len(world.experiences)
        self._scale = scale
        self._explore = explore
        self._rows: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(self._k)]
        self._since = 10**9
        self._posteriors: list[tuple[np.ndarray, np.ndarray]] = []

    def _fit(self, now: float) -> list[tuple[np.ndarray, np.ndarray]]:
        d = len(features(_world.sample_attributes(1, np.random.default_rng(0))[0], 0))
        precision = np.full(d, PRIOR_SD**-2)
        precision[0] = INTERCEPT_SD**-2
        out = []
        for rows in self._rows:
            beta = np.zeros((2, d))
            hessian = np.diag(np.tile(precision, 2))
            if rows:
                x = np.array([r[0] for r in rows])
                y = np.eye(3)[[r[1] for r in rows]][:, 1:]
                w = 2.0 ** (-(now - np.array([r[2] for r in rows])) / 90.0)
                for _ in range(8):
                    eta = np.concatenate([np.zeros((len(x), 1)), x @ beta.T], axis=1)
                    p = np.exp(eta - eta.max(axis=1, keepdims=True))
                    p = (p / p.sum(axis=1, keepdims=True))[:, 1:]
                    grad = ((y - p) * w[:, None]).T @ x - beta * precision
                    hessian = np.diag(np.tile(precision, 2))
                    for a in range(2):
                        for c in range(2):
                            wac = w * p[:, a] * (float(a == c) - p[:, c])
                            hessian[a * d : (a + 1) * d, c * d : (c + 1) * d] += (
                                x * wac[:, None]
                            ).T @ x
                    beta = beta + np.linalg.solve(hessian, grad.ravel()).reshape(2, d)
            cov = np.linalg.inv(hessian)
            out.append((beta.ravel(), np.linalg.cholesky((cov + cov.T) / 2 + 1e-9 * np.eye(2 * d))))
        return out

    def choose(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, rng: np.random.Generator
    ) -> int:
        if rng.random() < self._explore:
            return int(rng.integers(self._k))
        if self._since >= 250:
            self._posteriors, self._since = self._fit(t), 0
        values = []
        for k, (mean, chol) in enumerate(self._posteriors):
            beta = mean + self._scale * (chol @ rng.standard_normal(len(mean)))
            eta = np.concatenate([[0.0], beta.reshape(2, -1) @ features(attrs, int(exposures[k]))])
            p = np.exp(eta - eta.max())
            values.append(float(p @ self._net[k]) / float(p.sum()))
        return int(np.argmax(values))

    def update(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, chosen: int, level: int
    ) -> None:
        self._rows[chosen].append((features(attrs, int(exposures[chosen])), level, t))
        self._since += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--scales", default="1,0")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    started = time.perf_counter()
    rows: dict[str, list[float]] = {}
    for seed in seeds:
        world = make_world(seed)

        def ratio(policy: Any, world: World = world, seed: int = seed) -> float:
            report = run_policy(world, policy, n_decisions=20000, rng=np.random.default_rng(seed))
            return report.regret

        uniform = ratio(UniformRandom(world))
        tree = HierarchicalThompson(
            specs=world.attributes,
            experiences=[e.key for e in world.experiences],
            net_values=world.net_values,
            order=None,
            control=world.control_index,
        )
        rows.setdefault("tree_thompson", []).append(round(ratio(tree) / uniform, 3))
        for scale in scales:
            name = f"logit_scale_{scale:g}"
            rows.setdefault(name, []).append(
                round(ratio(LogitThompson(world, scale=scale)) / uniform, 3)
            )
    summary = {
        name: {"by_seed": r, "mean": round(float(np.mean(r)), 3)} for name, r in rows.items()
    }
    print(
        json.dumps(
            {
                "seeds": seeds,
                "decisions": 20000,
                "regret_vs_uniform": summary,
                "seconds": round(time.perf_counter() - started),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
