"""The demo business: the simulator's retention world loaded into an empty database.

Outcome scale, attribute specs, eight experiences (one the control), a segmentation, 5,000
customers and about 50,000 historical triples drawn from the simulator's ground truth, rule-set
version 1 compiled from them and active, plus one demo key per role. The keys are fixed so that
the README's curl calls work verbatim; they are for a local demo only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, select

from engine import auth, catalog, customers
from engine.models import Experience, utcnow
from engine.schemas import (
    AttributeSpecIn,
    AttributeSpecsIn,
    CustomerIn,
    ExperienceCreate,
    OutcomeLevel,
    OutcomeScaleIn,
    SegmentationIn,
)
from engine.simulate import World, make_world
from engine.triples import parse_event, store_triples

DEMO_KEYS = {
    "admin": "nb_demoadmin_admin-demo-key",
    "marketer": "nb_demomkt_marketer-demo-key",
    "agent": "nb_demoagent_agent-demo-key",
    "service": "nb_demosvc_service-demo-key",
}
DESCRIPTIONS = {
    "no_offer": "Do nothing: the control. Wins where customers stay anyway.",
    "retention_email": "A personal email reminding the customer of what they get.",
    "loyalty_points": "2,000 loyalty points, paid only if the customer stays.",
    "discount_10": "10% off the next three months.",
    "discount_20": "20% off the next three months.",
    "free_month": "One month free.",
    "callback_senior": "A call from a senior agent within a day.",
    "upgrade_offer": "The next plan up at the current price for three months.",
}
Progress = Callable[[int, str], Any]


def seed_demo(
    *,
    engine: Engine,
    n_customers: int = 5000,
    n_triples: int = 50_000,
    seed: int = 1,
    progress: Progress | None = None,
    decisions: int | None = None,
    agent_decisions: int | None = None,
) -> bool:
    """Load the demo business unless experiences exist already. Returns True when it seeded.

    ``decisions`` and ``agent_decisions`` (default DEMO_DECISIONS and AGENT_DECISIONS) size the
    logged decisions; tests ask for fewer.
    """
    with Session(engine, expire_on_commit=False) as session:
        if session.exec(select(Experience)).first() is not None:
            _ensure_keys(session)
            session.commit()
            return False
    world = make_world(seed)
    rng = np.random.default_rng(seed)
    people, triples = world.historical_log(n_customers, n_triples, rng, end=end_of_yesterday())
    actor = "system:demo"
    with Session(engine, expire_on_commit=False) as session:
        catalog.put_attribute_specs(
            session=session,
            specs_in=AttributeSpecsIn(
                attributes=[
                    AttributeSpecIn(
                        name=s.name, type=s.type, levels=list(s.levels), bins=list(s.bins)
                    )
                    for s in world.attributes
                ]
            ),
            actor=actor,
        )
        catalog.put_outcome_scale(
            session=session,
            scale_in=OutcomeScaleIn(
                levels=[
                    OutcomeLevel(label=label, value=float(value))
                    for label, value in zip(world.levels, world.level_values, strict=True)
                ],
                attribution_days=30,
                default_result=world.levels[0],
            ),
            actor=actor,
        )
        for experience in world.experiences:
            catalog.create_experience(
                session=session,
                experience_in=ExperienceCreate(
                    key=experience.key,
                    name=experience.name,
                    description=DESCRIPTIONS.get(experience.key, ""),
                    cost=experience.cost,
                    cost_on=list(experience.cost_on) or None,
                    is_control=experience.is_control,
                    channels=["phone", "email", "web"],
                ),
                actor=actor,
            )
        catalog.put_segmentation(
            session=session,
            segmentation_in=SegmentationIn(attributes=["plan", "tenure_months", "complaints_90d"]),
            actor=actor,
        )
        _ensure_keys(session)
        session.commit()
    _load_customers(engine, people, progress)
    load_triples(engine, triples, progress)
    if triples:
        _compile_rules(engine)
        _start_experiment(engine)
        n = DEMO_DECISIONS if decisions is None else decisions
        _serve_decisions(engine, world, people, np.random.default_rng(seed), n)
        n = AGENT_DECISIONS if agent_decisions is None else agent_decisions
        _agent_activity(engine, world, people, np.random.default_rng(seed + 1), n)
    return True


DEMO_DECISIONS = 1000
"""Decisions the demo's engine makes (with its active rules) on its customers before serving,
their results drawn from the simulator's truth: logged decisions with propensities, so that
off-policy evaluation has something to work on."""


def _serve_decisions(
    engine: Engine,
    world: World,
    people: list[dict[str, Any]],
    rng: np.random.Generator,
    n: int,
) -> None:
    from engine.config import Settings
    from engine.decisions import decide, read_customer, record_outcome
    from engine.runtime import Runtime
    from engine.schemas import DecisionIn, OutcomeIn

    # All decisions first, on the statistics of the history (one fit), then their results.
    runtime = Runtime(
        Settings(seed=int(rng.integers(2**31)), stats_refresh_seconds=3600), engine=engine
    )
    keys = [e.key for e in world.experiences]
    made = []
    for i in rng.integers(0, len(people), n).tolist():
        person = people[i]
        decision = decide(  # committed before it returns (engine.decision_log)
            runtime=runtime, decision_in=DecisionIn(customer_id=person["customer_id"])
        )
        _, _, exposures = read_customer(runtime, person["customer_id"])
        made.append((person, decision, exposures.get(decision.experience, 0)))
    probs = world.true_probs(
        [person["attributes"] for person, _, _ in made],
        np.array([keys.index(decision.experience) for _, decision, _ in made]),
        np.array([seen for _, _, seen in made]),
        np.full(len(made), world.horizon_days),
    )
    levels = world.draw_results(probs, rng)
    with runtime.session() as session:
        for (_, decision, _), level in zip(made, levels.tolist(), strict=True):
            record_outcome(
                session=session,
                runtime=runtime,
                outcome_in=OutcomeIn(decision_id=decision.decision_id, result=world.levels[level]),
            )
        session.commit()
    runtime.close()  # the rule runtime, if a decision started it (the engine is the caller's)


AGENT_DECISIONS = 300
"""Decisions the demo's agents asked for on the phone, some of them overridden with a note."""

