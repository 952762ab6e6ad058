"""What the engine knows, for people: the segment tree with its estimates, and the customers where
acting pays.

``segment_insights`` walks the fitted tree (engine.hierarchy) and reports, per node and
experience, the posterior distribution over result levels, the expected net value with its 90%
credible interval and P(best) among the experiences at that node, and the evidence n.

``score_customers`` gives each customer's expected net value of every eligible experience (the
same posterior a decision uses, closed-form means: no sampling) and the gain of the best over the
control experience. ``worklist`` ranks customers by that gain, so agents call the customers where
acting pays and leave alone those who would stay anyway; ``nextbest score`` writes the scores of
every customer to CSV.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Table, func
from sqlalchemy import select as sa_select
from sqlmodel import Session

from engine import posterior
from engine.attributes import segment_path
from engine.catalog import Catalog
from engine.db import keyset_pages
from engine.decisions import eligible_experiences, posterior_inputs
from engine.errors import Conflict
from engine.hierarchy import node_paths
from engine.models import Customer, Exposure, utcnow
from engine.money import cost_by_level, level_values
from engine.runtime import Runtime, StatsSnapshot
from engine.stats import exposure_bucket

INSIGHT_DRAWS = 4000
"""Joint posterior draws per node for intervals and P(best)."""

SCORE_CHUNK = 1000
"""Customers read and scored per query."""


# Segments --------------------------------------------------------------------------------------


def segment_insights(
    *,
    session: Session,
    runtime: Runtime,
    exposure: int = 0,
    max_depth: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The segment tree with, per node and experience, what the posterior says (see module doc).

    ``exposure`` picks the exposure bucket (0: a first offer of the experience to the customer).
    Net values are those of the node's typical customer: a value or cost based on an attribute
    uses the attribute's mean over the node's customers, a learned level value the mean realised
    value in the node.

    The whole tree is computed once per statistics snapshot, exposure and seed (and customer
    base, when some value or cost depends on attributes) and kept with the snapshot; a depth
    limit filters it.
    """
    catalog = runtime.catalog(session)
    catalog.require_scale()
    snapshot = runtime.stats(session, catalog)
    depth_limit = len(catalog.segmentation) if max_depth is None else max_depth
    customers = customers_fingerprint(session) if _money_per_customer(catalog) else None
    key = ("segment_insights", catalog.version, exposure, seed, customers)
    report: dict[str, Any] = snapshot.memo(
        key, lambda: _segment_report(session, catalog, snapshot, exposure, seed)
    )
    return {**report, "nodes": [n for n in report["nodes"] if n["depth"] <= depth_limit]}


def _money_per_customer(catalog: Catalog) -> bool:
    scale = catalog.require_scale()
    return scale.per_customer or any(
        e.cost_attribute is not None for e in catalog.experiences.values()
    )


def _segment_report(
    session: Session, catalog: Catalog, snapshot: StatsSnapshot, exposure: int, seed: int
) -> dict[str, Any]:
    scale = catalog.require_scale()
    money = node_money(session, snapshot, catalog)
    rng = np.random.default_rng(seed)
    nodes: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = defaultdict(list)
    for (node, key, bucket), counts in snapshot.tree.counts.items():
        if bucket != exposure or key not in catalog.experiences:
            continue
        alpha = snapshot.tree.alpha[(node, key, bucket)]
        nodes[node].append((key, alpha, counts))
    out = []
    for node in sorted(nodes, key=lambda n: (_depth(n), n)):
        cells = sorted(nodes[node])
        keys = [key for key, _, _ in cells]
        alpha = np.array([a for _, a, _ in cells])
        net = np.array([net_at_node(catalog, money, node, key) for key in keys])
        draws = posterior.dirichlet_draws(alpha, INSIGHT_DRAWS, rng)
        summary = posterior.summarize(alpha, net, np.einsum("skl,kl->sk", draws, net))
        means = posterior.dirichlet_mean(alpha)
        out.append(
            {
                "segment": node,
                "depth": _depth(node),
                "experiences": [
                    {
                        "experience": key,
                        "n": round(float(counts.sum()), 3),
                        "distribution": {
                            label: round(float(p), 4)
                            for label, p in zip(scale.labels, means[k], strict=True)
                        },
                        "expected_net_value": round(float(summary.mean[k]), 4),
                        "ci90": [
                            round(float(summary.ci_low[k]), 4),
                            round(float(summary.ci_high[k]), 4),
                        ],
                        "p_best": round(float(summary.p_best[k]), 4),
                    }
                    for k, (key, _, counts) in enumerate(cells)
                ],
            }
        )
    return {
        "segmentation": list(catalog.segmentation),
        "exposure": exposure,
        "levels": list(scale.labels),
        "half_life_days": catalog.half_life_days,
        "as_of": snapshot.table.as_of,
        "kappas": {
            experience: [round(float(k), 3) for k in snapshot.tree.kappas[:, i]]
            for i, experience in enumerate(snapshot.tree.experiences)
        },
        "additive_weights": {
            experience: [round(float(v), 3) for v in snapshot.tree.base_weights[:, i]]
            for i, experience in enumerate(snapshot.tree.experiences)
        },
        "nodes": out,
    }


