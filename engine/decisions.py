"""Decisions and their outcomes.

A decision scores every eligible active experience on this customer's expected net value under
Dirichlet posteriors of the result distribution, chooses by Thompson sampling mixed with uniform
exploration (so every eligible experience keeps a propensity of at least explore / K), and logs
the choice with its propensity. The outcome of a decision trains the experience actually
delivered.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from engine import posterior
from engine.attributes import segment_path
from engine.catalog import Catalog
from engine.customers import customer_for_decision
from engine.errors import Conflict, InvalidInput, NotFound
from engine.models import Decision, DecisionOverride, Exposure, Outcome, utcnow
from engine.money import cost_by_level, level_values
from engine.runtime import Runtime, StatsSnapshot
from engine.schemas import (
    DecisionExplanation,
    DecisionIn,
    DecisionPublic,
    OutcomeIn,
    OutcomePublic,
    RankedExperience,
)
from engine.stats import exposure_bucket
from engine.triples import StoredTriple, Triple, store_triples


def decide(*, session: Session, runtime: Runtime, decision_in: DecisionIn) -> DecisionPublic:
    catalog = runtime.catalog(session)
    scale_labels = catalog.require_scale().labels
    _check_overrides(catalog, decision_in)
    customer = customer_for_decision(
        session=session,
        catalog=catalog,
        customer_id=decision_in.customer_id,
        attributes=decision_in.attributes,
    )
    attributes = customer.attributes
    keys = eligible_experiences(runtime, catalog, attributes, decision_in.channel)
    snapshot = runtime.stats(session, catalog)
    path = segment_path(catalog.specs, catalog.segmentation, attributes)
    exposures = customer_exposures(session, customer.id)
    alpha, net, evidence = _posterior_inputs(
        catalog, snapshot, keys, attributes, path, exposures, decision_in
    )
    draws = posterior.dirichlet_draws(alpha, runtime.settings.posterior_draws, runtime.rng)
    value_draws = np.einsum("skl,kl->sk", draws, net)
    summary = posterior.summarize(alpha, net, value_draws)
    explore = 0.0 if decision_in.exploit else runtime.settings.min_exploration
    if decision_in.exploit:
        chosen, source = int(np.argmax(summary.mean)), "exploit"
        propensity = 1.0
    else:
        if runtime.rng.random() < explore:
            chosen, source = int(runtime.rng.integers(len(keys))), "explore"
        else:
            chosen, source = int(np.argmax(value_draws[0])), "thompson"
        propensity = posterior.thompson_propensity(summary.p_best, chosen, explore=explore)
    order = np.argsort(-summary.mean, kind="stable")
    ranked = [
        RankedExperience(
            experience=keys[k],
            expected_net_value=round(float(summary.mean[k]), 4),
            ci90=(round(float(summary.ci_low[k]), 4), round(float(summary.ci_high[k]), 4)),
            p_best=round(float(summary.p_best[k]), 4),
        )
        for k in order
    ]
    decision = Decision(
        id=str(uuid.uuid4()),
        customer_id=customer.id,
        created_at=utcnow(),
        channel=decision_in.channel,
        agent_id=decision_in.agent_id,
        attributes=attributes,
        segment=catalog.finest_segment(attributes),
        candidates=[r.model_dump() for r in ranked],
        experience_key=keys[chosen],
        propensity=propensity,
        source=source,
        overrides={"values": decision_in.values or {}, "costs": decision_in.costs or {}},
    )
    session.add(decision)
    session.flush()
    return DecisionPublic(
        decision_id=decision.id,
        customer_id=customer.id,
        experience=decision.experience_key,
        propensity=round(propensity, 6),
        source=source,
        rule=None,
        experiment=None,
        ranked=ranked[: decision_in.top_k],
        segment=decision.segment,
        explanation=DecisionExplanation(
            segment_path=path,
            evidence=evidence,
            outcome_distribution={
                label: round(float(p), 4)
                for label, p in zip(
                    scale_labels, posterior.dirichlet_mean(alpha[chosen]), strict=True
                )
            },
        ),
        created_at=decision.created_at,
    )


def _check_overrides(catalog: Catalog, decision_in: DecisionIn) -> None:
    for label in decision_in.values or {}:
        catalog.result_index(label, field=f"values.{label}")
    for key in decision_in.costs or {}:
        catalog.experience(key, field=f"costs.{key}")


def eligible_experiences(
    runtime: Runtime, catalog: Catalog, attributes: dict[str, Any], channel: str | None
) -> list[str]:
    keys = []
    for key, info in catalog.experiences.items():
        if not info.active or (channel and info.channels and channel not in info.channels):
            continue
        predicate = runtime.eligibility(catalog, key)
        if predicate is None or predicate(attributes):
            keys.append(key)
    if not keys:
        raise Conflict(
            "no active experience is eligible for this customer"
            + (f" on channel {channel!r}" if channel else ""),
            field="channel" if channel else "customer_id",
        )
    return keys


def customer_exposures(session: Session, customer_id: str) -> dict[str, int]:
    """How many results this customer already has per experience."""
    rows = session.execute(
        select(Exposure.experience_key, Exposure.count).where(
            col(Exposure.customer_id) == customer_id
        )
    )
    return {key: count for key, count in rows.all()}  # noqa: C416  (Row -> pair)


def _posterior_inputs(
    catalog: Catalog,
    snapshot: StatsSnapshot,
    keys: list[str],
    attributes: dict[str, Any],
    path: list[str],
    exposures: dict[str, int],
    decision_in: DecisionIn,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Dirichlet parameters and per-level net values for the candidates, both shape (K, L), and
    the evidence behind each: the cell of the segment tree the posterior comes from.

    Each candidate's posterior is that of the deepest cell with data on the customer's segment
    path, in the customer's exposure bucket for that experience (engine.hierarchy).
    """
    scale = catalog.require_scale()
    n_levels = len(scale.levels)
    per_experience = [snapshot.experience(k, n_levels) for k in keys]
    alpha = np.empty((len(keys), n_levels))
    evidence = []
    for k, key in enumerate(keys):
        bucket = exposure_bucket(exposures.get(key, 0))
        alpha[k], depth = snapshot.tree.cell(path, key, bucket)
        node = path[depth] if depth >= 0 else None
        counts = snapshot.tree.counts.get((node, key, bucket)) if node is not None else None
        evidence.append(
            {
                "experience": key,
                "segment": node,
                "exposure_bucket": bucket,
                "n": round(float(counts.sum()), 2) if counts is not None else 0.0,
            }
        )
    values = level_values(scale, attributes, decision_in.values)
    net = np.empty((len(keys), n_levels))
    for k, (key, s) in enumerate(zip(keys, per_experience, strict=True)):
        learned = np.divide(
            s.value_sums, s.value_weights, out=np.zeros(n_levels), where=s.value_weights > 0
        )
        v = np.where(np.isnan(values), learned, values)
        net[k] = v - cost_by_level(catalog.experiences[key], scale, attributes, decision_in.costs)
    return alpha, net, evidence


