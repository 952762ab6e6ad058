"""Guardrails over HTTP: each kind suppresses what it should, the decision says which guardrail
suppressed what, bad definitions are rejected naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from engine.models import AuditEvent
from engine.runtime import Runtime
from tests.test_api_decisions import decide

Headers = dict[str, dict[str, str]]
OFFERS = {"discount_10", "callback_senior"}


def guardrail(client: TestClient, keys: Headers, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/guardrails", json=body, headers=keys["marketer"])
    assert response.status_code == 201, response.text
    return response.json()


def suppressed(body: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for item in body["suppressed"]:
        out.setdefault(item["experience"], set()).add(item["name"])
    return out


def decide_until_offer(client: TestClient, keys: Headers, **body: Any) -> dict[str, Any]:
    """Decisions for c-42 until one chooses an offer (Thompson sampling explores)."""
    for _ in range(100):
        made = decide(client, keys, **body).json()
        if made["experience"] in OFFERS:
            return made
    raise AssertionError("no offer in 100 decisions")


def test_forbid_with_a_condition(client: TestClient, keys: Headers, business: Any) -> None:
    guardrail(
        client,
        keys,
        kind="forbid",
        name="no discounts for fraud",
        experience="discount_10",
        condition="fraud_flag",
    )
    fraud = {"plan": "plus", "tenure_months": 7, "monthly_spend": 50, "fraud_flag": True}
    for i in range(30):
        body = client.post(
            "/v1/decisions",
            json={"customer_id": f"f-{i}", "attributes": fraud},
            headers=keys["agent"],
        ).json()
        assert body["experience"] != "discount_10"
        assert suppressed(body) == {"discount_10": {"no discounts for fraud"}}
    honest = decide(client, keys).json()
    assert honest["suppressed"] == []


def test_contact_limit_leaves_the_control(client: TestClient, keys: Headers, business: Any) -> None:
    guardrail(client, keys, kind="contact_limit", name="one offer a month", limit=1, period_days=30)
    decide_until_offer(client, keys)
    for _ in range(10):
        body = decide(client, keys).json()
        assert body["experience"] == "no_offer"
        assert set(suppressed(body)) == OFFERS
    other = decide(client, keys, customer_id="c-43").json()
    assert other["suppressed"] == []


def test_contact_limit_per_channel(client: TestClient, keys: Headers, business: Any) -> None:
    guardrail(
        client, keys, kind="contact_limit", name="one call", limit=1, period_days=7, channel="phone"
    )
    decide_until_offer(client, keys, channel="phone")
    assert decide(client, keys, channel="phone").json()["experience"] == "no_offer"
    assert decide(client, keys, channel="email").json()["suppressed"] == []


def test_cooldown_after_a_decline(client: TestClient, keys: Headers, business: Any) -> None:
    guardrail(client, keys, kind="cooldown", name="two weeks off", period_days=14)
    offered = decide_until_offer(client, keys)
    assert decide(client, keys).json()["suppressed"] == []
    client.post(
        f"/v1/decisions/{offered['decision_id']}/reaction",
        json={"reaction": "declined"},
        headers=keys["agent"],
    )
    body = decide(client, keys).json()
    assert body["experience"] == "no_offer"
    assert set(suppressed(body)) == OFFERS


def test_max_exposures(client: TestClient, keys: Headers, business: Any) -> None:
    guardrail(
        client, keys, kind="max_exposures", name="twice at most", experience="discount_10", limit=2
    )
    events = [
        {
            "customer_id": "c-42",
            "experience": "discount_10",
            "result": "retained",
            "occurred_at": f"2026-10-0{day}T10:00:00Z",
        }
        for day in (1, 2)
    ]
    assert decide(client, keys).json()["suppressed"] == []
    response = client.post("/v1/events:batch", json={"events": events}, headers=keys["service"])
    assert response.status_code == 201
    body = decide(client, keys).json()
    assert suppressed(body) == {"discount_10": {"twice at most"}}


def test_budget(client: TestClient, keys: Headers, business: Any) -> None:
    guardrail(
        client,
        keys,
        kind="budget",
        name="ten callbacks",
        experience="callback_senior",
        limit=1,
        period_days=30,
    )
    for i in range(200):
        body = decide(client, keys, customer_id=f"b-{i}").json()
        if body["experience"] == "callback_senior":
            break
    else:
        raise AssertionError("callback_senior never chosen")
    for i in range(20):
        body = decide(client, keys, customer_id=f"after-{i}").json()
        assert body["experience"] != "callback_senior"
        assert suppressed(body) == {"callback_senior": {"ten callbacks"}}


def test_all_suppressed_is_a_conflict(client: TestClient, keys: Headers, business: Any) -> None:
    for key in ("no_offer", "discount_10", "callback_senior"):
        guardrail(client, keys, kind="forbid", name=f"never {key}", experience=key)
    response = decide(client, keys)
    assert response.status_code == 409
    assert "suppressed by a guardrail" in response.json()["error"]["message"]


def test_deactivate_and_audit(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    made = guardrail(client, keys, kind="forbid", name="no callbacks", experience="callback_senior")
    assert "callback_senior" in suppressed(decide(client, keys).json())
    response = client.post(f"/v1/guardrails/{made['id']}:deactivate", headers=keys["marketer"])
    assert response.status_code == 200 and response.json()["active"] is False
    assert decide(client, keys).json()["suppressed"] == []
    listed = client.get("/v1/guardrails?active=false", headers=keys["agent"]).json()["data"]
    assert [g["id"] for g in listed] == [made["id"]]
    with runtime.session() as session:
        actions = session.exec(
            select(AuditEvent.action).where(AuditEvent.entity == "guardrail")
        ).all()
    assert actions == ["create", "deactivate"]
    missing = client.get("/v1/guardrails/999", headers=keys["agent"])
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x"}, "kind"),
        ({"kind": "nudge", "name": "x"}, "kind"),
        ({"kind": "forbid", "name": "x"}, "experience"),
        ({"kind": "forbid", "name": "x", "experience": "nope"}, "experience"),
        ({"kind": "forbid", "name": "x", "experience": "discount_10", "limit": 3}, "limit"),
        (
            {"kind": "forbid", "name": "x", "experience": "discount_10", "condition": "plan =="},
            "condition",
        ),
        (
            {"kind": "forbid", "name": "x", "experience": "discount_10", "condition": "age > 3"},
            "condition",
        ),
        ({"kind": "contact_limit", "name": "x", "limit": 1}, "period_days"),
        ({"kind": "contact_limit", "name": "x", "limit": 0, "period_days": 7}, "limit"),
        ({"kind": "cooldown", "name": "x", "period_days": -1}, "period_days"),
        ({"kind": "budget", "name": "x", "experience": "discount_10", "limit": 5}, "period_days"),
        ({"kind": "forbid", "name": "", "experience": "discount_10"}, "name"),
        ({"kind": "forbid", "name": "x", "experience": "discount_10", "colour": "red"}, "colour"),
    ],
)
def test_bad_guardrails_are_rejected(
    body: dict[str, Any], field: str, client: TestClient, keys: Headers, business: Any
) -> None:
    response = client.post("/v1/guardrails", json=body, headers=keys["marketer"])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert client.get("/v1/guardrails", headers=keys["marketer"]).json()["data"] == []