def _depth(node: str) -> int:
    return 0 if node == "" else node.count("|") + 1


@dataclass(frozen=True)
class NodeMoney:
    """What a result is worth and an experience costs at each node.

    value_weights, value_sums: realised values per (node, experience), shape (L,), for levels
    whose value is learned; attribute_means: per node, the mean of each numeric attribute that a
    level value or a cost is based on, over the node's customers (its "typical customer").
    """

    value_weights: Mapping[tuple[str, str], np.ndarray]
    value_sums: Mapping[tuple[str, str], np.ndarray]
    attribute_means: Mapping[str, Mapping[str, float]]


def node_money(session: Session, snapshot: StatsSnapshot, catalog: Catalog) -> NodeMoney:
    table = snapshot.table
    labels = catalog.require_scale().labels
    level_of = {label: i for i, label in enumerate(labels)}
    segments = sorted(set(table.segments.tolist()))
    parsed = [dict(p.split("=", 1) for p in s.split("|") if p) for s in segments]
    paths = dict(zip(segments, node_paths(parsed, catalog.segmentation), strict=True))
    value_weights: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(len(labels)))
    value_sums: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(len(labels)))
    for i in range(len(table.counts)):
        level = level_of.get(table.levels[i])
        if level is None:
            continue
        for node in paths[table.segments[i]]:
            value_weights[(node, str(table.experiences[i]))][level] += table.value_weights[i]
            value_sums[(node, str(table.experiences[i]))][level] += table.value_sums[i]
    return NodeMoney(value_weights, value_sums, _attribute_means(session, catalog))


def _attribute_means(session: Session, catalog: Catalog) -> dict[str, dict[str, float]]:
    """Per node, the mean of every attribute a value or cost depends on (one pass over the
    customers, only when some value or cost is attribute-based)."""
    scale = catalog.require_scale()
    wanted = [level.value_attribute for level in scale.levels] + [
        e.cost_attribute for e in catalog.experiences.values()
    ]
    names = {name for name in wanted if name is not None}
    if not names:
        return {}
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for customers in customer_chunks(session):
        for customer in customers:
            path = segment_path(catalog.specs, catalog.segmentation, customer.attributes)
            for name in names:
                raw = customer.attributes.get(name)
                if isinstance(raw, int | float) and not isinstance(raw, bool):
                    for node in path:
                        total = sums[node][name]
                        total[0] += raw
                        total[1] += 1
    return {
        node: {name: total / n for name, (total, n) in by_name.items() if n}
        for node, by_name in sums.items()
    }


def net_at_node(catalog: Catalog, money: NodeMoney, node: str, key: str) -> np.ndarray:
    """Net value per level for the node's typical customer (see NodeMoney)."""
    scale = catalog.require_scale()
    n_levels = len(scale.levels)
    typical = money.attribute_means.get(node, {})
    fixed = level_values(scale, typical)
    weights = money.value_weights.get((node, key), np.zeros(n_levels))
    sums = money.value_sums.get((node, key), np.zeros(n_levels))
    learned = np.divide(sums, weights, out=np.zeros(n_levels), where=weights > 0)
    net: np.ndarray = np.where(np.isnan(fixed), learned, fixed) - cost_by_level(
        catalog.experiences[key], scale, typical
    )
    return net


# Customers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerScore:
    """One customer's best experience against the control, in expected net value per decision.

    gain = best - control net value; uplift = the best's expected gross value minus the
    control's; cost = the best's expected cost; value_at_stake = under the control, P(the worst
    result, e.g. churned) times what the other results are worth over it: the value expected to
    be lost if nothing is done.
    """

    customer_id: str
    name: str | None
    attributes: Mapping[str, Any]
    segment: str
    best_experience: str
    best_net_value: float
    control_experience: str
    control_net_value: float
    gain: float
    uplift: float
    cost: float
    value_at_stake: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def control_key(catalog: Catalog) -> str:
    control = [k for k, info in catalog.experiences.items() if info.is_control and info.active]
    if not control:
        raise Conflict(
            "no active control experience; mark one with is_control (e.g. no_offer) to rank "
            "customers by what acting gains over it",
            field="experiences",
        )
    return control[0]


