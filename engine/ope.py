"""Off-policy evaluation: what a policy would have earned, estimated from logged decisions.

Each logged decision i has a context x_i (the customer's attributes then), the experience a_i the
engine chose with its propensity mu_i = mu(a_i | x_i) > 0, and the realised net value r_i of the
result (the result's value minus the experience's cost when incurred). A target policy pi gives
pi(a | x) for every experience. With importance weights w_i = pi(a_i | x_i) / mu_i (optionally
clipped at ``clip``: w_i <- min(w_i, clip)) and n decisions:

    IPS    V = (1/n) sum_i w_i r_i
           se^2 = var_i(w_i r_i) / n
    SNIPS  V = sum_i w_i r_i / sum_i w_i
           se^2 = sum_i w_i^2 (r_i - V)^2 / (sum_i w_i)^2            (delta method)
    DR     V = (1/n) sum_i [ sum_a pi(a | x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)) ]
           se^2 = var_i(term_i) / n

where q(x, a) is the direct model: the engine's posterior expected net value of experience a for
the customer. Intervals are V +- 1.96 se (95%, normal approximation). The effective sample size
is ESS = (sum_i w_i)^2 / sum_i w_i^2. var_i is the sample variance (ddof = 1).

Honest edges: fewer than MIN_DECISIONS usable decisions, a zero or missing propensity, or no
overlap (the target policy puts no weight on any logged choice) give a coded "cannot estimate"
answer with its reason instead of a number. Decisions an agent overrode carry no propensity for
what was delivered: they are left out and reported on their own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Method = Literal["ips", "snips", "dr"]
METHODS: tuple[Method, ...] = ("ips", "snips", "dr")
Z95 = 1.959963984540054
MIN_DECISIONS = 30
MIN_ESS = 10.0


@dataclass(frozen=True)
class Estimate:
    method: Method
    status: Literal["ok", "cannot_estimate"]
    value: float | None
    ci95: tuple[float, float] | None
    se: float | None
    ess: float
    n: int
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    method: Method,
    *,
    rewards: np.ndarray,
    propensities: np.ndarray,
    target: np.ndarray,
    chosen: np.ndarray,
    direct: np.ndarray | None = None,
    clip: float | None = None,
) -> Estimate:
    """One estimate of a target policy's value per decision (see the module docstring).

    rewards, propensities, chosen: shape (n,) (chosen: index of the logged experience);
    target: pi(a | x_i), shape (n, K); direct: q(x_i, a), shape (n, K), needed for "dr".
    """
    n = int(rewards.shape[0])
    reason = _unusable(propensities, n)
    if reason is None and method == "dr" and direct is None:
        reason = "the doubly robust estimate needs a direct model"
    if reason is not None:
        return Estimate(method, "cannot_estimate", None, None, None, 0.0, n, reason)
    weights = target[np.arange(n), chosen] / propensities
    if clip is not None:
        weights = np.minimum(weights, clip)
    total = float(weights.sum())
    ess = total**2 / float((weights**2).sum()) if total > 0 else 0.0
    if total <= 0:
        reason = "no overlap: the policy never chooses what the logged decisions chose"
    elif ess < MIN_ESS:
        reason = f"effective sample size {ess:.1f} is under {MIN_ESS:.0f}: too little overlap"
    if reason is not None:
        return Estimate(method, "cannot_estimate", None, None, None, ess, n, reason)
    if method == "ips":
        terms = weights * rewards
        value, se = float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(n))
    elif method == "snips":
        value = float((weights * rewards).sum() / total)
        se = float(np.sqrt((weights**2 * (rewards - value) ** 2).sum()) / total)
    else:
        assert direct is not None
        baseline = (target * direct).sum(axis=1)
        terms = baseline + weights * (rewards - direct[np.arange(n), chosen])
        value, se = float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(n))
    return Estimate(method, "ok", value, (value - Z95 * se, value + Z95 * se), se, ess, n, None)


def _unusable(propensities: np.ndarray, n: int) -> str | None:
    if n < MIN_DECISIONS:
        return f"{n} decisions with outcomes; at least {MIN_DECISIONS} are needed"
    if not np.all(np.isfinite(propensities)) or np.any(propensities <= 0):
        return "some decisions have no positive propensity"
    return None


def estimate_all(**arrays: Any) -> dict[str, Estimate]:
    """IPS, SNIPS and DR for the same data (arguments as ``estimate``)."""
    return {method: estimate(method, **arrays) for method in METHODS}