# Outcomes --------------------------------------------------------------------------------------


def record_outcome(
    *, session: Session, runtime: Runtime, outcome_in: OutcomeIn
) -> tuple[OutcomePublic, bool]:
    """Store the result of a decision. Returns (outcome, created); a same-body repeat is a no-op."""
    catalog = runtime.catalog(session)
    catalog.result_index(outcome_in.result)
    decision = session.get(Decision, outcome_in.decision_id)
    if decision is None:
        raise NotFound(f"no decision {outcome_in.decision_id!r}", field="decision_id")
    override = session.get(DecisionOverride, decision.id)
    delivered = override.experience_key if override else decision.experience_key
    occurred_at = outcome_in.occurred_at or utcnow()
    if occurred_at < decision.created_at:
        raise InvalidInput("occurred_at is before the decision was made", field="occurred_at")
    triple = Triple(
        customer_id=decision.customer_id,
        experience_key=delivered,
        result=outcome_in.result,
        occurred_at=occurred_at,
        value=outcome_in.value,
        cost=outcome_in.cost,
        attributes=decision.attributes,
        idempotency_key=outcome_in.idempotency_key,
        decision_id=decision.id,
        source="decision",
    )
    existing = session.exec(_outcome_of(decision.id)).first()
    if existing is not None:
        same = (existing.result, existing.value, existing.cost) == (
            outcome_in.result,
            outcome_in.value,
            outcome_in.cost,
        ) and (outcome_in.idempotency_key in (None, existing.idempotency_key))
        if same:
            return outcome_public(StoredTriple.of(existing, replayed=True)), False
        raise Conflict(
            f"decision {decision.id!r} has an outcome already ({existing.result}); "
            "an outcome is recorded once",
            field="decision_id",
        )
    (stored,) = store_triples(session, catalog=catalog, triples=[triple])
    runtime.wrote_stats()
    return outcome_public(stored), True


def _outcome_of(decision_id: str) -> SelectOfScalar[Outcome]:
    return select(Outcome).where(col(Outcome.decision_id) == decision_id)


def outcome_public(row: StoredTriple) -> OutcomePublic:
    return OutcomePublic(
        id=row.id,
        decision_id=row.decision_id,
        customer_id=row.customer_id,
        experience=row.experience_key,
        result=row.result,
        value=row.value,
        cost=row.cost,
        occurred_at=row.occurred_at,
        recorded_at=row.recorded_at,
    )