def score_customers(
    *,
    session: Session,
    runtime: Runtime,
    catalog: Catalog,
    snapshot: StatsSnapshot,
    customers: Sequence[Customer],
    memo: dict[tuple[str, str, int], _CellScore] | None = None,
) -> list[CustomerScore]:
    """Score ``customers`` (see CustomerScore); a customer with no eligible experience is left
    out.

    Customers share cells: where an experience's money does not depend on the customer's
    attributes, its expected net value and cost are those of the cell (leaf segment, experience,
    exposure bucket), computed once per cell in ``memo`` (pass the same dict for every chunk of
    one snapshot) instead of once per customer.
    """
    scale = catalog.require_scale()
    control = control_key(catalog)
    exposures = _exposures(session, [c.id for c in customers])
    memo = {} if memo is None else memo
    scores = []
    for customer in customers:
        attributes = customer.attributes
        try:
            keys = eligible_experiences(runtime, catalog, attributes, None)
        except Conflict:
            continue
        if control not in keys:
            keys.append(control)
        path = runtime.segment_path(catalog, attributes)
        seen = exposures.get(customer.id, {})
        cells = []
        for key in keys:
            bucket = exposure_bucket(seen.get(key, 0))
            if scale.per_customer or catalog.experiences[key].cost_attribute is not None:
                cells.append(_cell_score(catalog, snapshot, key, bucket, attributes, path))
                continue
            found = memo.get((path[-1], key, bucket))
            if found is None:
                found = memo[(path[-1], key, bucket)] = _cell_score(
                    catalog, snapshot, key, bucket, attributes, path
                )
            cells.append(found)
        nets = [cell.net for cell in cells]
        best, c = max(range(len(keys)), key=nets.__getitem__), keys.index(control)
        scores.append(
            CustomerScore(
                customer_id=customer.id,
                name=customer.name,
                attributes=attributes,
                segment=path[-1],
                best_experience=keys[best],
                best_net_value=round(nets[best], 4),
                control_experience=control,
                control_net_value=round(nets[c], 4),
                gain=round(nets[best] - nets[c], 4),
                uplift=round(cells[best].gross - cells[c].gross, 4),
                cost=round(cells[best].cost, 4),
                value_at_stake=round(cells[c].at_stake, 4),
            )
        )
    return scores


@dataclass(frozen=True)
class _CellScore:
    """One experience for one customer (or every customer of a cell): expected net value, cost
    and gross value, and the value at stake were it the control."""

    net: float
    cost: float
    gross: float
    at_stake: float


def _cell_score(
    catalog: Catalog,
    snapshot: StatsSnapshot,
    key: str,
    bucket: int,
    attributes: Mapping[str, Any],
    path: list[str],
) -> _CellScore:
    scale = catalog.require_scale()
    alpha, net, _ = posterior_inputs(catalog, snapshot, [key], attributes, path, {key: bucket})
    costs = cost_by_level(catalog.experiences[key], scale, attributes)
    p = posterior.dirichlet_mean(alpha[0])
    expected_net = float(p @ net[0])
    expected_cost = float(p @ costs)
    return _CellScore(
        net=expected_net,
        cost=expected_cost,
        gross=expected_net + expected_cost,
        at_stake=_at_stake(p, net[0] + costs),
    )


def _at_stake(p: np.ndarray, gross: np.ndarray) -> float:
    """P(the worst result) x (what the other results are worth on average, less the worst's
    value): the value the customer is expected to lose if nothing changes."""
    worst = int(np.argmin(gross))
    others = np.arange(len(gross)) != worst
    if p[others].sum() <= 0:
        return 0.0
    mean_other = float((p[others] * gross[others]).sum() / p[others].sum())
    return float(p[worst] * (mean_other - gross[worst]))


def _exposures(session: Session, ids: Sequence[str]) -> dict[str, dict[str, int]]:
    table: Table = Exposure.__table__  # type: ignore[attr-defined]
    found: dict[str, dict[str, int]] = defaultdict(dict)
    rows = session.connection().execute(
        sa_select(table.c.customer_id, table.c.experience_key, table.c["count"]).where(
            table.c.customer_id.in_(ids)
        )
    )
    for cid, key, count in rows:
        found[cid][key] = count
    return found


def customer_chunks(session: Session, *, chunk: int = SCORE_CHUNK) -> Iterator[list[Customer]]:
    """Every customer in id order, ``chunk`` at a time (constant memory)."""
    return keyset_pages(session, Customer, "id", chunk)


