"""GET /v1/insights/segments, GET /v1/worklist and `nextbest score`: estimates people can read,
and customers ranked by what acting gains over doing nothing."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli import app
from engine.models import utcnow

Headers = dict[str, dict[str, str]]

# Basic customers churn unless given the discount; premium customers stay anyway, so for them
# any offer only costs money.
TRUTH = {
    ("basic", "no_offer"): ["churned"] * 6 + ["retained"] * 4,
    ("basic", "discount_10"): ["churned"] * 1 + ["retained"] * 9,
    ("basic", "callback_senior"): ["churned"] * 5 + ["retained"] * 5,
    ("premium", "no_offer"): ["retained"] * 10,
    ("premium", "discount_10"): ["retained"] * 10,
    ("premium", "callback_senior"): ["retained"] * 10,
}


FRESH = "fraud_flag == false"
"""The worklist's customers in these tests: 20 basic and 20 premium who got no offer yet."""


@pytest.fixture
def history(client: TestClient, keys: Headers, business: Any) -> None:
    """30 results per plan and experience from past customers (one result each), then 40 fresh
    customers (20 per plan) with no exposure yet."""
    response = client.put(
        "/v1/segmentation", json={"attributes": ["plan"]}, headers=keys["marketer"]
    )
    assert response.status_code == 200
    when = (utcnow() - dt.timedelta(days=1)).isoformat()
    events = [
        {
            "customer_id": f"past-{plan}-{experience}-{repeat}-{i}",
            "experience": experience,
            "result": result,
            "occurred_at": when,
            "attributes": {"plan": plan, "monthly_spend": 40},
        }
        for (plan, experience), results in TRUTH.items()
        for repeat in range(3)
        for i, result in enumerate(results)
    ]
    response = client.post("/v1/events:batch", json={"events": events}, headers=keys["service"])
    assert response.status_code == 201, response.text
    for plan in ("basic", "premium"):
        for i in range(20):
            response = client.put(
                f"/v1/customers/{plan}-{i:02d}",
                json={"attributes": {"plan": plan, "monthly_spend": 40, "fraud_flag": False}},
                headers=keys["service"],
            )
            assert response.status_code == 201


