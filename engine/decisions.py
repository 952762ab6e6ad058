"""Decisions and their outcomes.

A decision scores every eligible active experience on this customer's expected net value under
Dirichlet posteriors of the result distribution, chooses by Thompson sampling mixed with uniform
exploration (so every eligible experience keeps a propensity of at least explore / K), and logs
the choice with its propensity. The outcome of a decision trains the experience actually
delivered.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio.to_thread
import numpy as np
from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from engine import metrics, posterior, prepared
from engine.catalog import Catalog, ExperienceInfo, Scale
from engine.customers import clean_attributes
from engine.decision_log import DecisionWrite
from engine.errors import Conflict, InvalidInput, NotFound
from engine.models import (
    Customer,
    Decision,
    DecisionOverride,
    EngineState,
    Exposure,
    Outcome,
    utcnow,
)
from engine.money import cost_by_level, level_values
from engine.runtime import CellKey, Runtime, StatsSnapshot
from engine.schemas import (
    DecisionExplanation,
    DecisionIn,
    DecisionPublic,
    OutcomeIn,
    OutcomePublic,
    RankedExperience,
    RulePublic,
    Suppressed,
)
from engine.stats import exposure_bucket
from engine.triples import StoredTriple, Triple, store_triples
from experiments.assign import Assignment, enrolled_arms, enrolment_queries, enrolments
from experiments.service import holding_experiments

# The catalog version, the customer's stored attributes and its exposures, in one round trip: one
# row per experience the customer has met (attributes NULL when there is no such customer).
_CUSTOMER_STATE = (
    sa_select(
        col(EngineState.catalog_version),
        col(Customer.attributes),
        col(Exposure.experience_key),
        col(Exposure.count),
    )
    .select_from(EngineState)
    .outerjoin(Customer, col(Customer.id) == bindparam("customer_id"))
    .outerjoin(Exposure, col(Exposure.customer_id) == col(Customer.id))
    .where(col(EngineState.id) == 1)
)


def decide(*, runtime: Runtime, decision_in: DecisionIn) -> DecisionPublic:
    """Choose an experience for a customer and log the decision; returns once it is committed.

    The database sees one indexed read (catalog version, customer, exposures) and one insert,
    committed together with the decisions of concurrent requests (engine.decision_log); the
    catalog, the statistics and the posterior draws come from the worker's caches
    (engine.runtime), so the cost of a decision does not grow with the events logged. The
    active rule set and guardrails are cached per catalog version too: a short-lived session
    reads them when the version moves, and the guardrails' counts when any are active.
    """
    write, public, catalog = _choose(runtime, decision_in)
    runtime.decision_log.log(write)
    return _committed(runtime, catalog, public)


async def decide_async(*, runtime: Runtime, decision_in: DecisionIn) -> DecisionPublic:
    """``decide`` for the event loop: the decision is made on the loop itself and its commit is
    awaited, so a worker's concurrent decisions never compete for the interpreter lock in a pool
    of threads (which cost more than the decisions under load), and still share transactions.

    What may block the loop: the customer's indexed read (a few tens of microseconds on SQLite),
    the reload of the running experiments every ``experiment_refresh_seconds``, and of the
    catalog, rules and guardrails when their version moves. A decision that would read the
    statistics (``Runtime.stats_due``) runs on a thread instead, while the loop goes on with the
    snapshot it has; so does every decision on PostgreSQL, whose reads are network round trips
    that other requests' work should overlap (``Runtime.reads_block``). At most
    ``Runtime.decision_slots`` such threads run at once, so that they never need more connections
    than the pool keeps.
    """
    if runtime.reads_block or runtime.stats_due():
        write, public, catalog = await anyio.to_thread.run_sync(
            _choose, runtime, decision_in, limiter=runtime.decision_slots()
        )
    else:
        write, public, catalog = _choose(runtime, decision_in)
    await runtime.decision_log.log_async(write)
    return _committed(runtime, catalog, public)


def _committed(runtime: Runtime, catalog: Catalog, public: DecisionPublic) -> DecisionPublic:
    """What follows a decision's commit: the guardrails' running counts and the metric."""
    runtime.guardrails(None, catalog).chose(public.experience)
    metrics.count_decision(public.source)
    return public


def _choose(
    runtime: Runtime, decision_in: DecisionIn
) -> tuple[DecisionWrite, DecisionPublic, Catalog]:
    """The decision, what it stores, and the catalog it was made on.

    A pooled connection is held only for one read at a time, never while waiting for a cache
    reload (which needs a connection of its own: threads holding one each while they wait for the
    reload could take the whole pool)."""
    state = read_state(runtime, decision_in.customer_id, runtime.running_keys())
    stored, exposures = state.attributes, state.exposures
    catalog = runtime.catalog_at(state.version)
    scale_labels = catalog.require_scale().labels
    _check_overrides(catalog, decision_in)
    attributes, customer_row = _customer(catalog, decision_in, stored)
    keys = eligible_experiences(runtime, catalog, attributes, decision_in.channel)
    keys, suppressed = _apply_guardrails(
        runtime, catalog, decision_in.customer_id, attributes, keys, decision_in.channel
    )
    snapshot = runtime.stats(catalog)
    metrics.observe_snapshot_age(runtime.age(snapshot))
    path = runtime.segment_path(catalog, attributes)
    alpha, net, cells, evidence = _posterior_cells(
        catalog,
        snapshot,
        keys,
        attributes,
        path,
        exposures,
        values=decision_in.values,
        costs=decision_in.costs,
    )
    # Joint draws of the candidates' net values, shape (K, S): each candidate's cell draws
    # (engine.runtime.CellDraws) times its net value per level, in single precision like the
    # draws (Monte Carlo error is far above float32 rounding).
    values = np.empty((len(keys), snapshot.draws.n_draws), dtype=np.float32)
    low, high = np.empty(len(keys)), np.empty(len(keys))
    for k, (cell, a, n) in enumerate(zip(cells, alpha, net.astype(np.float32), strict=True)):
        np.matmul(snapshot.draws.get(cell, a), n, out=values[k])
        low[k], high[k] = snapshot.draws.interval(cell, n, values[k])
    summary = posterior.summarize(alpha, net, values.T, intervals=(low, high))
    now = utcnow()
    assignment = (
        None
        if decision_in.exploit
        else _assignment(runtime, catalog, decision_in, attributes, keys, now, state)
    )
    rule = (
        None
        if decision_in.exploit or assignment is not None
        else _rule_for(runtime, catalog, attributes, keys)
    )
    if decision_in.exploit:
        chosen, source = int(np.argmax(summary.mean)), "exploit"
        propensity = 1.0
    elif assignment is not None:
        chosen, source = keys.index(assignment.arm), "experiment"
        propensity = assignment.propensity
    else:
        explore = runtime.settings.min_exploration
        # The policy: with probability ``explore`` a uniform pick, else Thompson sampling over the
        # experiences the fired rule allows (all eligible ones when no rule applies).
        allowed = rule.allowed if rule is not None else list(range(len(keys)))
        q = summary.p_best if rule is None else posterior.p_best_among(values.T, allowed)
        if runtime.rng.random() < explore:
            chosen, source = int(runtime.rng.integers(len(keys))), "explore"
        else:
            # The best allowed experience of one joint draw picked at random, so that P(best
            # among allowed) from the same draws is exactly the probability of this choice.
            draw = int(runtime.rng.integers(values.shape[1]))
            chosen = allowed[int(np.argmax(values[allowed, draw]))]
            source = "rule" if rule is not None else "thompson"
        propensity = posterior.thompson_propensity(q, chosen, explore=explore)
    ranked = _ranked(keys, summary)
    decision_id = str(uuid.uuid4())
    write = DecisionWrite(
        decision={
            "id": decision_id,
            "customer_id": decision_in.customer_id,
            "created_at": now,
            "channel": decision_in.channel,
            "agent_id": decision_in.agent_id,
            "attributes": attributes,
            "segment": catalog.finest_segment(attributes),
            "candidates": ranked,
            "experience_key": keys[chosen],
            "propensity": propensity,
            "source": source,
            "rule_id": rule.rule_id if rule else None,
            "ruleset_version": rule.version if rule else None,
            "experiment_key": assignment.experiment_key if assignment else None,
            "arm": assignment.arm if assignment else None,
            "overrides": {"values": decision_in.values or {}, "costs": decision_in.costs or {}},
        },
        customer=customer_row,
    )
    mean = posterior.dirichlet_mean(alpha[chosen]).tolist()
    public = DecisionPublic(
        decision_id=decision_id,
        customer_id=decision_in.customer_id,
        experience=keys[chosen],
        propensity=round(propensity, 6),
        source=source,
        rule=RulePublic(id=rule.rule_id, version=rule.version, text=rule.text) if rule else None,
        experiment={"key": assignment.experiment_key, "arm": assignment.arm}
        if assignment
        else None,
        ranked=[RankedExperience.model_validate(r) for r in ranked[: decision_in.top_k]],
        segment=catalog.finest_segment(attributes),
        suppressed=suppressed,
        explanation=DecisionExplanation(
            segment_path=path,
            evidence=evidence,
            outcome_distribution={
                label: round(p, 4) for label, p in zip(scale_labels, mean, strict=True)
            },
        ),
        created_at=now,
    )
    return write, public, catalog


def _assignment(
    runtime: Runtime,
    catalog: Catalog,
    decision_in: DecisionIn,
    attributes: Mapping[str, Any],
    keys: list[str],
    now: dt.datetime,
    state: CustomerState,
) -> Assignment | None:
    """The customer's experiment arm, if a running experiment takes them (experiments.assign).
    Uses the enrolments read with the customer, unless the running experiments are not the ones
    looked up then (they changed meanwhile), which reads them again."""
    running = runtime.experiments(catalog)
    if not running:
        return None
    needed = [e.key for e in running.experiments]
    enrolled = (
        state.enrolled
        if set(needed) <= set(state.looked_up)
        else enrolments(runtime.engine, decision_in.customer_id, needed)
    )
    return running.assign(
        customer_id=decision_in.customer_id,
        attributes=attributes,
        candidates=keys,
        enrolled=enrolled,
        now=now,
    )


@dataclass(frozen=True)
class CustomerState:
    """What a decision reads from the database, in one round trip.

    version: the catalog version (None while the database has no engine state yet); attributes:
    the stored ones (None for an unknown customer); exposures: per experience met; enrolled: the
    customer's arm in each experiment of ``looked_up`` (engine.runtime.Runtime.running_keys: the
    running experiments this worker knows of, which the decision's catalog may have moved past)."""

    version: int | None
    attributes: dict[str, Any] | None
    exposures: dict[str, int]
    looked_up: tuple[str, ...] = ()
    enrolled: dict[str, str] = field(default_factory=dict)


