"""Off-policy evaluation over HTTP and the CLI, on decisions the engine logged."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli import app
from tests.test_api_insights import history  # noqa: F401  (fixture)

Headers = dict[str, dict[str, str]]


@pytest.fixture
def logged(client: TestClient, keys: Headers, history: Any) -> dict[str, Any]:  # noqa: F811
    """120 decisions for the fresh customers with outcomes; one overridden by an agent."""
    made = []
    for i in range(120):
        plan = "basic" if i % 2 else "premium"
        body = client.post(
            "/v1/decisions", json={"customer_id": f"{plan}-{i % 20:02d}"}, headers=keys["agent"]
        ).json()
        made.append(body)
    client.post(
        f"/v1/decisions/{made[0]['decision_id']}/override",
        json={"experience": "callback_senior", "note": "asked for a call"},
        headers=keys["agent"],
    )
    for i, body in enumerate(made):
        stays = body["experience"] == "discount_10" or i % 3 != 0
        response = client.post(
            "/v1/outcomes",
            json={"decision_id": body["decision_id"], "result": "retained" if stays else "churned"},
            headers=keys["agent"],
        )
        assert response.status_code == 201, response.text
    return {"decisions": made}


def test_policy_value(client: TestClient, keys: Headers, logged: Any) -> None:
    response = client.get(
        "/v1/insights/policy-value",
        params={"policy": ["current", "control", "experience:discount_10"]},
        headers=keys["marketer"],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decisions"]["used"] == 119
    assert body["decisions"]["overridden"] == 1
    assert body["overrides"]["n"] == 1
    current = body["policies"]["current"]["estimates"]["snips"]
    assert current["status"] == "ok"
    assert current["value"] == pytest.approx(body["engine"]["mean_net_value"])
    for policy in ("control", "experience:discount_10"):
        for method, estimate in body["policies"][policy]["estimates"].items():
            assert estimate["method"] == method
            if estimate["status"] == "ok":
                low, high = estimate["ci95"]
                assert low <= estimate["value"] <= high
                assert 0 < estimate["ess"] <= estimate["n"]
            else:
                assert estimate["value"] is None and estimate["reason"]


def test_evaluate_a_ruleset_against_the_active_one(
    client: TestClient, keys: Headers, logged: Any
) -> None:
    first = client.post("/v1/rulesets:compile", headers=keys["marketer"]).json()["version"]
    client.post(f"/v1/rulesets/{first}:activate", headers=keys["marketer"])
    second = client.post(
        "/v1/rulesets:compile", json={"budget": 1}, headers=keys["marketer"]
    ).json()["version"]
    response = client.post(
        f"/v1/rulesets/{second}:evaluate", json={"days": 30}, headers=keys["marketer"]
    )
    assert response.status_code == 200, response.text
    policies = response.json()["policies"]
    assert list(policies) == [f"ruleset:{second}", f"ruleset:{first}", "current", "control"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"policy": "everyone"}, "policy"),
        ({"policy": "experience:nope"}, "policy"),
        ({"policy": "ruleset:99"}, "policy"),
        ({"days": 0}, "days"),
        ({"clip": 0.5}, "clip"),
        ({"where": "plan =="}, "where"),
    ],
)
def test_policy_value_bad_query(
    params: dict[str, Any], field: str, client: TestClient, keys: Headers, logged: Any
) -> None:
    response = client.get("/v1/insights/policy-value", params=params, headers=keys["marketer"])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_too_few_decisions_cannot_be_estimated(
    client: TestClient,
    keys: Headers,
    history: Any,  # noqa: F811
) -> None:
    body = client.get("/v1/insights/policy-value?policy=control", headers=keys["marketer"]).json()
    estimate = body["policies"]["control"]["estimates"]["dr"]
    assert estimate["status"] == "cannot_estimate"
    assert "at least 30" in estimate["reason"]


def test_evaluate_command(logged: Any, database_url: str) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--db", database_url])
    assert result.exit_code == 0, result.output
    assert "119 decisions with outcomes (1 overridden" in result.output
    assert "current | snips |" in result.output
    assert "experience:no_offer | dr |" in result.output
    assert "agent overrides (left out of the estimates): 1 decisions" in result.output
