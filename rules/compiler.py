"""The compiler: from the fitted segment tree to a short, ordered list of readable rules.

1. Every node of the tree with first-exposure evidence is a candidate rule recommending its
   posterior-best experience (highest expected net value).
2. Pruning, bottom-up: a node under ``min_support`` results folds into its parent; a node that
   recommends what its nearest kept ancestor recommends is redundant; siblings that recommend the
   same merge into one rule (``plan in ["basic", "plus"]``); a rule no customer reaches goes.
3. While there are more than ``budget`` rules, the rule whose removal loses the least value goes.
4. Rules are emitted most specific first, ending in the default rule for everyone. A rule's
   expected net value, 90% CI and P(best) are those of the customers it serves (a
   traffic-weighted mixture of their leaves' joint posterior draws); while P(best) of its
   experience is below DECISIVE, the rule names its contenders ("still learning: A or B", the
   fewest experiences holding CONTENDER_MASS of P(best)) and the engine samples between them.

Value is measured on customers: each customer counts in the deepest node with evidence on their
path (their leaf). The full posterior policy gives each leaf its own best experience; the rule
policy gives it the experience of the first rule that matches (for a still-learning rule, its
leading experience: the sampling between contenders is exploration). The value loss is the
traffic-weighted difference, absolute (per customer) and in percent of the full policy's value;
the agreement is the share of customers whose rule picks their leaf's best. Deterministic for a
given seed.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlmodel import Session

from engine import posterior
from engine.attributes import MISSING, AttributeSpec, segment_path
from engine.catalog import Catalog
from engine.insights import customer_chunks, net_at_node, node_money
from engine.runtime import StatsSnapshot
from rules.language import And, Compare, Expr, InList, Or, Value, parse_rule, to_json, to_text

DEFAULT_BUDGET = 25
DEFAULT_MIN_SUPPORT = 30.0
DECISIVE = 0.8
"""P(best) from which a rule recommends one experience."""
CONTENDER_MASS = 0.9
"""A still-learning rule names the fewest experiences holding this much P(best) (at most 3)."""
MAX_CONTENDERS = 3
DRAWS = 2000


@dataclass(frozen=True)
class Settings:
    budget: int = DEFAULT_BUDGET
    min_support: float = DEFAULT_MIN_SUPPORT
    seed: int = 0


@dataclass
class _Node:
    key: str
    parent: str | None
    levels: tuple[tuple[str, str], ...]
    """(attribute, level) along the path from the root."""
    support: float
    value_draws: np.ndarray
    """Joint draws of every experience's net value: shape (S, K)."""
    best: str
    """The posterior-best experience (highest expected net value)."""
    traffic: float = 0.0
    """Customers whose leaf is this node."""


@dataclass
class _Rule:
    """A kept node, or siblings merged (same parent, same last attribute, several levels)."""

    nodes: list[str]
    parent: str | None
    prefix: tuple[tuple[str, str], ...]
    last: tuple[str, tuple[str, ...]] | None
    experience: str
    depth: int


@dataclass(frozen=True)
class Compiled:
    rules: list[dict[str, Any]]
    metrics: dict[str, Any]
    text: str


def compile_rules(
    *,
    session: Session,
    catalog: Catalog,
    snapshot: StatsSnapshot,
    settings: Settings,
    title: str = "Rule set",
) -> Compiled:
    """Compile the current posterior into rules (see the module docstring)."""
    experiences = sorted(k for k, info in catalog.experiences.items() if info.active)
    if not experiences:
        raise ValueError("no active experience")
    nodes = _nodes(session, catalog, snapshot, experiences, settings.seed)
    _traffic(session, catalog, nodes)
    leaves = {key: node for key, node in nodes.items() if node.traffic > 0}
    full_value = _full_value(leaves)
    rules = sorted(
        _prune(nodes, experiences, settings),
        key=lambda r: (r.nodes == [""], -r.depth, r.prefix, r.last or ()),
    )
    emitted = _emit(rules, nodes, experiences, catalog.specs)
    policy_value, agreement = _policy_value(rules, nodes, leaves, experiences)
    total = sum(node.traffic for node in leaves.values()) or 1.0
    loss = (full_value - policy_value) / total
    metrics = {
        "rules": len(emitted),
        "budget": settings.budget,
        "min_support": settings.min_support,
        "seed": settings.seed,
        "customers": round(total, 3),
        "full_policy_value": round(full_value / total, 4),
        "rules_policy_value": round(policy_value / total, 4),
        "value_loss": round(loss, 4),
        "value_loss_pct": round(100 * loss / (full_value / total), 3) if full_value > 0 else 0.0,
        "agreement": round(agreement / total, 4),
        "segmentation": list(catalog.segmentation),
        "half_life_days": catalog.half_life_days,
    }
    names = {key: info.name for key, info in catalog.experiences.items()}
    return Compiled(rules=emitted, metrics=metrics, text=markdown(title, emitted, metrics, names))