def test_segment_insights(client: TestClient, keys: Headers, history: Any) -> None:
    response = client.get("/v1/insights/segments", headers=keys["marketer"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["segmentation"] == ["plan"]
    assert body["levels"] == ["churned", "retained", "upgraded"]
    nodes = {node["segment"]: node for node in body["nodes"]}
    assert set(nodes) == {"", "plan=basic", "plan=premium"}
    for node in body["nodes"]:
        assert sum(e["p_best"] for e in node["experiences"]) == pytest.approx(1.0, abs=1e-3)
        for e in node["experiences"]:
            assert sum(e["distribution"].values()) == pytest.approx(1.0, abs=1e-3)
            low, high = e["ci90"]
            assert low <= e["expected_net_value"] <= high
    basic = {e["experience"]: e for e in nodes["plan=basic"]["experiences"]}
    premium = {e["experience"]: e for e in nodes["plan=premium"]["experiences"]}
    assert basic["discount_10"]["n"] == pytest.approx(30.0, rel=0.01)  # a day of decay
    assert max(basic, key=lambda k: basic[k]["expected_net_value"]) == "discount_10"
    assert max(premium, key=lambda k: premium[k]["expected_net_value"]) == "no_offer"
    assert basic["discount_10"]["distribution"]["churned"] < 0.2
    assert basic["no_offer"]["distribution"]["churned"] > 0.45
    shallow = client.get("/v1/insights/segments?depth=0", headers=keys["marketer"]).json()
    assert [node["segment"] for node in shallow["nodes"]] == [""]
    # One kappa and one additive-model weight per experience and depth (root first); the root
    # has no parent to mix with
    assert set(body["additive_weights"]) == set(body["kappas"]) == set(basic)
    for weights in body["additive_weights"].values():
        assert len(weights) == 2 and weights[0] == 0.0 and 0.0 <= weights[1] <= 1.0


@pytest.mark.parametrize(
    ("query", "field"),
    [("exposure=3", "exposure"), ("exposure=x", "exposure"), ("depth=-1", "depth")],
)
def test_segment_insights_bad_query(
    query: str, field: str, client: TestClient, keys: Headers, history: Any
) -> None:
    response = client.get(f"/v1/insights/segments?{query}", headers=keys["marketer"])
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_worklist_ranks_by_gain_and_leaves_those_who_stay_anyway(
    client: TestClient, keys: Headers, history: Any
) -> None:
    response = client.get(
        "/v1/worklist", params={"where": FRESH, "limit": 500}, headers=keys["agent"]
    )
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["items"]
    assert body["matched"] == len(items) == 40
    gains = [item["gain"] for item in items]
    assert gains == sorted(gains, reverse=True)
    top, bottom = items[:20], items[20:]
    assert {item["attributes"]["plan"] for item in top} == {"basic"}
    assert {item["best_experience"] for item in top} == {"discount_10"}
    assert all(item["gain"] > 10 for item in top)
    for item in bottom:
        assert item["best_experience"] == "no_offer"
        assert item["gain"] == 0
        assert item["value_at_stake"] < 10  # they stay anyway
    first = top[0]
    assert first["uplift"] - first["cost"] == pytest.approx(first["gain"], abs=1e-3)
    assert first["control_experience"] == "no_offer"


def test_worklist_filters_and_pages(client: TestClient, keys: Headers, history: Any) -> None:
    everyone = client.get("/v1/worklist?limit=500", headers=keys["marketer"]).json()
    assert everyone["matched"] == 180 + 40
    pages: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = client.get(f"/v1/worklist?limit=17&offset={offset}", headers=keys["agent"]).json()
        pages.extend(page["items"])
        offset = page["next_offset"]
    assert [p["customer_id"] for p in pages] == [e["customer_id"] for e in everyone["items"]]
    premium = client.get(
        "/v1/worklist",
        params={"where": f'{FRESH} and plan == "premium"'},
        headers=keys["agent"],
    ).json()
    assert premium["matched"] == 20
    assert {item["attributes"]["plan"] for item in premium["items"]} == {"premium"}
    discount = client.get(
        "/v1/worklist", params={"where": FRESH, "experience": "discount_10"}, headers=keys["agent"]
    ).json()
    assert discount["matched"] == 20
    paying = client.get(
        "/v1/worklist", params={"where": FRESH, "min_gain": 1}, headers=keys["agent"]
    ).json()
    assert {item["attributes"]["plan"] for item in paying["items"]} == {"basic"}


def test_worklist_follows_customer_and_result_changes(
    client: TestClient, keys: Headers, history: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranking a worker keeps is dropped when a customer or the statistics change; a base
    too large to keep is scored per request, with the same answer."""
    query = {"where": f'{FRESH} and plan == "basic"', "limit": 500}
    before = client.get("/v1/worklist", params=query, headers=keys["agent"]).json()
    assert before["matched"] == 20
    moved = client.put(
        "/v1/customers/basic-00",
        json={"attributes": {"plan": "premium", "monthly_spend": 40, "fraud_flag": False}},
        headers=keys["service"],
    )
    assert moved.status_code == 200
    after = client.get("/v1/worklist", params=query, headers=keys["agent"]).json()
    assert after["matched"] == 19
    assert "basic-00" not in {item["customer_id"] for item in after["items"]}
    when = (utcnow() - dt.timedelta(hours=1)).isoformat()
    events = [
        {
            "customer_id": f"basic-{i:02d}",
            "experience": "discount_10",
            "result": "churned",
            "occurred_at": when,
        }
        for i in range(1, 20)
    ]
    stored = client.post("/v1/events:batch", json={"events": events}, headers=keys["service"])
    assert stored.status_code == 201
    repeat = client.get("/v1/worklist", params=query, headers=keys["agent"]).json()
    gains = {item["customer_id"]: item["gain"] for item in repeat["items"]}
    old = {item["customer_id"]: item["gain"] for item in after["items"]}
    assert all(gains[c] != old[c] for c in gains)  # a second discount is a repeat exposure
    monkeypatch.setattr("engine.insights.WORKLIST_CACHE_CUSTOMERS", 10)
    uncached = client.get("/v1/worklist", params=query, headers=keys["agent"]).json()
    assert uncached["items"] == repeat["items"]
    assert uncached["matched"] == repeat["matched"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"where": "plan ==="}, "where"),
        ({"where": "colour == 'red'"}, "where"),
        ({"experience": "nope"}, "experience"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"offset": -1}, "offset"),
        ({"min_gain": "lots"}, "min_gain"),
    ],
)
def test_worklist_bad_query(
    params: dict[str, Any], field: str, client: TestClient, keys: Headers, history: Any
) -> None:
    response = client.get("/v1/worklist", params=params, headers=keys["agent"])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_worklist_needs_a_control(client: TestClient, keys: Headers, history: Any) -> None:
    client.post("/v1/experiences/no_offer:deactivate", headers=keys["marketer"])
    response = client.get("/v1/worklist", headers=keys["agent"])
    assert response.status_code == 409
    assert "control" in response.json()["error"]["message"]


def test_score_command_writes_every_customer(
    tmp_path: Path, client: TestClient, keys: Headers, history: Any, database_url: str
) -> None:
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(app, ["score", str(out), "--db", database_url, "--quiet"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 180 + 40
    listed = client.get("/v1/worklist?limit=500", headers=keys["agent"]).json()["items"]
    gains = {item["customer_id"]: item["gain"] for item in listed}
    assert {r["customer_id"]: float(r["gain"]) for r in rows} == gains
    bad = CliRunner().invoke(app, ["score", str(out), "--db", database_url, "--where", "x =="])
    assert bad.exit_code == 1
    assert "error:" in bad.output
    assert len(list(csv.DictReader(out.read_text().splitlines()))) == 220  # left as it was