AGENT_HABITS: dict[str, tuple[float, str | None, str, str]] = {
    "a-1": (0.0, None, "", ""),
    "a-2": (0.1, "callback_senior", "customer_request", "Asked to speak to someone senior"),
    "a-3": (
        0.35,
        "discount_20",
        "retention_risk",
        "Sounded ready to leave; went for the bigger discount",
    ),
    "a-4": (0.2, "no_offer", "already_loyal", "Long-time customer, happy with the service"),
    "a-5": (0.15, None, "agent_judgement", "Knows this customer; chose differently"),
}
"""Per demo agent: how often they override, to what (None: any other experience), the reason
code and the note they leave."""


def _agent_activity(
    engine: Engine,
    world: World,
    people: list[dict[str, Any]],
    rng: np.random.Generator,
    n: int,
) -> None:
    """Agents' decisions with their overrides and results (drawn from the simulator's truth for
    what was delivered), so that the marketer's override analytics have something to show."""
    from engine.config import Settings
    from engine.decisions import decide, read_customer, record_outcome
    from engine.overrides import override_decision
    from engine.runtime import Runtime
    from engine.schemas import DecisionIn, OutcomeIn, OverrideIn

    runtime = Runtime(
        Settings(seed=int(rng.integers(2**31)), stats_refresh_seconds=3600), engine=engine
    )
    keys = [e.key for e in world.experiences]
    agents = sorted(AGENT_HABITS)
    made = []
    for i in rng.integers(0, len(people), n).tolist():
        person = people[i]
        agent = agents[int(rng.integers(len(agents)))]
        rate, target, reason, note = AGENT_HABITS[agent]
        decision = decide(  # committed before it returns (engine.decision_log)
            runtime=runtime,
            decision_in=DecisionIn(
                customer_id=person["customer_id"], agent_id=agent, channel="phone"
            ),
        )
        delivered = decision.experience
        if rng.random() < rate:
            others = [k for k in keys if k != decision.experience]
            delivered = target if target in others else others[int(rng.integers(len(others)))]
            with runtime.session() as session:
                override_decision(
                    session=session,
                    catalog=runtime.catalog(session),
                    decision_id=decision.decision_id,
                    override_in=OverrideIn(
                        experience=delivered, note=note, reason_code=reason, agent_id=agent
                    ),
                    actor=f"agent:{agent}",
                )
                session.commit()
        _, _, exposures = read_customer(runtime, person["customer_id"])
        made.append((person, decision, delivered, exposures.get(delivered, 0)))
    probs = world.true_probs(
        [person["attributes"] for person, _, _, _ in made],
        np.array([keys.index(delivered) for _, _, delivered, _ in made]),
        np.array([seen for _, _, _, seen in made]),
        np.full(len(made), world.horizon_days),
    )
    levels = world.draw_results(probs, rng)
    with runtime.session() as session:
        for (_, decision, _, _), level in zip(made, levels.tolist(), strict=True):
            record_outcome(
                session=session,
                runtime=runtime,
                outcome_in=OutcomeIn(decision_id=decision.decision_id, result=world.levels[level]),
            )
        session.commit()
    runtime.close()


