"""Decisions and outcomes over HTTP: the response shape, propensities, idempotent outcomes."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from engine.models import Customer, Decision, Outcome
from engine.runtime import Runtime
from tests.test_api_triples import assert_stats_equal_replay, count

Headers = dict[str, dict[str, str]]
CUSTOMER = {"plan": "plus", "tenure_months": 7, "monthly_spend": 50}


def decide(client: TestClient, keys: Headers, **body: Any) -> Any:
    payload = {"customer_id": "c-42", "attributes": CUSTOMER, **body}
    return client.post("/v1/decisions", json=payload, headers=keys["agent"])


def test_decision_shape(client: TestClient, keys: Headers, business: Any, runtime: Runtime) -> None:
    response = decide(client, keys, channel="phone", agent_id="a-7", top_k=2)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) >= {
        "decision_id",
        "customer_id",
        "experience",
        "propensity",
        "source",
        "rule",
        "experiment",
        "ranked",
    }
    assert body["customer_id"] == "c-42"
    assert body["source"] in ("thompson", "explore")
    assert len(body["ranked"]) == 2
    for ranked in body["ranked"]:
        low, high = ranked["ci90"]
        assert low <= high
        assert 0 <= ranked["p_best"] <= 1
    floor = runtime.settings.min_exploration / 3
    assert floor <= body["propensity"] <= 1
    with runtime.session() as session:
        stored = session.get(Decision, body["decision_id"])
    assert stored is not None and stored.propensity == pytest.approx(body["propensity"], abs=1e-6)
    assert stored.agent_id == "a-7" and stored.channel == "phone"


def test_decision_learns_the_better_experience(
    client: TestClient, keys: Headers, business: Any
) -> None:
    # discount_10 keeps customers, the others lose them: the posterior must rank it first.
    events = []
    for i in range(300):
        experience = ["no_offer", "discount_10", "callback_senior"][i % 3]
        result = "retained" if experience == "discount_10" else "churned"
        events.append(
            {
                "customer_id": f"h-{i}",
                "experience": experience,
                "result": result,
                "occurred_at": "2026-10-01T10:00:00Z",
                "attributes": CUSTOMER,
            }
        )
    client.post("/v1/events:batch", json={"events": events}, headers=keys["service"])
    body = decide(client, keys, exploit=True).json()
    assert (body["source"], body["propensity"]) == ("exploit", 1.0)
    assert body["experience"] == "discount_10"
    assert body["ranked"][0]["experience"] == "discount_10"
    assert body["ranked"][0]["p_best"] > 0.99
    # retained is worth 100 and the discount costs 0.3 x 50 = 15 when retained: at most 85, a
    # little less because the prior keeps some mass on churned (the evidence has decayed a bit).
    assert 78 < body["ranked"][0]["expected_net_value"] < 85


def test_per_decision_values_and_costs(client: TestClient, keys: Headers, business: Any) -> None:
    body = decide(
        client, keys, exploit=True, values={"retained": 1000.0}, costs={"callback_senior": 500.0}
    ).json()
    callback = next(r for r in body["ranked"] if r["experience"] == "callback_senior")
    assert callback["expected_net_value"] < 0


def test_unknown_customer_without_attributes_is_404(
    client: TestClient, keys: Headers, business: Any
) -> None:
    response = client.post("/v1/decisions", json={"customer_id": "ghost"}, headers=keys["agent"])
    assert response.status_code == 404
    assert response.json()["error"]["field"] == "customer_id"


BAD_DECISIONS = [
    ({"attributes": {"plan": "gold"}}, 422, "attributes.plan", "'gold' is not a level of plan"),
    ({"top_k": 0}, 422, "top_k", "greater than or equal to 1"),
    ({"values": {"won": 1.0}}, 422, "values.won", "unknown result 'won'"),
    ({"costs": {"yacht": 1.0}}, 422, "costs.yacht", "unknown experience 'yacht'"),
    ({"channel": "pigeon"}, 409, "channel", "no active experience is eligible"),
]


@pytest.mark.parametrize(("change", "status", "field", "message"), BAD_DECISIONS)
def test_bad_decisions(
    client: TestClient,
    keys: Headers,
    business: Any,
    runtime: Runtime,
    change: Any,
    status: int,
    field: str,
    message: str,
) -> None:
    if change.get("channel"):
        client.patch(
            "/v1/experiences/no_offer", json={"channels": ["phone"]}, headers=keys["marketer"]
        )
        for key in ("discount_10", "callback_senior"):
            client.post(f"/v1/experiences/{key}:deactivate", headers=keys["marketer"])
    response = decide(client, keys, **change)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert message in response.json()["error"]["message"]
    assert count(runtime, Decision) == 0


def test_eligibility_rule_filters_candidates(
    client: TestClient, keys: Headers, business: Any
) -> None:
    client.patch(
        "/v1/experiences/discount_10",
        json={"eligibility": 'plan == "premium"'},
        headers=keys["marketer"],
    )
    body = decide(client, keys, top_k=10).json()
    assert "discount_10" not in [r["experience"] for r in body["ranked"]]


def test_outcome_is_idempotent(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    decision = decide(client, keys).json()
    body = {
        "decision_id": decision["decision_id"],
        "result": "retained",
        "value": 120.0,
        "idempotency_key": "o-1",
    }
    first = client.post("/v1/outcomes", json=body, headers=keys["service"])
    assert first.status_code == 201, first.text
    again = client.post("/v1/outcomes", json=body, headers=keys["service"])
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    conflict = client.post(
        "/v1/outcomes", json={**body, "result": "churned"}, headers=keys["service"]
    )
    assert conflict.status_code == 409
    other_key = client.post(
        "/v1/outcomes", json={**body, "idempotency_key": "o-2"}, headers=keys["service"]
    )
    assert other_key.status_code == 409
    assert count(runtime, Outcome) == 1
    with runtime.session() as session:
        outcome = session.exec(select(Outcome)).one()
    assert outcome.experience_key == decision["experience"]
    assert outcome.attributes["plan"] == "plus"
    assert_stats_equal_replay(runtime)


BAD_OUTCOMES = [
    ({"decision_id": "nope"}, 404, "decision_id", "no decision 'nope'"),
    ({"result": "won"}, 422, "result", "unknown result 'won'"),
    ({"value": "much"}, 422, "value", "Input should be a valid number"),
    ({"occurred_at": "2000-01-01T00:00:00Z"}, 422, "occurred_at", "before the decision"),
    ({"idempotency_key": ""}, 422, "idempotency_key", "at least 1 character"),
]


@pytest.mark.parametrize(("change", "status", "field", "message"), BAD_OUTCOMES)
def test_bad_outcomes(
    client: TestClient,
    keys: Headers,
    business: Any,
    runtime: Runtime,
    change: Any,
    status: int,
    field: str,
    message: str,
) -> None:
    decision = decide(client, keys).json()
    body = {"decision_id": decision["decision_id"], "result": "retained", **change}
    response = client.post("/v1/outcomes", json=body, headers=keys["agent"])
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert message in response.json()["error"]["message"]
    assert count(runtime, Outcome) == 0


def test_decision_without_outcome_scale_is_409(client: TestClient, keys: Headers) -> None:
    response = client.post(
        "/v1/decisions", json={"customer_id": "c-1", "attributes": {}}, headers=keys["agent"]
    )
    assert response.status_code == 409
    assert "outcome scale" in response.json()["error"]["message"]


def test_decisions_follow_the_segment_and_explain_why(
    client: TestClient, keys: Headers, business: Any
) -> None:
    client.put("/v1/segmentation", json={"attributes": ["plan"]}, headers=keys["marketer"])
    best = {"basic": "discount_10", "premium": "no_offer"}
    events = []
    for i in range(600):
        plan = ["basic", "premium"][i % 2]
        experience = ["no_offer", "discount_10", "callback_senior"][(i // 2) % 3]
        result = "retained" if experience == best[plan] else "churned"
        events.append(
            {
                "customer_id": f"h-{i}",
                "experience": experience,
                "result": result,
                "occurred_at": "2026-10-01T10:00:00Z",
                "attributes": {"plan": plan},
            }
        )
    assert (
        client.post(
            "/v1/events:batch", json={"events": events}, headers=keys["service"]
        ).status_code
        == 201
    )
    for plan, expected in best.items():
        body = client.post(
            "/v1/decisions",
            json={"customer_id": f"new-{plan}", "exploit": True, "attributes": {"plan": plan}},
            headers=keys["agent"],
        ).json()
        assert body["experience"] == expected
        why = body["explanation"]
        assert why["segment_path"] == ["", f"plan={plan}"]
        chosen = next(e for e in why["evidence"] if e["experience"] == expected)
        assert chosen["segment"] == f"plan={plan}"
        assert chosen["exposure_bucket"] == 0
        assert chosen["n"] > 50
        assert why["outcome_distribution"]["retained"] > 0.9


def test_decision_creates_and_updates_the_customer(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    created = decide(client, keys, customer_id="c-new", attributes={"plan": "basic"})
    assert created.status_code == 201, created.text
    with runtime.session() as session:
        row = session.get(Customer, "c-new")
        assert row is not None and row.attributes == {"plan": "basic"}
        first_update = row.updated_at
    merged = decide(client, keys, customer_id="c-new", attributes={"tenure_months": 7})
    assert merged.status_code == 201
    with runtime.session() as session:
        row = session.get(Customer, "c-new")
        assert row is not None and row.attributes == {"plan": "basic", "tenure_months": 7.0}
        assert row.updated_at > first_update
        stored = session.get(Decision, merged.json()["decision_id"])
        assert stored is not None and stored.attributes == row.attributes
    by_id = client.post("/v1/decisions", json={"customer_id": "c-new"}, headers=keys["agent"])
    assert by_id.status_code == 201
    assert count(runtime, Decision) == 3


def test_logged_propensity_is_the_probability_of_the_choice(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    # Within one statistics snapshot the same customer meets the same posterior draws, so every
    # decision has the same propensities: the choices must follow them.
    runtime.settings.stats_refresh_seconds = 3600.0
    runtime.settings.min_exploration = 0.3
    n = 600
    choices: dict[str, int] = {}
    propensity: dict[str, float] = {}
    for _ in range(n):
        body = decide(client, keys).json()
        choices[body["experience"]] = choices.get(body["experience"], 0) + 1
        propensity[body["experience"]] = body["propensity"]
    for experience, chosen in choices.items():
        p = propensity[experience]
        assert abs(chosen / n - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-9, (experience, chosen, p)


def test_concurrent_decisions_on_threads_stay_within_the_pool(
    client: TestClient, keys: Headers, business: Any, database_url: str
) -> None:
    """Forty decisions at once on one event loop, each on a thread (a statistics refresh is due
    at every decision, as every decision is on PostgreSQL): no more run on threads than the
    connection pool keeps, so the pool never opens an overflow connection only to close it
    again (on PostgreSQL a server process each; under 32 concurrent requests one worker opened a
    connection every four decisions)."""
    import asyncio

    from sqlalchemy import event

    from engine.config import Settings
    from engine.db import make_engine
    from engine.decisions import decide_async
    from engine.schemas import DecisionIn

    engine = make_engine(database_url)  # the service's pool: a base size and an overflow
    size = engine.pool.size()  # type: ignore[attr-defined]
    opened = []
    event.listen(engine, "connect", lambda *_: opened.append(1))
    runtime = Runtime(Settings(database_url=database_url, stats_refresh_seconds=0), engine=engine)
    assert runtime.stats_due()

    async def decide_all() -> list[Any]:
        bodies = [
            DecisionIn(customer_id=f"c-{i:03d}", attributes={"plan": "basic"}) for i in range(40)
        ]
        return await asyncio.gather(
            *(decide_async(runtime=runtime, decision_in=body) for body in bodies)
        )

    try:
        decided = asyncio.run(decide_all())
    finally:
        runtime.close(release_engine=False)
        engine.dispose()
    assert len({d.decision_id for d in decided}) == 40
    assert 0 < len(opened) <= size, (len(opened), size)
