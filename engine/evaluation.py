"""Policy value from logged decisions: the data engine.ope needs, for the policies users ask about.

Policies: ``current`` (what the engine did: the on-policy average), ``control`` (everyone gets the
control), ``experience:<key>`` (everyone gets that experience), ``ruleset:<version>`` (what a
rule-set version recommends: its experience, or its contenders weighted by their P(best)).

The decisions used: those with an outcome (or settled), made in the window, matching the optional
``where`` rule. Left out, and counted: decisions an agent overrode (their outcome belongs to an
experience the engine did not choose, with no propensity; their results are reported beside the
engine's), exploit-only decisions (propensity 1 leaves nothing to compare), and decisions where
the target policy's experience was not a candidate (not eligible, or suppressed by a guardrail).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlmodel import Session, col, select

from engine import ope, posterior
from engine.attributes import segment_path
from engine.catalog import Catalog
from engine.decisions import posterior_inputs
from engine.errors import InvalidInput
from engine.insights import control_key, where_predicate
from engine.models import Decision, DecisionOverride, Outcome
from engine.money import cost_by_level, level_values
from engine.runtime import Runtime, StatsSnapshot

MAX_DECISIONS = 200_000


@dataclass(frozen=True)
class _Logged:
    attributes: Mapping[str, Any]
    candidates: list[str]
    chosen: str
    propensity: float
    reward: float
    direct: np.ndarray
    """q(x, a) for every experience in the catalog order, shape (K,)."""


def evaluate(
    *,
    session: Session,
    runtime: Runtime,
    policies: Sequence[str],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    where: str | None = None,
    clip: float | None = None,
) -> dict[str, Any]:
    """Estimates of each policy's value per decision, with the decisions they rest on."""
    catalog = runtime.catalog(session)
    catalog.require_scale()
    for policy in policies:
        _target_of(session, catalog, policy)  # unknown policies fail before any work
    snapshot = runtime.stats(session, catalog)
    logged, left_out, overridden = _load(session, catalog, snapshot, since, until, where)
    keys = sorted(catalog.experiences)
    rewards = np.array([d.reward for d in logged])
    out: dict[str, Any] = {
        "window": {"since": since, "until": until, "where": where},
        "decisions": {"used": len(logged), **left_out},
        "overrides": _summary(overridden),
        "engine": _summary(rewards.tolist()),
        "policies": {},
    }
    for policy in policies:
        out["policies"][policy] = _evaluate_policy(session, catalog, policy, logged, keys, clip)
    return out


def _evaluate_policy(
    session: Session,
    catalog: Catalog,
    policy: str,
    logged: list[_Logged],
    keys: list[str],
    clip: float | None,
) -> dict[str, Any]:
    if policy == "current":
        rewards = np.array([d.reward for d in logged])
        on_policy = ope.estimate(
            "ips",
            rewards=rewards,
            propensities=np.ones(len(logged)),
            target=np.ones((len(logged), 1)),
            chosen=np.zeros(len(logged), dtype=np.int64),
        )
        return {
            "estimates": {m: {**on_policy.as_dict(), "method": m} for m in ope.METHODS},
            "not_applicable": 0,
            "note": "the logging policy itself: the average realised net value",
        }
    target_of = _target_of(session, catalog, policy)
    rows, targets = [], []
    for i, decision in enumerate(logged):
        target = target_of(decision.attributes, decision.candidates)
        if target is not None:
            rows.append(i)
            targets.append([target.get(k, 0.0) for k in keys])
    used = [logged[i] for i in rows]
    estimates = ope.estimate_all(
        rewards=np.array([d.reward for d in used]),
        propensities=np.array([d.propensity for d in used]),
        target=np.array(targets).reshape(len(used), len(keys)),
        chosen=np.array([keys.index(d.chosen) for d in used], dtype=np.int64),
        direct=np.array([d.direct for d in used]).reshape(len(used), len(keys)),
        clip=clip,
    )
    return {
        "estimates": {m: e.as_dict() for m, e in estimates.items()},
        "not_applicable": len(logged) - len(used),
    }


Target = Any  # (attributes, candidates) -> {experience: probability} | None