DEMO_EXPERIMENT = {
    "key": "winter-save",
    "name": "Winter save offers for new basic customers",
    "hypothesis": "A free month keeps new basic customers better than a 10% discount",
    "eligibility": 'plan == "basic" and tenure_months < 12',
    "arms": [
        {"experience": "no_offer"},
        {"experience": "discount_10"},
        {"experience": "free_month"},
    ],
    "allocation": "adaptive",
    "holdout_share": 0.1,
    "burn_in": 30,
    "stopping": {"p_best": 0.95, "expected_loss": 1.0, "on_stop": "pause"},
    "guardrail": {"level": "churned", "margin": 0.05, "probability": 0.99},
}
"""A running experiment: the demo's decisions for new basic customers come from it."""


def _start_experiment(engine: Engine) -> None:
    from experiments.schemas import ExperimentIn
    from experiments.service import change_status, create_experiment

    with Session(engine) as session:
        create_experiment(
            session=session,
            experiment_in=ExperimentIn.model_validate(DEMO_EXPERIMENT),
            actor="system:demo",
        )
        change_status(
            session=session, key="winter-save", action="start", change=None, actor="system:demo"
        )
        session.commit()


def _compile_rules(engine: Engine) -> None:
    """Rule-set version 1 from the demo's history, active (rules import engine: import here)."""
    from engine.config import Settings
    from engine.runtime import Runtime
    from rules.compiler import Settings as CompileSettings
    from rules.versions import activate, compile_version

    runtime = Runtime(Settings(), engine=engine)
    with runtime.session() as session:
        row = compile_version(
            session=session, runtime=runtime, settings=CompileSettings(), actor="system:demo"
        )
        assert row.version is not None
        activate(session=session, version=row.version, actor="system:demo")
        session.commit()


def end_of_yesterday() -> dt.datetime:
    return utcnow().replace(hour=0, minute=0, second=0, microsecond=0)


def _ensure_keys(session: Session) -> None:
    for role, key in DEMO_KEYS.items():
        auth.ensure_key(session=session, key=key, role=role, name=f"demo-{role}")  # type: ignore[arg-type]


def _load_customers(
    engine: Engine, people: list[dict[str, Any]], progress: Progress | None
) -> None:
    bar = progress(len(people), "customers") if progress else None
    with Session(engine, expire_on_commit=False) as session:
        snapshot = catalog.load_catalog(session)
        for i, person in enumerate(people):
            customers.upsert_customer(
                session=session,
                catalog=snapshot,
                customer_id=person["customer_id"],
                customer_in=CustomerIn(name=_name(i), attributes=person["attributes"]),
            )
            if bar is not None and i % 500 == 499:
                bar.update(500)
        session.commit()
    if bar is not None:
        bar.close()


def load_triples(engine: Engine, triples: list[dict[str, Any]], progress: Progress | None) -> None:
    bar = progress(len(triples), "triples") if progress else None
    now = utcnow()
    for start in range(0, len(triples), 5000):
        part = triples[start : start + 5000]
        with Session(engine, expire_on_commit=False) as session:
            snapshot = catalog.load_catalog(session)
            parsed = [
                parse_event(
                    snapshot,
                    {
                        "customer_id": t["customer_id"],
                        "experience": t["experience"],
                        "result": t["result"],
                        "occurred_at": t["occurred_at"],
                    },
                    now=now,
                )
                for t in part
            ]
            store_triples(session, catalog=snapshot, triples=parsed)
            session.commit()
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()


_FIRST = (
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elif",
    "Femi",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Luca",
    "Maya",
    "Noor",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Uma",
    "Vik",
    "Wen",
    "Xavi",
    "Yara",
    "Zane",
)
_LAST = (
    "Adams",
    "Baker",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ito",
    "Jensen",
    "Khan",
    "Larsen",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Quist",
    "Rossi",
    "Silva",
    "Tanaka",
    "Usman",
    "Varga",
    "Weber",
    "Yilmaz",
    "Zhou",
)


def _name(i: int) -> str:
    return f"{_FIRST[i % len(_FIRST)]} {_LAST[(i * 7 + i // len(_FIRST)) % len(_LAST)]}"