# The tree --------------------------------------------------------------------------------------


def _nodes(
    session: Session,
    catalog: Catalog,
    snapshot: StatsSnapshot,
    experiences: list[str],
    seed: int,
) -> dict[str, _Node]:
    """Every node with first-exposure evidence, with its experiences' joint value draws."""
    rng = np.random.default_rng(seed)
    money = node_money(session, snapshot, catalog)
    keys = sorted({node for node, _, bucket in snapshot.tree.counts if bucket == 0})
    nodes: dict[str, _Node] = {}
    for key in keys:
        levels = tuple(tuple(part.split("=", 1)) for part in key.split("|") if part)
        path = [""] + ["|".join(f"{a}={v}" for a, v in levels[: i + 1]) for i in range(len(levels))]
        alpha = np.array([snapshot.tree.cell(path, e, 0)[0] for e in experiences])
        net = np.array([net_at_node(catalog, money, key, e) for e in experiences])
        draws = posterior.dirichlet_draws(alpha, DRAWS, rng)
        value_draws = np.einsum("skl,kl->sk", draws, net)
        support = sum(
            float(snapshot.tree.counts[(key, e, 0)].sum())
            for e in experiences
            if (key, e, 0) in snapshot.tree.counts
        )
        nodes[key] = _Node(
            key=key,
            parent=path[-2] if len(path) > 1 else None,
            levels=levels,  # type: ignore[arg-type]
            support=support,
            value_draws=value_draws,
            best=experiences[int(np.argmax(value_draws.mean(axis=0)))],
        )
    return nodes


def _contenders(p_best: np.ndarray, experience: str, experiences: Sequence[str]) -> list[str]:
    """``[experience]`` when it is decisively best, else it and the next experiences by P(best)
    until they hold CONTENDER_MASS (at most MAX_CONTENDERS)."""
    chosen = [experience]
    mass = float(p_best[experiences.index(experience)])
    for k in sorted(range(len(experiences)), key=lambda k: (-p_best[k], experiences[k])):
        if mass >= (DECISIVE if len(chosen) == 1 else CONTENDER_MASS):
            break
        if len(chosen) == MAX_CONTENDERS:
            break
        if experiences[k] not in chosen:
            chosen.append(experiences[k])
            mass += float(p_best[k])
    return chosen


def _traffic(session: Session, catalog: Catalog, nodes: dict[str, _Node]) -> None:
    """Each customer counts once, in the deepest node with evidence on their path; with no
    customers stored, results stand in for them."""
    found = False
    for customers in customer_chunks(session):
        for customer in customers:
            path = segment_path(catalog.specs, catalog.segmentation, customer.attributes)
            leaf = next((key for key in reversed(path) if key in nodes), None)
            if leaf is not None:
                nodes[leaf].traffic += 1.0
                found = True
    if not found:
        for node in nodes.values():
            node.traffic = node.support


def _full_value(leaves: Mapping[str, _Node]) -> float:
    return sum(
        node.traffic * float(node.value_draws.mean(axis=0).max()) for node in leaves.values()
    )


# Pruning ---------------------------------------------------------------------------------------


def _prune(nodes: dict[str, _Node], experiences: list[str], settings: Settings) -> list[_Rule]:
    kept = {
        key
        for key, node in nodes.items()
        if key == ""
        or (node.support >= settings.min_support and all(v != MISSING for _, v in node.levels))
    }
    if "" not in nodes:
        raise ValueError("no evidence at all: log results before compiling rules")
    changed = True
    while changed:
        changed = False
        for key in sorted(kept, key=lambda k: -len(nodes[k].levels)):
            ancestor = _kept_ancestor(nodes, kept, key)
            if ancestor is not None and nodes[key].best == nodes[ancestor].best:
                kept.discard(key)
                changed = True
    rules = _merge_siblings(nodes, kept)
    leaves = {key: node for key, node in nodes.items() if node.traffic > 0}
    reached = {id(_assign(rules, nodes, key)) for key in leaves}
    rules = [r for r in rules if r.nodes == [""] or id(r) in reached]
    while len(rules) > settings.budget:
        removable = [r for r in rules if r.nodes != [""]]
        value_without = [
            _value_of([x for x in rules if x is not r], nodes, leaves, experiences)
            for r in removable
        ]
        rules.remove(removable[int(np.argmax(value_without))])
    return rules


def _kept_ancestor(nodes: Mapping[str, _Node], kept: set[str], key: str) -> str | None:
    parent = nodes[key].parent
    while parent is not None and parent not in kept:
        parent = nodes[parent].parent if parent in nodes else _parent_key(parent)
    return parent