def read_state(
    runtime: Runtime, customer_id: str, experiments: tuple[str, ...] = ()
) -> CustomerState:
    """The catalog version, the customer and its exposures (one statement), and its enrolment in
    each of ``experiments``; outside any transaction, in one round trip on PostgreSQL
    (engine.prepared.read_all)."""
    statement = prepared.Prepared.of(_CUSTOMER_STATE, runtime.engine)
    queries: list[prepared.Query] = [
        (statement, statement.parameters({"customer_id": customer_id})),
        *enrolment_queries(runtime.engine, customer_id, experiments),
    ]
    rows, *enrolment_rows = prepared.read_all(runtime.engine, queries)
    enrolled = enrolled_arms(experiments, enrolment_rows)
    if not rows:
        return CustomerState(None, None, {}, experiments, enrolled)
    exposures = {key: count for _, _, key, count in rows if key is not None}
    return CustomerState(int(rows[0][0]), rows[0][1], exposures, experiments, enrolled)


def read_customer(
    runtime: Runtime, customer_id: str
) -> tuple[int | None, dict[str, Any] | None, dict[str, int]]:
    """(catalog version, the customer's stored attributes, its exposures per experience)."""
    state = read_state(runtime, customer_id)
    return state.version, state.attributes, state.exposures


def _customer(
    catalog: Catalog, decision_in: DecisionIn, stored: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The customer's attributes for this decision (given ones merged over stored ones), and the
    customer row to store with the decision when it creates the customer or changes it."""
    if stored is None and decision_in.attributes is None:
        raise NotFound(
            f"no customer {decision_in.customer_id!r}; send attributes to create it with the "
            "decision",
            field="customer_id",
        )
    given = clean_attributes(catalog, decision_in.attributes or {})
    if stored is not None and not any(stored.get(k) != v for k, v in given.items()):
        return stored, None
    attributes = given if stored is None else {**stored, **given}
    now = utcnow()
    row = {
        "id": decision_in.customer_id,
        "name": None,
        "attributes": attributes,
        "created_at": now,
        "updated_at": now,
    }
    return attributes, row


def _ranked(keys: list[str], summary: posterior.NetValueSummary) -> list[dict[str, Any]]:
    """Every candidate with its scores, best expected net value first (stable on ties)."""
    mean = summary.mean.tolist()
    low, high, p_best = summary.ci_low.tolist(), summary.ci_high.tolist(), summary.p_best.tolist()
    return [
        {
            "experience": keys[k],
            "expected_net_value": round(mean[k], 4),
            "ci90": [round(low[k], 4), round(high[k], 4)],
            "p_best": round(p_best[k], 4),
        }
        for k in np.argsort(-summary.mean, kind="stable").tolist()
    ]


@dataclass(frozen=True)
class _FiredRule:
    version: int
    rule_id: str
    text: str
    allowed: list[int]
    """Indexes into the candidates of the experiences the rule lets the engine choose from."""


def _rule_for(
    runtime: Runtime,
    catalog: Catalog,
    attributes: Mapping[str, Any],
    keys: list[str],
) -> _FiredRule | None:
    """The active rule set's rule for this customer, if one fires and allows an eligible
    experience (else the engine chooses among all eligible ones). The active set is cached per
    catalog version; a session is opened only to reload it."""
    active = runtime.rules(None, catalog)
    index = active.first(attributes) if active is not None else None
    if active is None or index is None:
        return None
    rule = active.rules[index]
    allowed = [k for k, key in enumerate(keys) if key in rule["contenders"]]
    if not allowed:
        return None
    return _FiredRule(active.version, rule["rule_id"], active.texts[index], allowed)


def _apply_guardrails(
    runtime: Runtime,
    catalog: Catalog,
    customer_id: str,
    attributes: Mapping[str, Any],
    keys: list[str],
    channel: str | None,
) -> tuple[list[str], list[Suppressed]]:
    """The candidates the guardrails leave, and each suppressed one with its guardrail.

    The guardrails are cached per catalog version; without active guardrails this reads nothing,
    with some their (small, indexed) counts run on a short-lived session."""
    guardrails = runtime.guardrails(None, catalog)
    if not guardrails:
        return keys, []
    with runtime.read_session() as session:
        hits = guardrails.suppressed(
            session,
            customer_id=customer_id,
            attributes=attributes,
            candidates=keys,
            channel=channel,
            now=utcnow(),
        )
    suppressed = [Suppressed(experience=k, **hit) for k in keys for hit in hits.get(k, [])]
    left = [k for k in keys if k not in hits]
    if not left:
        raise Conflict(
            "every eligible experience is suppressed by a guardrail: "
            + ", ".join(f"{s.experience} by {s.name!r}" for s in suppressed),
            field="customer_id",
        )
    return left, suppressed


def _check_overrides(catalog: Catalog, decision_in: DecisionIn) -> None:
    for label in decision_in.values or {}:
        catalog.result_index(label, field=f"values.{label}")
    for key in decision_in.costs or {}:
        catalog.experience(key, field=f"costs.{key}")


def eligible_experiences(
    runtime: Runtime, catalog: Catalog, attributes: Mapping[str, Any], channel: str | None
) -> list[str]:
    keys = [
        key
        for key, predicate in runtime.candidates(catalog, channel)
        if predicate is None or predicate(attributes)
    ]
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


def posterior_inputs(
    catalog: Catalog,
    snapshot: StatsSnapshot,
    keys: list[str],
    attributes: Mapping[str, Any],
    path: list[str],
    exposures: Mapping[str, int],
    *,
    values: Mapping[str, float] | None = None,
    costs: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Dirichlet parameters and per-level net values for the candidates, both shape (K, L), and
    the evidence behind each: the cell of the segment tree the posterior comes from. ``values``
    and ``costs`` override level values and experience costs (one decision's overrides)."""
    alpha, net, _, evidence = _posterior_cells(
        catalog, snapshot, keys, attributes, path, exposures, values=values, costs=costs
    )
    return alpha, net, evidence


def _posterior_cells(
    catalog: Catalog,
    snapshot: StatsSnapshot,
    keys: list[str],
    attributes: Mapping[str, Any],
    path: list[str],
    exposures: Mapping[str, int],
    *,
    values: Mapping[str, float] | None = None,
    costs: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[CellKey], list[dict[str, Any]]]:
    """posterior_inputs, and the cell each posterior comes from (the key of its cached draws).

    Each candidate's posterior is that of the deepest cell with data on the customer's segment
    path, in the customer's exposure bucket for that experience (engine.hierarchy).
    """
    scale = catalog.require_scale()
    n_levels = len(scale.levels)
    alpha = np.empty((len(keys), n_levels))
    cells: list[CellKey] = []
    evidence = []
    for k, key in enumerate(keys):
        bucket = exposure_bucket(exposures.get(key, 0))
        alpha[k], depth = snapshot.tree.cell(path, key, bucket)
        cell = (path[depth] if depth >= 0 else None, key, bucket)
        cells.append(cell)
        evidence.append(
            {
                "experience": key,
                "segment": cell[0],
                "exposure_bucket": bucket,
                "n": snapshot.cell_total(cell),
            }
        )
    net = np.empty((len(keys), n_levels))
    worth: np.ndarray | None = None
    for k, key in enumerate(keys):
        info = catalog.experiences[key]
        if values or costs or info.cost_attribute or scale.per_customer:
            if worth is None:
                worth = level_values(scale, attributes, values)
            net[k] = _net(snapshot, scale, info, worth, attributes, costs)
        else:
            net[k] = snapshot.memo(("net", key), partial(_net, snapshot, scale, info))
    return alpha, net, cells, evidence


def _net(
    snapshot: StatsSnapshot,
    scale: Scale,
    info: ExperienceInfo,
    values: np.ndarray | None = None,
    attributes: Mapping[str, Any] | None = None,
    costs: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Value minus cost incurred, per level: shape (L,). Levels without a declared value take the
    mean realised value learned for the experience."""
    attributes = attributes or {}
    if values is None:
        values = level_values(scale, attributes)
    n_levels = len(scale.levels)
    known = np.where(np.isnan(values), snapshot.learned_values(info.key, n_levels), values)
    result: np.ndarray = known - cost_by_level(info, scale, attributes, costs)
    return result


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
        held_for=decision.experiment_key
        if decision.experiment_key in holding_experiments(session)
        else None,
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
    if stored.replayed:
        # A concurrent repeat with this idempotency key committed between the check above and
        # the store: it is the same outcome, answered as a replay (nothing new was stored).
        return outcome_public(stored), False
    runtime.wrote_stats()
    metrics.count_outcome(outcome_in.result)
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
