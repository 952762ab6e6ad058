"""Off-policy estimators against an independent implementation and against known truth."""

from __future__ import annotations

import numpy as np
import pytest

from engine import _world, ope
from engine.simulate import make_world


def reference(
    method: str,
    r: list[float],
    mu: list[float],
    pi: list[list[float]],
    a: list[int],
    q: list[list[float]],
    clip: float | None,
) -> tuple[float, float]:
    """The module docstring's formulas, written out with plain loops."""
    n = len(r)
    w = [pi[i][a[i]] / mu[i] for i in range(n)]
    if clip is not None:
        w = [min(x, clip) for x in w]
    if method == "snips":
        total = sum(w)
        value = sum(w[i] * r[i] for i in range(n)) / total
        se = sum(w[i] ** 2 * (r[i] - value) ** 2 for i in range(n)) ** 0.5 / total
        return value, se
    if method == "ips":
        terms = [w[i] * r[i] for i in range(n)]
    else:
        terms = [
            sum(pi[i][k] * q[i][k] for k in range(len(pi[i]))) + w[i] * (r[i] - q[i][a[i]])
            for i in range(n)
        ]
    mean = sum(terms) / n
    variance = sum((t - mean) ** 2 for t in terms) / (n - 1)
    return mean, (variance / n) ** 0.5


@pytest.mark.parametrize("clip", [None, 5.0])
@pytest.mark.parametrize("method", ope.METHODS)
def test_estimators_match_an_independent_implementation(method: str, clip: float | None) -> None:
    rng = np.random.default_rng(11)
    n, k = 400, 4
    mu_all = rng.dirichlet(np.ones(k), n) * 0.8 + 0.05
    a = np.array([rng.choice(k, p=p / p.sum()) for p in mu_all])
    mu = (mu_all / mu_all.sum(axis=1, keepdims=True))[np.arange(n), a]
    pi = rng.dirichlet(np.ones(k) * 0.5, n)
    r = rng.normal(50, 20, n)
    q = rng.normal(50, 5, (n, k))
    got = ope.estimate(
        method,
        rewards=r,
        propensities=mu,
        target=pi,
        chosen=a,
        direct=q,
        clip=clip,  # type: ignore[arg-type]
    )
    value, se = reference(
        method, r.tolist(), mu.tolist(), pi.tolist(), a.tolist(), q.tolist(), clip
    )
    assert got.status == "ok"
    assert got.value == pytest.approx(value, abs=1e-9)
    assert got.se == pytest.approx(se, abs=1e-9)
    w = np.minimum(pi[np.arange(n), a] / mu, clip or np.inf)
    assert got.ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), abs=1e-9)


def simulated_log(seed: int, n: int = 3000) -> dict[str, np.ndarray]:
    """Decisions logged by the simulator's agent policy (known propensities) on first
    exposures before the drift: contexts, choices, realised net values, and the truth table."""
    world = make_world(0)
    rng = np.random.default_rng(seed)
    leaves = _world.leaf_index(_world.sample_attributes(n, rng))
    mu_all = _world.logging_probs(leaves, rng)
    cumulative = np.cumsum(mu_all, axis=1)
    a = (rng.random(n)[:, None] >= cumulative[:, :-1]).sum(axis=1)
    probs = world.probs_table[0, 0, a, leaves]
    levels = world.draw_results(probs, rng)
    return {
        "rewards": world.net_values[a, levels],
        "propensities": mu_all[np.arange(n), a],
        "chosen": a,
        "values": world.value_table[0, 0][:, leaves].T,  # (n, K): true expected net values
        "rng_noise": rng.normal(0, 15, (n, mu_all.shape[1])),
    }


def test_intervals_cover_the_true_policy_value() -> None:
    """Over 100 seeds, the 95% intervals of SNIPS and DR contain the true value of two target
    policies (everyone gets retention_email; the per-leaf best) at least 90% of the time."""
    covered = {("snips", "email"): 0, ("dr", "email"): 0, ("snips", "best"): 0, ("dr", "best"): 0}
    covered |= {("ips", "email"): 0, ("ips", "best"): 0}
    world = make_world(0)
    email = [e.key for e in world.experiences].index("retention_email")
    seeds = range(100)
    for seed in seeds:
        log = simulated_log(seed)
        n, k = log["values"].shape
        targets = {"email": np.zeros((n, k)), "best": np.zeros((n, k))}
        targets["email"][:, email] = 1.0
        targets["best"][np.arange(n), log["values"].argmax(axis=1)] = 1.0
        direct = log["values"] + log["rng_noise"]  # an imperfect direct model
        for name, target in targets.items():
            truth = float((target * log["values"]).sum(axis=1).mean())
            for method in ("ips", "snips", "dr"):
                e = ope.estimate(
                    method,  # type: ignore[arg-type]
                    rewards=log["rewards"],
                    propensities=log["propensities"],
                    target=target,
                    chosen=log["chosen"],
                    direct=direct,
                )
                assert e.status == "ok" and e.ci95 is not None
                covered[(method, name)] += e.ci95[0] <= truth <= e.ci95[1]
    rates = {key: hits / len(seeds) for key, hits in covered.items()}
    print("coverage of 95% intervals over 100 seeds:", rates)
    for (method, _), rate in rates.items():
        if method in ("snips", "dr"):
            assert rate >= 0.90, rates


def test_cannot_estimate_answers() -> None:
    n = 100
    rewards, chosen = np.ones(n), np.zeros(n, dtype=np.int64)
    target = np.tile([0.0, 1.0], (n, 1))
    few = ope.estimate(
        "ips",
        rewards=rewards[:10],
        propensities=np.ones(10) / 2,
        target=target[:10],
        chosen=chosen[:10],
    )
    assert few.status == "cannot_estimate" and "at least 30" in (few.reason or "")
    zero = ope.estimate(
        "snips", rewards=rewards, propensities=np.zeros(n), target=target, chosen=chosen
    )
    assert zero.status == "cannot_estimate" and "propensity" in (zero.reason or "")
    disjoint = ope.estimate(
        "dr",
        rewards=rewards,
        propensities=np.ones(n) / 2,
        target=target,
        chosen=chosen,
        direct=np.zeros((n, 2)),
    )
    assert disjoint.status == "cannot_estimate" and "no overlap" in (disjoint.reason or "")
    assert disjoint.value is None