def iter_scores(
    *, session: Session, runtime: Runtime, chunks: Iterable[Sequence[Customer]]
) -> Iterator[CustomerScore]:
    catalog = runtime.catalog(session)
    catalog.require_scale()
    control_key(catalog)
    snapshot = runtime.stats(session, catalog)
    memo: dict[tuple[str, str, int], _CellScore] = {}
    for customers in chunks:
        yield from score_customers(
            session=session,
            runtime=runtime,
            catalog=catalog,
            snapshot=snapshot,
            customers=customers,
            memo=memo,
        )


def worklist(
    *,
    session: Session,
    runtime: Runtime,
    where: str | None,
    experience: str | None,
    min_gain: float | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """Customers ranked by gain (highest first), filtered by a rule-language condition on their
    attributes, by best experience and by a minimum gain; ``limit`` from ``offset``.

    Every customer is scored against the current statistics. Up to WORKLIST_CACHE_CUSTOMERS
    customers, the ranked scores are kept with the statistics snapshot (engine.runtime) until the
    statistics or a customer change, so that paging and filtering a worklist cost a pass over
    the ranking rather than a scoring of the base. A larger base is scored per request (customers
    read in chunks, only the top ``offset + limit`` kept): memory bounded by the page.
    """
    catalog = runtime.catalog(session)
    predicate = where_predicate(catalog, where)
    if experience is not None:
        catalog.experience(experience, field="experience")

    def keep(score: CustomerScore) -> bool:
        return (
            (experience is None or score.best_experience == experience)
            and (min_gain is None or score.gain >= min_gain)
            and (predicate is None or predicate(score.attributes))
        )

    ranked = _ranked_scores(session, runtime, catalog)
    if ranked is not None:
        kept = [score for score in ranked if keep(score)]
        matched = len(kept)
        page = kept[offset : offset + limit]
    else:
        matched = 0

        def candidates() -> Iterator[CustomerScore]:
            nonlocal matched
            chunks = (
                [c for c in customers if predicate is None or predicate(c.attributes)]
                for customers in customer_chunks(session)
            )
            for score in iter_scores(session=session, runtime=runtime, chunks=chunks):
                if keep(score):
                    matched += 1
                    yield score

        # nsmallest keeps a heap of offset + limit scores: memory bounded by the page.
        page = heapq.nsmallest(offset + limit, candidates(), key=_rank)[offset:]
    return {
        "items": [s.as_dict() for s in page],
        "matched": matched,
        "next_offset": offset + limit if matched > offset + limit else None,
        "as_of": utcnow(),
    }


WORKLIST_CACHE_CUSTOMERS = 50_000
"""Largest customer base whose ranked scores a worker keeps in memory (about 1 KiB each)."""


def _rank(score: CustomerScore) -> tuple[float, str]:
    return (-score.gain, score.customer_id)


def _ranked_scores(
    session: Session, runtime: Runtime, catalog: Catalog
) -> list[CustomerScore] | None:
    """Every customer's score, ranked, kept with the snapshot while no customer changed (None:
    the base is too large to keep)."""
    fingerprint = customers_fingerprint(session)
    if fingerprint[0] > WORKLIST_CACHE_CUSTOMERS:
        return None
    catalog.require_scale()
    control_key(catalog)
    snapshot = runtime.stats(session, catalog)
    slot: dict[str, Any] = snapshot.memo(("worklist", catalog.version), dict)
    found = slot.get("ranked")
    if found is not None and found[0] == fingerprint:
        ranked: list[CustomerScore] = found[1]
        return ranked
    scores = iter_scores(session=session, runtime=runtime, chunks=customer_chunks(session))
    ranked = sorted(scores, key=_rank)
    slot["ranked"] = (fingerprint, ranked)
    return ranked


def customers_fingerprint(session: Session) -> tuple[int, str]:
    """(number of customers, latest update): changes whenever a customer is added or changed,
    so that what is kept per snapshot about customers is dropped with their change."""
    table: Table = Customer.__table__  # type: ignore[attr-defined]
    n, last_update = (
        session.connection().execute(sa_select(func.count(), func.max(table.c.updated_at))).one()
    )
    return int(n), str(last_update)


def where_predicate(catalog: Catalog, where: str | None) -> Any:
    if not where:
        return None
    from rules.language import compile_predicate, parse_rule

    return compile_predicate(parse_rule(where, catalog.specs, field="where"))


__all__ = [
    "CustomerScore",
    "customer_chunks",
    "customers_fingerprint",
    "iter_scores",
    "score_customers",
    "segment_insights",
    "where_predicate",
    "worklist",
]
