"""Ground-truth tables of the simulated retention world (private to ``engine.simulate``).

Truth depends on a customer only through the binned leaf of the six attributes, so the whole model
is a table ``probs[phase, bucket, experience, leaf, level]`` built once per seed. The rules that
fill it are here; ``engine.simulate`` documents them for users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.attributes import AttributeSpec

LEVELS = ("churned", "retained", "upgraded")
LEVEL_VALUES = (0.0, 100.0, 160.0)

ATTRIBUTES = (
    AttributeSpec("plan", "categorical", levels=("basic", "plus", "premium")),
    AttributeSpec("tenure_months", "numeric", bins=(12.0, 36.0)),
    AttributeSpec("region", "categorical", levels=("north", "south", "east", "west")),
    AttributeSpec("monthly_spend", "numeric", bins=(30.0, 80.0)),
    AttributeSpec("complaints_90d", "numeric", bins=(1.0, 3.0)),
    AttributeSpec("paperless", "boolean"),
)
LEAF_SHAPE = (3, 3, 4, 3, 3, 2)
"""Codes per attribute in ``ATTRIBUTES`` order; paperless code 1 means True."""
N_LEAVES = int(np.prod(LEAF_SHAPE))

PLAN_SHARES = (0.62, 0.28, 0.10)
REGION_SHARES = (0.45, 0.30, 0.18, 0.07)
# Skewed on purpose: premium x west x one tenure bin is about 0.2% of customers, so a leaf-only
# learner sees almost nothing there while its parents are well observed.

FATIGUE = (1.0, 0.4, 0.1)
"""Multiplier of an experience's effect after 0, 1, 2+ earlier exposures to it."""
DRIFT_DAY = 100.0
HORIZON_DAYS = 180.0
JITTER_SD = 0.05
"""Seeded noise on every leaf's logits, small enough to keep the designed best experiences."""


@dataclass(frozen=True)
class SimExperience:
    """An experience of the simulated world; ``cost_on`` empty means the cost is always incurred."""

    key: str
    name: str
    cost: float
    cost_on: tuple[str, ...]
    is_control: bool = False


_KEEP = ("retained", "upgraded")
EXPERIENCES = (
    SimExperience("no_offer", "No offer", 0.0, (), is_control=True),
    SimExperience("retention_email", "Retention email", 0.5, ()),
    SimExperience("loyalty_points", "Loyalty points", 4.0, _KEEP),
    SimExperience("discount_10", "10% discount", 8.0, _KEEP),
    SimExperience("discount_20", "20% discount", 16.0, _KEEP),
    SimExperience("free_month", "Free month", 25.0, _KEEP),
    SimExperience("callback_senior", "Callback from a senior agent", 12.0, ()),
    SimExperience("upgrade_offer", "Upgrade offer", 5.0, ("upgraded",)),
)
(NO_OFFER, EMAIL, POINTS, DISC10, DISC20, FREE_MONTH, CALLBACK, UPGRADE) = range(len(EXPERIENCES))


def net_values() -> np.ndarray:
    """Net value of each experience and level: shape (K, L); value(level) - cost if incurred."""
    values = np.array(LEVEL_VALUES)
    table = np.empty((len(EXPERIENCES), len(LEVELS)))
    for k, exp in enumerate(EXPERIENCES):
        incurred = np.array([not exp.cost_on or level in exp.cost_on for level in LEVELS])
        table[k] = values - exp.cost * incurred
    return table


def _leaf_grid() -> tuple[np.ndarray, ...]:
    """Attribute codes of every leaf, each shape (N_LEAVES,), in ``np.ravel_multi_index`` order."""
    grids = np.meshgrid(*(np.arange(n) for n in LEAF_SHAPE), indexing="ij")
    return tuple(g.ravel() for g in grids)


