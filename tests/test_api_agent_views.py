"""GET /v1/insights/overrides, GET /v1/insights/customer-value and GET /v1/customers/{id}/history:
the figures the consoles show, over HTTP, on known data."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.models import utcnow
from tests.test_api_decisions import decide
from tests.test_api_overrides import other_than

Headers = dict[str, dict[str, str]]


def test_override_insights(client: TestClient, keys: Headers, business: Any) -> None:
    made = [decide(client, keys, agent_id="a-1", top_k=50).json() for _ in range(4)]
    made.append(decide(client, keys, top_k=50).json())  # no agent: not in the report
    overridden = made[:2]
    for decision, reason in zip(overridden, ["customer_request", "retention_risk"], strict=True):
        response = client.post(
            f"/v1/decisions/{decision['decision_id']}/override",
            json={"experience": "callback_senior" if decision["experience"] != "callback_senior" else "no_offer",
                  "note": "asked for it", "reason_code": reason},
            headers=keys["agent"],
        )  # fmt: skip
        assert response.status_code == 201, response.text
    for decision in made:
        response = client.post(
            "/v1/outcomes",
            json={"decision_id": decision["decision_id"], "result": "retained"},
            headers=keys["agent"],
        )
        assert response.status_code == 201
    response = client.get("/v1/insights/overrides", headers=keys["marketer"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["decisions"], body["overrides"]) == (4, 2)
    assert body["by_agent"][0]["agent"] == "a-1"
    assert body["by_agent"][0]["rate"] == 0.5
    assert [r["reason_code"] for r in body["by_reason"]] == ["customer_request", "retention_risk"]
    # retained is worth 100: a callback costs 12 on every result, no_offer nothing
    money = {"callback_senior": 100 - 12.0, "no_offer": 100.0, "discount_10": 100 - 0.3 * 50}

    def delivered(d: dict[str, Any]) -> str:
        if d in overridden:
            return "callback_senior" if d["experience"] != "callback_senior" else "no_offer"
        return str(d["experience"])

    def engine_estimate(d: dict[str, Any]) -> float:
        return next(r["expected_net_value"] for r in d["ranked"] if r["experience"] == d["experience"])  # fmt: skip

    value = body["value"]
    realised = [money[delivered(d)] for d in overridden]
    assert value["overridden"]["realised"]["mean"] == pytest.approx(sum(realised) / 2, abs=1e-3)
    gaps = [money[delivered(d)] - engine_estimate(d) for d in overridden]
    assert value["overridden"]["gap"]["mean"] == pytest.approx(sum(gaps) / 2, abs=1e-3)
    followed = made[2:4]
    assert value["followed"]["realised"]["mean"] == pytest.approx(
        sum(money[d["experience"]] for d in followed) / 2, abs=1e-3
    )
    assert "Observational" in body["note"]
    # A new decision and its override, no outcome yet: the statistics are unchanged, the report
    # is not (the rate counts it; the value figures wait for its result).
    late = decide(client, keys, agent_id="a-2", top_k=50).json()
    client.post(
        f"/v1/decisions/{late['decision_id']}/override",
        json={
            "experience": other_than(late["experience"]),
            "note": "later",
            "reason_code": "policy",
        },
        headers=keys["agent"],
    )
    again = client.get("/v1/insights/overrides", headers=keys["marketer"]).json()
    assert (again["decisions"], again["overrides"]) == (5, 3)
    assert again["value"]["overridden"]["gap"]["n"] == 2
    for role in ("agent", "service"):
        assert client.get("/v1/insights/overrides", headers=keys[role]).status_code == 403
    bad = client.get("/v1/insights/overrides?days=0", headers=keys["marketer"])
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "days"


def test_customer_value(client: TestClient, keys: Headers, business: Any) -> None:
    client.put("/v1/segmentation", json={"attributes": ["plan"]}, headers=keys["marketer"])
    people = {"a": ("basic", 50), "b": ("basic", 40), "c": ("premium", 40), "d": ("plus", 30)}
    for cid, (plan, spend) in people.items():
        response = client.put(
            f"/v1/customers/{cid}",
            json={"attributes": {"plan": plan, "monthly_spend": spend}},
            headers=keys["service"],
        )
        assert response.status_code == 201
    when = (utcnow() - dt.timedelta(days=2)).isoformat()
    events = [
        ("a", "no_offer", "retained"),  # 100
        ("a", "callback_senior", "upgraded"),  # 160 - 12
        ("b", "discount_10", "churned"),  # 0: the discount costs nothing when they leave
        ("c", "discount_10", "retained"),  # 100 - 0.3 x 40
    ]
    batch = [
        {"customer_id": c, "experience": e, "result": r, "occurred_at": when} for c, e, r in events
    ]
    response = client.post("/v1/events:batch", json={"events": batch}, headers=keys["service"])
    assert response.status_code == 201, response.text
    response = client.get("/v1/insights/customer-value?top=0.25", headers=keys["marketer"])
    assert response.status_code == 200, response.text
    body = response.json()
    total = 100 + 148 + 88
    assert body["total"] == pytest.approx(total)
    assert (body["customers"], body["customers_with_results"]) == (4, 3)
    assert body["top_share"] == pytest.approx(248 / total, abs=1e-4)  # the top 1 of 4
    segments = {s["segment"]: s for s in body["by_segment"]}
    assert segments["plan=basic"]["total"] == pytest.approx(248)
    assert segments["plan=basic"]["customers"] == 2
    assert segments["plan=premium"]["share"] == pytest.approx(88 / total, abs=1e-4)
    assert segments["plan=plus"]["total"] == 0
    assert body["by_segment"][0]["segment"] == "plan=basic"  # most value first
    bad = client.get("/v1/insights/customer-value?depth=3", headers=keys["marketer"])
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "depth"
    assert client.get("/v1/insights/customer-value", headers=keys["agent"]).status_code == 403


def test_customer_history(client: TestClient, keys: Headers, business: Any) -> None:
    first = decide(client, keys, agent_id="a-7", top_k=50).json()
    second = decide(client, keys, agent_id="a-7", top_k=50).json()
    chosen = other_than(second["experience"])
    url = f"/v1/decisions/{second['decision_id']}"
    client.post(
        f"{url}/override",
        json={"experience": chosen, "note": "wants a call", "reason_code": "customer_request"},
        headers=keys["agent"],
    )
    client.post(f"{url}/reaction", json={"reaction": "accepted"}, headers=keys["agent"])
    client.post(
        "/v1/outcomes",
        json={"decision_id": second["decision_id"], "result": "upgraded"},
        headers=keys["agent"],
    )
    response = client.get("/v1/customers/c-42/history", headers=keys["agent"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["decision_id"] for d in body["decisions"]] == [
        second["decision_id"],
        first["decision_id"],
    ]
    latest, older = body["decisions"]
    assert latest["override"]["note"] == "wants a call"
    assert latest["override"]["agent_id"] == "a-7"
    assert latest["delivered"] == chosen
    assert latest["reaction"]["reaction"] == "accepted"
    assert latest["outcome"]["result"] == "upgraded"
    assert latest["outcome"]["experience"] == chosen
    assert latest["expected_net_value"] == next(
        r["expected_net_value"] for r in second["ranked"] if r["experience"] == second["experience"]
    )
    assert (older["override"], older["outcome"], older["delivered"]) == (
        None,
        None,
        first["experience"],
    )
    assert body["results_by_experience"] == {chosen: 1}
    assert body["last_contact"] is not None
    missing = client.get("/v1/customers/nobody/history", headers=keys["agent"])
    assert missing.status_code == 404
    limited = client.get("/v1/customers/c-42/history?limit=1", headers=keys["service"]).json()
    assert len(limited["decisions"]) == 1