def _parent_key(key: str) -> str | None:
    if key == "":
        return None
    return key.rsplit("|", 1)[0] if "|" in key else ""


def _merge_siblings(nodes: Mapping[str, _Node], kept: set[str]) -> list[_Rule]:
    groups: dict[tuple[str | None, str, str], list[str]] = defaultdict(list)
    rules = []
    for key in sorted(kept):
        node = nodes[key]
        if key == "":
            rules.append(_Rule([""], None, (), None, node.best, 0))
            continue
        attribute = node.levels[-1][0]
        groups[(_parent_key(key), attribute, node.best)].append(key)
    for (parent, attribute, best), members in sorted(groups.items(), key=str):
        prefix = nodes[members[0]].levels[:-1]
        rules.append(
            _Rule(
                nodes=members,
                parent=parent,
                prefix=prefix,
                last=(attribute, tuple(nodes[m].levels[-1][1] for m in members)),
                experience=best,
                depth=len(prefix) + 1,
            )
        )
    return rules


def _assign(rules: Sequence[_Rule], nodes: Mapping[str, _Node], leaf: str) -> _Rule:
    """The rule a leaf's customers get: the first (most specific) rule on its path."""
    by_node = {key: rule for rule in rules for key in rule.nodes}
    key: str | None = leaf
    while key is not None:
        if key in by_node:
            return by_node[key]
        key = _parent_key(key)
    raise AssertionError("the default rule covers every leaf")


def _value_of(
    rules: Sequence[_Rule],
    nodes: Mapping[str, _Node],
    leaves: Mapping[str, _Node],
    experiences: Sequence[str],
) -> float:
    total = 0.0
    for key, node in leaves.items():
        k = experiences.index(_assign(rules, nodes, key).experience)
        total += node.traffic * float(node.value_draws[:, k].mean())
    return total


def _policy_value(
    rules: Sequence[_Rule],
    nodes: Mapping[str, _Node],
    leaves: Mapping[str, _Node],
    experiences: Sequence[str],
) -> tuple[float, float]:
    """Value of the rules' policy and the traffic on which it picks the leaf's best."""
    value = agreement = 0.0
    for key, node in leaves.items():
        k = experiences.index(_assign(rules, nodes, key).experience)
        means = node.value_draws.mean(axis=0)
        value += node.traffic * float(means[k])
        agreement += node.traffic * float(k == int(np.argmax(means)))
    return value, agreement


# Emission --------------------------------------------------------------------------------------


def _emit(
    ordered: list[_Rule],
    nodes: Mapping[str, _Node],
    experiences: Sequence[str],
    specs: Mapping[str, AttributeSpec],
) -> list[dict[str, Any]]:
    """The rules in evaluation order as stored JSON, with the metrics of the customers each
    serves."""
    leaves = {key: node for key, node in nodes.items() if node.traffic > 0}
    served: dict[int, list[_Node]] = defaultdict(list)
    for key, node in leaves.items():
        served[id(_assign(ordered, nodes, key))].append(node)
    total = sum(n.traffic for n in leaves.values()) or 1.0
    out = []
    for priority, rule in enumerate(ordered):
        condition = _condition(rule, specs)
        mixture = _mixture(served[id(rule)] or [nodes[rule.nodes[0]]])
        shown = experiences.index(rule.experience)
        p_best = np.bincount(mixture.argmax(axis=1), minlength=len(experiences)) / len(mixture)
        contenders = _contenders(p_best, rule.experience, experiences)
        low, high = np.quantile(mixture[:, shown], [0.05, 0.95])
        traffic = sum(n.traffic for n in served[id(rule)])
        out.append(
            {
                "rule_id": f"r{priority + 1:02d}",
                "priority": priority,
                "segment": {a: list(v) for a, v in _segment(rule).items()},
                "condition": to_json(condition),
                "condition_text": to_text(condition),
                "experience": rule.experience if len(contenders) == 1 else None,
                "contenders": contenders,
                "expected_net_value": round(float(mixture[:, shown].mean()), 4),
                "ci90": [round(float(low), 4), round(float(high), 4)],
                "p_best": {e: round(float(p_best[experiences.index(e)]), 4) for e in contenders},
                "support": round(sum(n.support for n in served[id(rule)]), 3),
                "traffic": round(traffic, 3),
                "traffic_share": round(traffic / total, 4),
            }
        )
    return out


def _mixture(served: Sequence[_Node]) -> np.ndarray:
    weights = np.array([max(n.traffic, 0.0) for n in served])
    if weights.sum() <= 0:
        weights = np.ones(len(served))
    weights = weights / weights.sum()
    mixed: np.ndarray = np.einsum("n,nsk->sk", weights, np.array([n.value_draws for n in served]))
    return mixed