def probability_table(rng: np.random.Generator) -> np.ndarray:
    """True result probabilities: shape (2 phases, 3 buckets, K, N_LEAVES, L).

    Multinomial logit with churn as reference: p ∝ exp([0, r, r + u]) with r = a_ret + f_b d_ret
    and u = a_up + f_b d_up, where a_* are the leaf's base log-odds (stay vs churn, upgrade vs
    stay), d_* the experience's effects and f_b the fatigue factor of the exposure bucket.
    """
    plan, tenure, region, spend, complaints, paperless = _leaf_grid()
    basic, premium = plan == 0, plan == 2
    base_ret = (
        1.7
        + np.array([-0.4, 0.0, 0.6])[plan]
        + np.array([-0.7, 0.0, 1.2])[tenure]
        + np.array([0.0, -0.1, 0.1, -0.4])[region]
        + np.array([0.3, -0.3, -1.3])[complaints]
    )
    # Log-odds of upgrading rather than staying on the plan: basic customers who already spend
    # 30+ are outgrowing their plan; premium customers have little to upgrade to.
    base_up = -2.0 + np.array([0.3, 0.0, -1.5])[plan] + np.array([-0.5, 0.0, 0.3])[spend]
    # Drift: a competitor launches a cheaper basic plan. Basic customers churn more, a 10% discount
    # no longer matches the competitor's price and a 20% one does.
    drift_ret = np.where(basic, -0.4, 0.0)

    k = len(EXPERIENCES)
    d_ret = np.zeros((2, k, N_LEAVES))
    d_up = np.zeros((2, k, N_LEAVES))
    complaining, new = complaints >= 1, tenure == 0
    d_ret[:, EMAIL] = np.where((paperless == 1) & (tenure < 2), 0.25, 0.03)
    d_ret[:, POINTS] = np.where(tenure == 1, 0.55, 0.3) + np.where(plan == 1, 0.2, 0.0)
    # Complainers care about service more than price.
    price = np.where(spend == 0, 0.15, 0.0) - np.where(complaining, 0.3, 0.0)
    d_ret[:, DISC10] = np.array([0.8, 0.5, 0.3])[plan] + price
    d_ret[1, DISC10] -= np.where(basic, 0.45, 0.0)
    d_ret[:, DISC20] = np.array([1.1, 0.8, 0.5])[plan] + price
    d_ret[1, DISC20] += np.where(basic, 0.7, 0.0)
    # A free month repairs a bad first bill: strong for new customers who already complain.
    d_ret[:, FREE_MONTH] = np.where(new & complaining, 2.6, 0.9) + np.where(premium, 0.4, 0.0)
    d_ret[:, CALLBACK] = np.array([0.05, 0.7, 1.9])[complaints]
    outgrowing = (basic & (spend >= 1)) | ((plan == 1) & (spend == 2))
    d_up[:, UPGRADE] = np.where(premium, 0.0, np.where(outgrowing, 1.0, 0.1))
    # A sales pitch annoys: worse for customers who complain.
    d_ret[:, UPGRADE] = np.where(premium, 0.0, np.where(complaining, -0.4, -0.15))

    d_ret += rng.normal(0.0, JITTER_SD, d_ret.shape) * (d_ret != 0)
    d_up += rng.normal(0.0, JITTER_SD, d_up.shape) * (d_up != 0)
    base_ret = base_ret + rng.normal(0.0, JITTER_SD, N_LEAVES)
    base_up = base_up + rng.normal(0.0, JITTER_SD, N_LEAVES)

    fatigue = np.array(FATIGUE)[None, :, None, None]
    phase_ret = (base_ret + np.stack([np.zeros(N_LEAVES), drift_ret]))[:, None, None, :]
    a_ret = phase_ret + fatigue * d_ret[:, None]
    a_up = a_ret + base_up + fatigue * d_up[:, None]
    logits = np.stack([np.zeros_like(a_ret), a_ret, a_up], axis=-1)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    probs: np.ndarray = weights / weights.sum(axis=-1, keepdims=True)
    return probs


