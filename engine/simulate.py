"""A seeded retention world with ground truth, an oracle, historical logs and a policy runner.

Ground truth (tables in ``engine._world``): a multinomial logit over churned (0) / retained (100) /
upgraded (160) with churn as reference, p ∝ exp([0, r, r + u]), r the log-odds of staying and u of
upgrading rather than staying. It depends on a customer only through the binned leaf of plan x
tenure x region x spend x complaints x paperless (648 leaves; a premium x west x tenure leaf holds
about 0.2% of customers), so a leaf-level learner can in principle reach the oracle.

- Base churn is high for new (<12 months) basic customers (28%) and for complainers (3+: 50-65%),
  low (2-5%) for long-tenure (36+) customers.
- Best experience with no earlier exposure, before the drift: discount_10 for new basic customers
  without complaints; free_month for new customers with 1-2 complaints (a bad first bill);
  callback_senior for complainers (3+) past their first year; loyalty_points for mid-tenure basic
  and plus customers; upgrade_offer for basic customers spending 30+ (they outgrow the plan);
  retention_email for premium customers under 36 months; no_offer for long-tenure customers with
  fewer than 3 complaints, who stay anyway so any offer only costs money (about 20% of customers).
- Fatigue: an experience's effect on the logits is multiplied by 1.0, 0.4, 0.1 after 0, 1, 2+
  earlier exposures of the same customer to it (costs are not), so repeats move to no_offer and
  retention_email.
- Drift at ``drift_day`` (day 100 of 180): a competitor undercuts the basic plan. Basic customers
  churn more, discount_10 loses most of its effect and discount_20 gains, so the best experience of
  new basic customers (and of mid-tenure basic complainers; about 20% of traffic in all) becomes
  discount_20. Time matters only through this step.
- The seed adds N(0, 0.05) noise to every leaf's base log-odds and effects.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engine import _world
from engine._world import SimExperience
from engine.attributes import AttributeSpec

__all__ = [
    "EpsilonGreedySegment",
    "OraclePolicy",
    "Policy",
    "SegmentThompson",
    "SimExperience",
    "SimReport",
    "UniformRandom",
    "World",
    "compare_policies",
    "make_world",
    "run_policy",
]

DEFAULT_END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
"""Default time of the end of a historical log."""


@dataclass(frozen=True, eq=False)
class World:
    """A simulated customer base with known result distributions. Build it with ``make_world``.

    probs_table: shape (2 phases, 3 exposure buckets, K, leaves, L); value_table: its expected net
    values, shape (2, 3, K, leaves); net_values: value(level) - cost if incurred, shape (K, L).
    """

    seed: int
    levels: tuple[str, ...]
    level_values: np.ndarray
    attributes: tuple[AttributeSpec, ...]
    experiences: tuple[SimExperience, ...]
    drift_day: float
    horizon_days: float
    net_values: np.ndarray
    probs_table: np.ndarray
    value_table: np.ndarray

    @property
    def control_index(self) -> int:
        return next(k for k, exp in enumerate(self.experiences) if exp.is_control)

    def leaf_index(self, attrs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The ground-truth leaf of each customer: shape (n,)."""
        return _world.leaf_index(attrs)

    def true_probs(
        self,
        attrs: Sequence[Mapping[str, Any]],
        exp_index: np.ndarray,
        exposures: np.ndarray,
        t: np.ndarray,
    ) -> np.ndarray:
        """True result probabilities: shape (n, L).

        exp_index, exposures (earlier exposures to that experience), t (days): shape (n,).
        """
        leaves, exp_index, buckets, phases = self._index(attrs, exp_index, exposures, t)
        probs: np.ndarray = self.probs_table[phases, buckets, exp_index, leaves]
        return probs

    def true_net_value(
        self,
        attrs: Sequence[Mapping[str, Any]],
        exp_index: np.ndarray,
        exposures: np.ndarray,
        t: np.ndarray,
    ) -> np.ndarray:
        """Expected net value sum_l p_l (value_l - cost_l): shape (n,); arguments as true_probs."""
        leaves, exp_index, buckets, phases = self._index(attrs, exp_index, exposures, t)
        values: np.ndarray = self.value_table[phases, buckets, exp_index, leaves]
        return values

    def oracle(
        self, attrs: Sequence[Mapping[str, Any]], exposures: np.ndarray, t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best experience per customer given its exposures (shape (n, K)) and t (shape (n,)).

        Returns best_index shape (n,), best_value shape (n,), values shape (n, K).
        """
        k = len(self.experiences)
        exposures = np.asarray(exposures)
        if exposures.shape != (len(attrs), k):
            raise ValueError(
                f"exposures must have shape ({len(attrs)}, {k}), got {exposures.shape}"
            )
        if exposures.size and exposures.min() < 0:
            raise ValueError(f"exposures must be >= 0, got {exposures.min()}")
        leaves = _world.leaf_index(attrs)
        phases = self._phases(_vector("t", t, len(attrs)))
        buckets = np.minimum(exposures.astype(np.int64), 2)
        values: np.ndarray = self.value_table[
            phases[:, None], buckets, np.arange(k)[None, :], leaves[:, None]
        ]
        best = np.argmax(values, axis=1)
        return best, values[np.arange(len(attrs)), best], values

    def sample_customers(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Draw ``n`` customers' attribute dicts (no customer_id)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return _world.sample_attributes(n, rng)

    def draw_results(self, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw one level index per row of ``probs`` (shape (n, L)): shape (n,)."""
        cumulative = np.cumsum(probs, axis=1)
        draws = rng.random(probs.shape[0]) * cumulative[:, -1]
        levels: np.ndarray = (draws[:, None] >= cumulative[:, :-1]).sum(axis=1)
        return levels

    def historical_log(
        self,
        n_customers: int,
        n_triples: int,
        rng: np.random.Generator,
        *,
        days: float = _world.HORIZON_DAYS,
        end: dt.datetime = DEFAULT_END,
        truth: bool = False,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Customers and time-sorted triples logged by a non-uniform agent policy over ``days``.

        Customers: {"customer_id": "c-00001", "attributes": {...}}. Triples: {"customer_id",
        "experience", "result", "occurred_at" (UTC, the last day ends at ``end``), "day" (days since
        world start, 0..days)}. Customers visit at heterogeneous rates, so many get repeats; results
        are drawn from the truth with each customer's earlier exposures to the experience. With
        ``truth`` each triple also carries "exposures", "propensity" and "expected_net_value".
        """
        if n_customers < 1:
            raise ValueError(f"n_customers must be >= 1, got {n_customers}")
        if n_triples < 0:
            raise ValueError(f"n_triples must be >= 0, got {n_triples}")
        if not days > 0:
            raise ValueError(f"days must be > 0, got {days}")
        if end.tzinfo is None:
            raise ValueError(f"end must be timezone-aware, got {end!r}")
        attrs = _world.sample_attributes(n_customers, rng)
        leaves = _world.leaf_index(attrs)
        propensities = _world.logging_probs(leaves, rng)
        activity = rng.gamma(2.0, 1.0, n_customers)
        who = rng.choice(n_customers, size=n_triples, p=activity / activity.sum())
        day = np.sort(rng.uniform(0.0, days, n_triples))
        cumulative = np.cumsum(propensities[who], axis=1)
        what = (rng.random(n_triples)[:, None] >= cumulative[:, :-1]).sum(axis=1)
        earlier = _world.prior_exposures(who, what, len(self.experiences))
        buckets, phases = np.minimum(earlier, 2), self._phases(day)
        levels = self.draw_results(self.probs_table[phases, buckets, what, leaves[who]], rng)

        ids = [f"c-{i + 1:05d}" for i in range(n_customers)]
        customers = [{"customer_id": ids[i], "attributes": attrs[i]} for i in range(n_customers)]
        keys, names = [e.key for e in self.experiences], self.levels
        start = end - dt.timedelta(days=days)
        triples = [
            {
                "customer_id": ids[c],
                "experience": keys[e],
                "result": names[lv],
                "occurred_at": start + dt.timedelta(days=d),
                "day": d,
            }
            for c, e, lv, d in zip(
                who.tolist(), what.tolist(), levels.tolist(), day.tolist(), strict=True
            )
        ]
        if truth:
            values = self.value_table[phases, buckets, what, leaves[who]]
            chosen = propensities[who, what]
            for i, triple in enumerate(triples):
                triple["exposures"] = int(earlier[i])
                triple["propensity"] = float(chosen[i])
                triple["expected_net_value"] = float(values[i])
        return customers, triples

    def _phases(self, t: np.ndarray) -> np.ndarray:
        phases: np.ndarray = (t >= self.drift_day).astype(np.int64)
        return phases

    def _index(
        self,
        attrs: Sequence[Mapping[str, Any]],
        exp_index: np.ndarray,
        exposures: np.ndarray,
        t: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n = len(attrs)
        exp_arr = _vector("exp_index", exp_index, n)
        exp_counts = _vector("exposures", exposures, n)
        times = _vector("t", t, n)
        k = len(self.experiences)
        bad = exp_arr[(exp_arr < 0) | (exp_arr >= k)]
        if bad.size:
            raise ValueError(f"exp_index must be in [0, {k}), got {bad[0]}")
        if exp_counts.size and exp_counts.min() < 0:
            raise ValueError(f"exposures must be >= 0, got {exp_counts.min()}")
        buckets = np.minimum(exp_counts.astype(np.int64), 2)
        return _world.leaf_index(attrs), exp_arr.astype(np.int64), buckets, self._phases(times)


def _vector(name: str, value: np.ndarray | float, n: int) -> np.ndarray:
    """``value`` as shape (n,): a scalar is repeated; any other shape is an error naming it."""
    array = np.asarray(value)
    if array.ndim == 0:
        return np.full(n, array)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    return array


def make_world(seed: int = 0) -> World:
    """The simulated world for ``seed``; the same seed always gives the same world."""
    probs = _world.probability_table(np.random.default_rng(seed))
    net = _world.net_values()
    values = np.einsum("pbknl,kl->pbkn", probs, net)
    level_values = np.array(_world.LEVEL_VALUES)
    for array in (probs, net, values, level_values):
        array.flags.writeable = False
    return World(
        seed=seed,
        levels=_world.LEVELS,
        level_values=level_values,
        attributes=_world.ATTRIBUTES,
        experiences=_world.EXPERIENCES,
        drift_day=_world.DRIFT_DAY,
        horizon_days=_world.HORIZON_DAYS,
        net_values=net,
        probs_table=probs,
        value_table=values,
    )


class Policy(Protocol):
    """A decision policy under test. ``exposures`` (shape (K,)) are counts before this decision.

    The realised net value of an update is ``world.net_values[chosen, level]``.
    """

    def choose(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, rng: np.random.Generator
    ) -> int: ...

    def update(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, chosen: int, level: int
    ) -> None: ...


@dataclass(frozen=True)
class SimReport:
    """Outcome of ``run_policy``. Regret uses expected values, so it is low-noise.

    regret = sum_i (oracle value_i - chosen value_i), both the truth's expected net value for the
    customer's exposures at decision i (a myopic oracle: it ignores the fatigue its own choice
    causes later). early_post_drift covers the first ``window`` decisions from the drift, last the
    final ``window`` decisions after the drift; per-decision figures are None where a window is
    empty. wasted_offer_share: decisions choosing an offer where the oracle's best was the
    control, over all decisions. oracle_best_share: decisions whose choice is worth as much as the
    oracle's.
    """

    policy: str
    n_decisions: int
    drift_decision: int
    cumulative_net_value: float
    expected_net_value: float
    oracle_value: float
    regret: float
    regret_per_decision: float | None
    regret_per_decision_pre_drift: float | None
    regret_per_decision_post_drift: float | None
    regret_per_decision_early_post_drift: float | None
    regret_per_decision_last: float | None
    window: int
    wasted_offer_share: float | None
    oracle_best_share: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_policy(
    world: World,
    policy: Policy,
    *,
    n_decisions: int,
    rng: np.random.Generator,
    n_customers: int = 5000,
    window: int = 2000,
) -> SimReport:
    """Run ``policy`` in the loop for ``n_decisions`` with time running from 0 to the horizon.

    Customers are drawn uniformly with repeats from a pool of ``n_customers``, so exposures grow;
    ``window`` decisions right after the drift and at the end give the early and late regret.
    """
    if n_decisions < 1:
        raise ValueError(f"n_decisions must be >= 1, got {n_decisions}")
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    k = len(world.experiences)
    customers = world.sample_customers(n_customers, rng)
    leaves = world.leaf_index(customers)
    visits = rng.integers(0, n_customers, n_decisions)
    times = world.horizon_days * np.arange(n_decisions) / n_decisions
    phases = world._phases(times)
    uniforms = rng.random(n_decisions)
    exposures = np.zeros((n_customers, k), dtype=np.int64)
    arms = np.arange(k)
    chosen_values = np.empty(n_decisions)
    best_values = np.empty(n_decisions)
    realised = np.empty(n_decisions)
    wasted = np.zeros(n_decisions, dtype=bool)
    control = world.control_index
    for i in range(n_decisions):
        c, phase, t = visits[i], phases[i], float(times[i])
        seen = exposures[c].copy()
        seen.flags.writeable = False
        buckets = np.minimum(seen, 2)
        values = world.value_table[phase, buckets, arms, leaves[c]]
        chosen = int(policy.choose(customers[c], seen, t, rng))
        if not 0 <= chosen < k:
            raise ValueError(f"policy chose experience {chosen}; valid indices are 0..{k - 1}")
        probs = world.probs_table[phase, buckets[chosen], chosen, leaves[c]]
        level = int(np.searchsorted(np.cumsum(probs)[:-1], uniforms[i], side="right"))
        policy.update(customers[c], seen, t, chosen, level)
        exposures[c, chosen] += 1
        best = int(np.argmax(values))
        chosen_values[i], best_values[i] = values[chosen], values[best]
        realised[i] = world.net_values[chosen, level]
        wasted[i] = best == control and chosen != control
    regrets = best_values - chosen_values
    drift = int(np.searchsorted(times, world.drift_day, side="left"))

    def mean(a: np.ndarray) -> float | None:
        return float(a.mean()) if a.size else None

    return SimReport(
        policy=str(getattr(policy, "name", type(policy).__name__)),
        n_decisions=n_decisions,
        drift_decision=drift,
        cumulative_net_value=float(realised.sum()),
        expected_net_value=float(chosen_values.sum()),
        oracle_value=float(best_values.sum()),
        regret=float(regrets.sum()),
        regret_per_decision=mean(regrets),
        regret_per_decision_pre_drift=mean(regrets[:drift]),
        regret_per_decision_post_drift=mean(regrets[drift:]),
        regret_per_decision_early_post_drift=mean(regrets[drift : drift + window]),
        regret_per_decision_last=mean(regrets[max(drift, n_decisions - window) :]),
        window=window,
        wasted_offer_share=mean(wasted),
        oracle_best_share=mean(regrets <= 1e-9),
    )


def _leaf_key(specs: Sequence[AttributeSpec], attrs: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(spec.bin(attrs.get(spec.name)) for spec in specs)


class UniformRandom:
    """Chooses every experience with the same probability."""

    name = "uniform_random"

    def __init__(self, world: World) -> None:
        self._k = len(world.experiences)

    def choose(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, rng: np.random.Generator
    ) -> int:
        return int(rng.integers(self._k))

    def update(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, chosen: int, level: int
    ) -> None:
        return None


class EpsilonGreedySegment:
    """Per leaf segment, the experience with the best mean realised net value; explores with
    probability ``epsilon`` and tries every experience once in a leaf before exploiting."""

    name = "epsilon_greedy_segment"

    def __init__(self, world: World, *, epsilon: float = 0.1) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon
        self._specs = world.attributes
        self._net_values = world.net_values
        self._k = len(world.experiences)
        self._leaf_to_counts: dict[tuple[str, ...], np.ndarray] = {}
        self._leaf_to_sums: dict[tuple[str, ...], np.ndarray] = {}

    def choose(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, rng: np.random.Generator
    ) -> int:
        if rng.random() < self.epsilon:
            return int(rng.integers(self._k))
        key = _leaf_key(self._specs, attrs)
        counts = self._leaf_to_counts.get(key)
        if counts is None:
            return int(rng.integers(self._k))
        untried = np.flatnonzero(counts == 0)
        if untried.size:
            return int(rng.choice(untried))
        return int(np.argmax(self._leaf_to_sums[key] / counts))

    def update(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, chosen: int, level: int
    ) -> None:
        key = _leaf_key(self._specs, attrs)
        if key not in self._leaf_to_counts:
            self._leaf_to_counts[key] = np.zeros(self._k)
            self._leaf_to_sums[key] = np.zeros(self._k)
        self._leaf_to_counts[key][chosen] += 1
        self._leaf_to_sums[key][chosen] += self._net_values[chosen, level]


class SegmentThompson:
    """Thompson sampling on expected net value with an independent Dirichlet(1, ..., 1) per leaf
    segment x experience over the levels: no pooling, no exposure awareness, no decay."""

    name = "segment_thompson"

    def __init__(self, world: World) -> None:
        self._specs = world.attributes
        self._net_values = world.net_values
        self._shape = world.net_values.shape
        self._leaf_to_alpha: dict[tuple[str, ...], np.ndarray] = {}

    def choose(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, rng: np.random.Generator
    ) -> int:
        alpha = self._leaf_to_alpha.get(_leaf_key(self._specs, attrs))
        draws = rng.gamma(np.ones(self._shape) if alpha is None else alpha)
        values = (draws * self._net_values).sum(axis=1) / draws.sum(axis=1)
        return int(np.argmax(values))

    def update(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, chosen: int, level: int
    ) -> None:
        key = _leaf_key(self._specs, attrs)
        alpha = self._leaf_to_alpha.setdefault(key, np.ones(self._shape))
        alpha[chosen, level] += 1.0


class OraclePolicy:
    """Chooses the truth's best experience for the customer's exposures: zero regret."""

    name = "oracle"

    def __init__(self, world: World) -> None:
        self._world = world

    def choose(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, rng: np.random.Generator
    ) -> int:
        best, _, _ = self._world.oracle([attrs], np.asarray(exposures)[None, :], np.array([t]))
        return int(best[0])

    def update(
        self, attrs: Mapping[str, Any], exposures: np.ndarray, t: float, chosen: int, level: int
    ) -> None:
        return None


def compare_policies(
    world: World, policies: Sequence[Policy], *, n_decisions: int, seed: int
) -> list[SimReport]:
    """Run every policy on the same world and the same random stream (seed)."""
    return [
        run_policy(world, policy, n_decisions=n_decisions, rng=np.random.default_rng(seed))
        for policy in policies
    ]