def _target_of(session: Session, catalog: Catalog, policy: str) -> Target:
    """pi(. | x) of a policy name, restricted to the decision's candidates (None: the policy
    cannot act on this decision)."""
    if policy == "current":
        return None
    if policy == "control":
        policy = f"experience:{control_key(catalog)}"
    kind, _, name = policy.partition(":")
    if kind == "experience" and name in catalog.experiences:
        return lambda _attributes, candidates: {name: 1.0} if name in candidates else None
    if kind == "ruleset" and name.isdigit():
        from rules.active import load_version

        version = load_version(session, int(name), {})
        if version is not None:

            def follow(attributes: Mapping[str, Any], candidates: list[str]) -> Any:
                index = version.first(attributes)
                if index is None:
                    return None
                rule = version.rules[index]
                allowed = {k: rule["p_best"].get(k, 0.0) for k in rule["contenders"]}
                allowed = {k: p for k, p in allowed.items() if k in candidates and p > 0}
                total = sum(allowed.values())
                return {k: p / total for k, p in allowed.items()} if total > 0 else None

            return follow
    raise InvalidInput(
        f"unknown policy {policy!r}; use current, control, experience:<key> "
        f"({', '.join(sorted(catalog.experiences))}) or ruleset:<version>",
        field="policy",
    )


def _load(
    session: Session,
    catalog: Catalog,
    snapshot: StatsSnapshot,
    since: dt.datetime | None,
    until: dt.datetime | None,
    where: str | None,
) -> tuple[list[_Logged], dict[str, int], list[float]]:
    predicate = where_predicate(catalog, where)
    statement = (
        select(Decision, Outcome, DecisionOverride.experience_key)
        .join(Outcome, col(Outcome.decision_id) == col(Decision.id))
        .outerjoin(DecisionOverride, col(DecisionOverride.decision_id) == col(Decision.id))
        .order_by(col(Decision.created_at).desc())
        .limit(MAX_DECISIONS)
    )
    if since is not None:
        statement = statement.where(col(Decision.created_at) >= since)
    if until is not None:
        statement = statement.where(col(Decision.created_at) < until)
    keys = sorted(catalog.experiences)
    logged: list[_Logged] = []
    overridden: list[float] = []
    left_out = {"overridden": 0, "exploit_only": 0, "filtered": 0}
    for decision, outcome, override in session.exec(statement):
        if predicate is not None and not predicate(decision.attributes):
            left_out["filtered"] += 1
            continue
        reward = realised_net_value(catalog, snapshot, decision, outcome)
        if override is not None and override != decision.experience_key:
            left_out["overridden"] += 1
            overridden.append(reward)
            continue
        if decision.source == "exploit":
            left_out["exploit_only"] += 1
            continue
        logged.append(
            _Logged(
                attributes=decision.attributes,
                candidates=[c["experience"] for c in decision.candidates],
                chosen=decision.experience_key,
                propensity=decision.propensity,
                reward=reward,
                direct=_direct(catalog, snapshot, decision, keys),
            )
        )
    return logged, left_out, overridden


def realised_net_value(
    catalog: Catalog, snapshot: StatsSnapshot, decision: Decision, outcome: Outcome
) -> float:
    """Realised net value: the result's value minus the delivered experience's cost on it
    (reported money where the outcome has it; a learned level value where the scale has none)."""
    scale = catalog.require_scale()
    level = scale.index(outcome.result)
    overrides = decision.overrides or {}
    value = level_values(scale, decision.attributes, overrides.get("values"))[level]
    if outcome.value is not None:
        value = outcome.value
    elif np.isnan(value):
        stats = snapshot.experience(outcome.experience_key, len(scale.levels))
        weight = stats.value_weights[level]
        value = stats.value_sums[level] / weight if weight > 0 else 0.0
    experience = catalog.experiences[outcome.experience_key]
    cost = cost_by_level(experience, scale, decision.attributes, overrides.get("costs"))[level]
    if outcome.cost is not None:
        cost = outcome.cost
    return float(value - cost)


def _direct(
    catalog: Catalog, snapshot: StatsSnapshot, decision: Decision, keys: list[str]
) -> np.ndarray:
    """q(x, a): the posterior's expected net value of every experience for this customer (first
    exposure; the doubly robust correction absorbs what that misses)."""
    path = segment_path(catalog.specs, catalog.segmentation, decision.attributes)
    overrides = decision.overrides or {}
    alpha, net, _ = posterior_inputs(
        catalog,
        snapshot,
        keys,
        decision.attributes,
        path,
        {},
        values=overrides.get("values"),
        costs=overrides.get("costs"),
    )
    means: np.ndarray = (posterior.dirichlet_mean(alpha) * net).sum(axis=1)
    return means


def _summary(rewards: Sequence[float]) -> dict[str, Any]:
    n = len(rewards)
    if n == 0:
        return {"n": 0, "mean_net_value": None, "ci95": None}
    mean = float(np.mean(rewards))
    half = ope.Z95 * float(np.std(rewards, ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
    ci = (mean - half, mean + half) if n > 1 else None
    return {"n": n, "mean_net_value": mean, "ci95": ci}