def leaf_index(attrs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The leaf of each customer: shape (n,), integers in [0, N_LEAVES)."""
    codes = []
    for spec in ATTRIBUTES:
        try:
            values = [a[spec.name] for a in attrs]
        except KeyError:
            raise ValueError(f"every customer needs attribute {spec.name!r}") from None
        if spec.type == "categorical":
            lookup = {level: i for i, level in enumerate(spec.levels)}
            unknown = [v for v in values if v not in lookup]
            if unknown:
                raise ValueError(
                    f"{spec.name} must be one of {', '.join(spec.levels)}, got {unknown[0]!r}"
                )
            codes.append(np.array([lookup[v] for v in values], dtype=np.int64))
        elif spec.type == "boolean":
            codes.append(np.array(values, dtype=bool).astype(np.int64))
        else:
            edges = np.array(spec.bins)
            codes.append(np.searchsorted(edges, np.array(values, dtype=float), side="right"))
    if not attrs:
        return np.zeros(0, dtype=np.int64)
    index: np.ndarray = np.ravel_multi_index(tuple(codes), LEAF_SHAPE)
    return index.astype(np.int64)


def sample_attributes(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Draw ``n`` customers' attribute dicts (JSON-like: str, float, bool)."""
    plan = rng.choice(3, size=n, p=PLAN_SHARES)
    region = rng.choice(4, size=n, p=REGION_SHARES)
    tenure = np.floor(rng.exponential(np.array([26.0, 32.0, 42.0])[plan]))
    spend = np.round(np.array([24.0, 52.0, 98.0])[plan] * rng.lognormal(0.0, 0.25, n), 2)
    # Gamma-Poisson: most customers never complain, a few complain a lot.
    complaints = rng.poisson(rng.gamma(0.7, 1.2, n)).astype(float)
    paperless = rng.random(n) < 0.6
    plans, regions = ATTRIBUTES[0].levels, ATTRIBUTES[2].levels
    return [
        {
            "plan": plans[plan[i]],
            "tenure_months": float(tenure[i]),
            "region": regions[region[i]],
            "monthly_spend": float(spend[i]),
            "complaints_90d": float(complaints[i]),
            "paperless": bool(paperless[i]),
        }
        for i in range(n)
    ]


def logging_probs(leaves: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Propensities of the historical (agent) policy: shape (n, K), every entry positive.

    Business rules with noise: complaining customers get discounts and callbacks, premium customers
    free months and callbacks, new ones discounts; each agent-customer pair adds lognormal noise.
    """
    plan, tenure, _, _, complaints, _ = np.unravel_index(leaves, LEAF_SHAPE)
    n = leaves.shape[0]
    weights = np.tile([3.0, 2.0, 1.0, 1.0, 0.5, 0.3, 0.5, 1.0], (n, 1))
    complaining, angry = complaints >= 1, complaints >= 2
    weights[:, DISC10] *= np.where(complaining, 2.0, 1.0) * np.where(tenure == 0, 2.0, 1.0)
    weights[:, DISC20] *= np.where(complaining, 3.0, 1.0)
    weights[:, CALLBACK] *= np.where(angry, 6.0, np.where(complaining, 3.0, 1.0))
    weights[:, FREE_MONTH] *= np.where(angry, 3.0, 1.0) * np.where(plan == 2, 3.0, 1.0)
    weights[:, CALLBACK] *= np.where(plan == 2, 2.0, 1.0)
    weights *= rng.lognormal(0.0, 0.3, weights.shape)
    probs: np.ndarray = weights / weights.sum(axis=1, keepdims=True)
    return probs


def prior_exposures(customers: np.ndarray, experiences: np.ndarray, k: int) -> np.ndarray:
    """Earlier exposures of the same customer to the same experience: shape (n,).

    ``customers`` and ``experiences`` are shape (n,), already in time order. A stable sort by
    (customer, experience) keeps time order inside each group; the count is the rank in the group.
    """
    keys = customers.astype(np.int64) * k + experiences
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    positions = np.arange(keys.shape[0])
    starts = np.ones(keys.shape[0], dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = np.maximum.accumulate(np.where(starts, positions, 0))
    counts = np.empty(keys.shape[0], dtype=np.int64)
    counts[order] = positions - group_start
    return counts
