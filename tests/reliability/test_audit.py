"""The audit trail over HTTP: every change is recorded with who, when, before and after; admins
read it filtered and cursor-paged."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi.testclient import TestClient

from tests.test_api_decisions import decide
from tests.test_api_triples import event

Headers = dict[str, dict[str, str]]


def all_events(client: TestClient, keys: Headers, **filters: Any) -> list[dict[str, Any]]:
    """Every page of GET /v1/audit, two events per page so the cursor is exercised."""
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**filters, "limit": 2, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/audit", params=params, headers=keys["admin"])
        assert response.status_code == 200, response.text
        page = response.json()
        events.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return events


def test_every_change_is_audited(client: TestClient, keys: Headers, business: Any) -> None:
    marketer, admin = keys["marketer"], keys["admin"]
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    client.patch("/v1/experiences/discount_10", json={"cost_factor": 0.25}, headers=marketer)
    client.post("/v1/experiences/callback_senior:deactivate", headers=marketer)
    client.post("/v1/experiences/callback_senior:activate", headers=marketer)
    client.put("/v1/segmentation", json={"attributes": ["plan"]}, headers=marketer)
    client.put("/v1/decay", json={"half_life_days": 60}, headers=marketer)
    batch = {"events": [event(i) for i in range(40)]}
    assert client.post("/v1/events:batch", json=batch, headers=keys["service"]).status_code == 201
    version = client.post("/v1/rulesets:compile", headers=marketer).json()["version"]
    client.post(f"/v1/rulesets/{version}:activate", headers=marketer)
    rail = client.post(
        "/v1/guardrails",
        json={"kind": "cooldown", "name": "calm", "period_days": 7},
        headers=marketer,
    ).json()
    client.post(f"/v1/guardrails/{rail['id']}:deactivate", headers=marketer)
    created = client.post("/v1/keys", json={"name": "crm", "role": "service"}, headers=admin).json()
    client.post(f"/v1/keys/{created['id']}:revoke", headers=admin)
    decision = decide(client, keys).json()
    other = "callback_senior" if decision["experience"] != "callback_senior" else "discount_10"
    client.post(
        f"/v1/decisions/{decision['decision_id']}/override",
        json={"experience": other, "note": "asked for it", "agent_id": "a-1"},
        headers=keys["agent"],
    )

    events = all_events(client, keys)
    seen = {(e["entity"], e["action"]) for e in events}
    expected = {
        ("outcome_scale", "update"),
        ("attribute_specs", "update"),
        ("experience", "create"),
        ("experience", "update"),
        ("segmentation", "update"),
        ("decay", "update"),
        ("rule_set", "compile"),
        ("rule_set", "activate"),
        ("guardrail", "create"),
        ("guardrail", "deactivate"),
        ("api_key", "create"),
        ("api_key", "revoke"),
        ("decision", "override"),
    }
    assert expected <= seen, expected - seen
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert all(
        dt.datetime.fromisoformat(e["at"]) >= start for e in events if e["actor"] != "system"
    )

    patched = all_events(client, keys, entity="experience", entity_id="discount_10")
    (update,) = [e for e in patched if e["action"] == "update"]
    assert update["actor"] == "marketer:test-marketer"
    assert update["before"]["cost_factor"] == 0.3 and update["after"]["cost_factor"] == 0.25

    by_admin = all_events(client, keys, actor="admin:test-admin")
    assert {e["entity"] for e in by_admin} == {"api_key"}
    assert created["key"] not in str(events)  # the trail never holds a secret
    assert all_events(client, keys, action="revoke")[0]["entity_id"] == str(created["id"])
    assert all_events(client, keys, until=start.isoformat()) == []
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).isoformat()
    assert all_events(client, keys, since=later) == []


def test_audit_is_for_admins_and_checks_its_cursor(
    client: TestClient, keys: Headers, business: Any
) -> None:
    for role in ("marketer", "agent", "service"):
        assert client.get("/v1/audit", headers=keys[role]).status_code == 403
    assert client.get("/v1/audit").status_code == 401
    bad = client.get("/v1/audit", params={"cursor": "x1"}, headers=keys["admin"])
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"
