"""The demo business that `make run` serves: catalog, customers, history, active rules, keys."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlmodel import func, select

from engine.demo import AGENT_DECISIONS, DEMO_DECISIONS, DEMO_KEYS, seed_demo
from engine.models import Customer, Decision, DecisionOverride, Experience, Outcome
from engine.runtime import Runtime
from rules.models import RuleSetVersion


def test_demo_business(runtime: Runtime, client: TestClient) -> None:
    assert seed_demo(engine=runtime.engine, n_customers=300, n_triples=3000) is True
    assert seed_demo(engine=runtime.engine, n_customers=300, n_triples=3000) is False  # once
    with runtime.session() as session:
        count = lambda model: session.exec(select(func.count()).select_from(model)).one()  # noqa: E731
        # the history, then the engine's own decisions with their results
        assert (count(Experience), count(Customer)) == (8, 300)
        made = DEMO_DECISIONS + AGENT_DECISIONS
        assert (count(Outcome), count(Decision)) == (3000 + made, made)
        agents = session.exec(select(Decision.agent_id).where(Decision.agent_id != None)).all()  # noqa: E711
        assert len(agents) == AGENT_DECISIONS
        assert 0 < count(DecisionOverride) < AGENT_DECISIONS / 2
        assert all(d.propensity > 0 for d in session.exec(select(Decision)))
        versions = session.exec(select(RuleSetVersion)).all()
    assert [(v.version, v.active) for v in versions] == [(1, True)]
    assert len(versions[0].rules) <= 25
    for role, key in DEMO_KEYS.items():
        response = client.get("/v1/experiences", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, role
    decision = client.post(
        "/v1/decisions",
        json={"customer_id": "c-00001"},
        headers={"Authorization": f"Bearer {DEMO_KEYS['agent']}"},
    )
    assert decision.status_code == 201
    body = decision.json()
    if body["experiment"] is None:
        assert body["source"] in {"rule", "explore"}
    else:  # c-00001 is a new basic customer: the demo's running experiment takes them
        assert body["source"] == "experiment" and body["experiment"]["key"] == "winter-save"
    report = client.get(
        "/v1/experiments/winter-save/report",
        headers={"Authorization": f"Bearer {DEMO_KEYS['marketer']}"},
    )
    assert report.status_code == 200
    assert sum(arm["results"] for arm in report.json()["arms"]) > 50
