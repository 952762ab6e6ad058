"""Overrides and reactions: the agent's choice kept beside the engine's; the outcome trains what
was delivered."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from engine.models import AuditEvent, DecisionOverride, Outcome
from engine.runtime import Runtime
from tests.test_api_decisions import decide
from tests.test_api_triples import assert_stats_equal_replay, count

Headers = dict[str, dict[str, str]]


def other_than(experience: str) -> str:
    return "callback_senior" if experience != "callback_senior" else "discount_10"


def test_override_then_outcome_trains_the_delivered_experience(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    decision = decide(client, keys).json()
    chosen = other_than(decision["experience"])
    body = {
        "experience": chosen,
        "note": "customer asked for a call",
        "agent_id": "a-7",
        "reason_code": "customer_request",
    }
    url = f"/v1/decisions/{decision['decision_id']}/override"
    response = client.post(url, json=body, headers=keys["agent"])
    assert response.status_code == 201, response.text
    assert response.json()["engine_experience"] == decision["experience"]
    assert response.json()["experience"] == chosen
    again = client.post(url, json=body, headers=keys["agent"])
    assert again.status_code == 200
    assert again.json() == response.json()
    outcome = client.post(
        "/v1/outcomes",
        json={"decision_id": decision["decision_id"], "result": "retained"},
        headers=keys["agent"],
    )
    assert outcome.json()["experience"] == chosen
    with runtime.session() as session:
        stored = session.exec(select(Outcome)).one()
        audit = session.exec(select(AuditEvent).where(AuditEvent.action == "override")).one()
    assert stored.experience_key == chosen
    assert audit.before == {"experience": decision["experience"]}
    assert audit.after is not None and audit.after["note"] == "customer asked for a call"
    assert_stats_equal_replay(runtime)


BAD_OVERRIDES = [
    ({"experience": "yacht", "note": "x"}, 422, "experience", "unknown experience 'yacht'"),
    ({"experience": "no_offer", "note": "   "}, 422, "note", "a note is required"),
    ({"experience": "no_offer"}, 422, "note", "Field required"),
    (
        {"experience": "no_offer", "note": "x", "reason_code": "not a code"},
        422,
        "reason_code",
        "String should match pattern",
    ),
]


@pytest.mark.parametrize(("body", "status", "field", "message"), BAD_OVERRIDES)
def test_bad_overrides(
    client: TestClient,
    keys: Headers,
    business: Any,
    runtime: Runtime,
    body: Any,
    status: int,
    field: str,
    message: str,
) -> None:
    decision = decide(client, keys).json()
    response = client.post(
        f"/v1/decisions/{decision['decision_id']}/override", json=body, headers=keys["agent"]
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert message in response.json()["error"]["message"]
    assert count(runtime, DecisionOverride) == 0


def test_override_conflicts(client: TestClient, keys: Headers, business: Any) -> None:
    assert (
        client.post(
            "/v1/decisions/nope/override",
            json={"experience": "no_offer", "note": "x"},
            headers=keys["agent"],
        ).status_code
        == 404
    )
    decision = decide(client, keys).json()
    url = f"/v1/decisions/{decision['decision_id']}/override"
    client.post(url, json={"experience": "no_offer", "note": "first"}, headers=keys["agent"])
    second = client.post(
        url, json={"experience": "discount_10", "note": "second"}, headers=keys["agent"]
    )
    assert second.status_code == 409
    late = decide(client, keys).json()
    client.post(
        "/v1/outcomes",
        json={"decision_id": late["decision_id"], "result": "churned"},
        headers=keys["agent"],
    )
    too_late = client.post(
        f"/v1/decisions/{late['decision_id']}/override",
        json={"experience": "no_offer", "note": "x"},
        headers=keys["agent"],
    )
    assert too_late.status_code == 409
    assert "has its outcome already" in too_late.json()["error"]["message"]
    client.post("/v1/experiences/callback_senior:deactivate", headers=keys["marketer"])
    inactive = decide(client, keys).json()
    response = client.post(
        f"/v1/decisions/{inactive['decision_id']}/override",
        json={"experience": "callback_senior", "note": "x"},
        headers=keys["agent"],
    )
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "experience 'callback_senior' is not active"


def test_reaction(client: TestClient, keys: Headers, business: Any) -> None:
    decision = decide(client, keys).json()
    url = f"/v1/decisions/{decision['decision_id']}/reaction"
    first = client.post(url, json={"reaction": "declined"}, headers=keys["agent"])
    assert first.status_code == 201
    assert first.json()["reaction"] == "declined"
    assert client.post(url, json={"reaction": "declined"}, headers=keys["agent"]).status_code == 200
    assert client.post(url, json={"reaction": "accepted"}, headers=keys["agent"]).status_code == 409
    bad = client.post(url, json={"reaction": "maybe"}, headers=keys["agent"])
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "reaction"
