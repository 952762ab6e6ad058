"""Concluded experiments' winners as rules: the next compiled rule-set version puts them first.

A conclusion with a winner becomes one rule (the experiment's eligibility, or everyone); winners
per segment become one rule each (the eligibility and the segment's condition). Each carries the
experiment's evidence for its winner: expected net value with its 90% CI, P(best) and the number
of results, and who concluded it when. Rules are data: the same JSON as compiled rules, so the
durable-rules runtime and the Python evaluator run them alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlmodel import Session, col, select

from engine.catalog import Catalog
from engine.insights import customer_chunks
from experiments import stats
from experiments.evidence import load_evidence
from experiments.models import Experiment
from rules.language import And, Const, Expr, compile_predicate, parse_rule, to_json, to_text

__all__ = ["promoted_rules"]


def promoted_rules(session: Session, catalog: Catalog, seed: int = 0) -> list[dict[str, Any]]:
    """The rules concluded experiments promote, oldest conclusion first."""
    rows = session.exec(
        select(Experiment)
        .where(col(Experiment.status) == "concluded")
        .order_by(col(Experiment.updated_at), col(Experiment.key))
    ).all()
    winners: list[tuple[Experiment, str, str | None]] = []
    for row in rows:
        conclusion = row.conclusion or {}
        if not conclusion.get("promote") or conclusion.get("decision") == "none":
            continue
        if conclusion["decision"] == "winner":
            winners.append((row, conclusion["winner"], None))
        else:
            winners.extend(
                (row, w["experience"], w["where"]) for w in conclusion["segment_winners"]
            )
    rules = [_rule(session, catalog, row, arm, where, seed) for row, arm, where in winners]
    return [rule for rule in rules if catalog.experiences.get(rule["experience"])]


def _rule(
    session: Session, catalog: Catalog, row: Experiment, arm: str, where: str | None, seed: int
) -> dict[str, Any]:
    parts: list[Expr] = [
        parse_rule(text, catalog.specs, field="condition")
        for text in (row.eligibility, where)
        if text
    ]
    condition = parts[0] if len(parts) == 1 else And(tuple(parts)) if parts else None
    evidence = load_evidence(session, catalog, row)
    counts = evidence.counts()
    draws = stats.value_draws(counts, evidence.net, np.random.default_rng(seed))
    summary = stats.summarize_arms(draws, None)
    a = evidence.arms.index(arm)
    conclusion = row.conclusion or {}
    return {
        "segment": {},
        "condition": to_json(condition if condition is not None else Const(True)),
        "condition_text": to_text(condition) if condition is not None else "true",
        "experience": arm,
        "contenders": [arm],
        "expected_net_value": round(float(summary.mean[a]), 4),
        "ci90": [round(float(summary.ci_low[a]), 4), round(float(summary.ci_high[a]), 4)],
        "p_best": {arm: round(float(summary.p_best[a]), 4)},
        "support": float(counts[a].sum()),
        "traffic": _traffic(session, condition),
        "experiment": {
            "key": row.key,
            "name": row.name,
            "concluded_by": conclusion.get("by"),
            "concluded_at": conclusion.get("at"),
        },
    }


def _traffic(session: Session, condition: Expr | None) -> float:
    """Stored customers the rule's condition holds for."""
    holds = compile_predicate(condition) if condition is not None else None
    return float(
        sum(
            1
            for customers in customer_chunks(session)
            for customer in customers
            if holds is None or holds(customer.attributes)
        )
    )
