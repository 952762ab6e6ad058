"""Experiments over HTTP: definition, lifecycle, assignment in decisions, report and plots."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.runtime import Runtime
from experiments.monitor import update_experiments

Headers = dict[str, dict[str, str]]

DEFINITION: dict[str, Any] = {
    "key": "winter-discount",
    "name": "Winter discount test",
    "hypothesis": "A 10% discount keeps basic customers better than a senior callback",
    "eligibility": 'plan == "basic"',
    "arms": [
        {"experience": "no_offer", "weight": 1},
        {"experience": "discount_10", "weight": 1},
        {"experience": "callback_senior", "weight": 2},
    ],
    "allocation": "fixed",
    "holdout_share": 0.1,
    "burn_in": 5,
    "stopping": {"p_best": 0.95, "expected_loss": 1.0, "on_stop": "pause"},
}


def customers(client: TestClient, keys: Headers, n: int, plan: str = "basic") -> list[str]:
    ids = []
    for i in range(n):
        cid = f"{plan}-{i:04d}"
        body = {"attributes": {"plan": plan, "tenure_months": 5, "monthly_spend": 40}}
        response = client.put(f"/v1/customers/{cid}", json=body, headers=keys["service"])
        assert response.status_code in (200, 201), response.text
        ids.append(cid)
    return ids


def test_lifecycle_assignment_and_report(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    marketer = keys["marketer"]
    created = client.post("/v1/experiments", json=DEFINITION, headers=marketer)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "draft"
    assert body["control"] == "no_offer"
    assert body["weights"] == pytest.approx(
        {"no_offer": 0.1 + 0.9 * 0.25, "discount_10": 0.9 * 0.25, "callback_senior": 0.9 * 0.5}
    )
    started = client.post("/v1/experiments/winter-discount:start", headers=marketer)
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "running"

    ids = customers(client, keys, 60) + customers(client, keys, 5, plan="premium")
    made = {}
    for cid in ids:
        response = client.post("/v1/decisions", json={"customer_id": cid}, headers=keys["agent"])
        assert response.status_code == 201, response.text
        made[cid] = response.json()
    for cid, decision in made.items():
        if cid.startswith("basic"):
            assert decision["source"] == "experiment"
            assert decision["experiment"]["key"] == "winter-discount"
            assert decision["experience"] == decision["experiment"]["arm"]
        else:
            assert decision["experiment"] is None
    # Sticky: a second decision gives the same arm.
    again = client.post("/v1/decisions", json={"customer_id": "basic-0001"}, headers=keys["agent"])
    assert again.json()["experiment"] == made["basic-0001"]["experiment"]
    for decision in made.values():
        result = "retained" if decision["experience"] == "discount_10" else "churned"
        response = client.post(
            "/v1/outcomes",
            json={"decision_id": decision["decision_id"], "result": result},
            headers=keys["agent"],
        )
        assert response.status_code == 201, response.text
    report = client.get("/v1/experiments/winter-discount/report", headers=marketer)
    assert report.status_code == 200, report.text
    data = report.json()
    arms = {arm["experience"]: arm for arm in data["arms"]}
    assert sum(arm["customers"] for arm in arms.values()) == 60
    assert arms["discount_10"]["distribution"]["retained"] == 1.0
    assert arms["discount_10"]["p_best"] > 0.9
    assert arms["discount_10"]["uplift"]["mean"] > 0
    for name in ("posterior", "allocation", "cumulative"):
        plot = client.get(f"/v1/experiments/winter-discount/plots/{name}.svg", headers=marketer)
        assert plot.status_code == 200, plot.text
        assert plot.headers["content-type"].startswith("image/svg+xml")
        assert plot.text.lstrip().startswith("<?xml")
    changes = update_experiments(runtime.engine)
    print(changes, data["stopping"])
    edit = client.patch("/v1/experiments/winter-discount", json={"name": "x"}, headers=marketer)
    assert edit.status_code == 409