def _segment(rule: _Rule) -> dict[str, tuple[str, ...]]:
    segment: dict[str, tuple[str, ...]] = {a: (v,) for a, v in rule.prefix}
    if rule.last is not None:
        segment[rule.last[0]] = rule.last[1]
    return segment


def _condition(rule: _Rule, specs: Mapping[str, AttributeSpec]) -> Expr:
    parts = [level_condition(specs[a], levels) for a, levels in _segment(rule).items()]
    text = to_text(And(tuple(parts))) if len(parts) > 1 else to_text(parts[0]) if parts else "true"
    return parse_rule(text, specs, field="condition")  # the canonical, validated AST


def level_condition(spec: AttributeSpec, levels: Sequence[str]) -> Expr:
    """The condition that a customer's attribute is in one of the segment ``levels``."""
    if spec.type == "categorical":
        return (
            Compare(spec.name, "==", levels[0])
            if len(levels) == 1
            else InList(spec.name, tuple(levels))
        )
    if spec.type == "boolean":
        values = tuple(level == "true" for level in levels)
        return (
            Compare(spec.name, "==", values[0]) if len(values) == 1 else InList(spec.name, values)
        )
    labels = spec.segment_levels()
    ranges = _ranges(sorted(labels.index(level) for level in levels))
    parts = [_range(spec, lo, hi) for lo, hi in ranges]
    return parts[0] if len(parts) == 1 else Or(tuple(parts))


def _ranges(indexes: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs of bin indexes, as (first, last)."""
    runs: list[tuple[int, int]] = []
    for i in indexes:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _range(spec: AttributeSpec, first: int, last: int) -> Expr:
    """Bins ``first``..``last`` as bounds on the attribute (every bin: the attribute is set)."""
    edges: list[Value] = [
        dt.date.fromordinal(int(e)) if spec.type == "date" else float(e) for e in spec.bins
    ]
    parts: list[Expr] = []
    if first > 0:
        parts.append(Compare(spec.name, ">=", edges[first - 1]))
    if last < len(edges):
        parts.append(Compare(spec.name, "<", edges[last]))
    if not parts:
        pivot: Value = edges[0] if edges else (_ANY_DATE if spec.type == "date" else 0.0)
        return Or((Compare(spec.name, "<", pivot), Compare(spec.name, ">=", pivot)))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


_ANY_DATE = dt.date(2000, 1, 1)


# Text ------------------------------------------------------------------------------------------


def sentence(rule: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """One rule as a sentence (DESIGN section 6)."""
    segment = rule["segment"]
    experiment = rule.get("experiment")
    if experiment is not None:
        head = (
            "OTHERWISE" if rule["condition_text"] == "true" else f"IF {rule['condition_text']} THEN"
        )
    elif segment:
        clauses = [f"{attribute} is {' or '.join(levels)}" for attribute, levels in segment.items()]
        head = "IF " + " AND ".join(clauses) + " THEN"
    else:
        head = "OTHERWISE"
    low, high = rule["ci90"]
    evidence = f"from {rule['support']:.0f} results"
    if experiment is not None:
        evidence += (
            f" of experiment {experiment['key']!r}, concluded by {experiment['concluded_by']} "
            f"on {str(experiment['concluded_at'])[:10]}"
        )
    if rule["experience"] is not None:
        key = rule["experience"]
        return (
            f'{head} offer "{names.get(key, key)}": expected net {rule["expected_net_value"]:+.1f} '
            f"(90% CI {low:.1f} to {high:.1f}), P(best) {rule['p_best'][key]:.2f}, {evidence}"
        )
    choices = " or ".join(
        f'"{names.get(k, k)}" (P(best) {rule["p_best"][k]:.2f})' for k in rule["contenders"]
    )
    return (
        f"{head} still learning: choose between {choices}; expected net of the leading one "
        f"{rule['expected_net_value']:+.1f} (90% CI {low:.1f} to {high:.1f}), {evidence}"
    )


def markdown(
    title: str,
    rules: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    names: Mapping[str, str] | None = None,
) -> str:
    names = names or {}
    lines = [
        f"# {title}",
        "",
        f"{metrics['rules']} rules over the segmentation "
        f"{', '.join(metrics['segmentation']) or '(none)'}; value loss against the full "
        f"posterior policy {metrics['value_loss']:.2f} per customer "
        f"({metrics['value_loss_pct']:.2f}%); the rules pick the posterior-best experience for "
        f"{100 * metrics['agreement']:.1f}% of customers.",
        "",
    ]
    for rule in rules:
        lines.append(
            f"{rule['priority'] + 1}. {sentence(rule, names)} "
            f"({100 * rule['traffic_share']:.1f}% of customers)"
        )
    return "\n".join(lines) + "\n"
