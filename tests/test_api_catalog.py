"""Catalog API: outcome scale, attribute specs, experiences, segmentation, customers."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ATTRIBUTES, SCALE

Headers = dict[str, dict[str, str]]


def test_outcome_scale_round_trip(client: TestClient, keys: Headers, business: Any) -> None:
    body = client.get("/v1/outcome-scale", headers=keys["agent"]).json()
    assert [lv["label"] for lv in body["levels"]] == ["churned", "retained", "upgraded"]
    assert body["default_result"] == "churned"
    assert body["attribution_days"] == 30


def test_outcome_scale_attribute_value(client: TestClient, keys: Headers, business: Any) -> None:
    scale = {
        "levels": [
            {"label": "churned", "value": 0},
            {"label": "retained", "value_attribute": "monthly_spend", "value_factor": 12},
            {"label": "upgraded"},
        ],
        "default_result": "churned",
    }
    response = client.put("/v1/outcome-scale", json=scale, headers=keys["marketer"])
    assert response.status_code == 200, response.text
    assert response.json()["levels"][1]["value_attribute"] == "monthly_spend"


BAD_SCALES = [
    (
        {"levels": [{"label": "a", "value": 1}], "default_result": "a"},
        "levels",
        "List should have at least 2 items",
    ),
    (
        {"levels": [{"label": "a"}, {"label": "a"}], "default_result": "a"},
        "body",
        "level labels must be unique; repeated: a",
    ),
    (
        {"levels": [{"label": "a"}, {"label": "b"}], "default_result": "c"},
        "body",
        "default_result 'c' is not a level; levels: a, b",
    ),
    (
        {
            "levels": [
                {"label": "a", "value": 1, "value_attribute": "monthly_spend"},
                {"label": "b"},
            ],
            "default_result": "a",
        },
        "levels.0",
        "give either value or value_attribute, not both",
    ),
    (
        {
            "levels": [{"label": "a", "value_attribute": "plan"}, {"label": "b"}],
            "default_result": "a",
        },
        "levels.0.value_attribute",
        "value_attribute 'plan' is not a declared numeric attribute; numeric attributes: "
        "monthly_spend, tenure_months",
    ),
    (
        {"levels": [{"label": "a b"}, {"label": "b"}], "default_result": "b"},
        "levels.0.label",
        "String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.+-]*$'",
    ),
    (
        {"levels": [{"label": "a"}, {"label": "b"}], "default_result": "a", "attribution_days": 0},
        "attribution_days",
        "Input should be greater than 0",
    ),
    (
        {"levels": [{"label": "a"}, {"label": "b"}], "default_result": "a", "extra": 1},
        "extra",
        "Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_SCALES)
def test_bad_outcome_scale(
    client: TestClient, keys: Headers, business: Any, body: Any, field: str, message: str
) -> None:
    response = client.put("/v1/outcome-scale", json=body, headers=keys["marketer"])
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]
    assert client.get("/v1/outcome-scale", headers=keys["agent"]).json()["levels"] == [
        {
            "label": lv["label"],
            "value": float(lv["value"]),
            "value_attribute": None,
            "value_factor": 1.0,
        }
        for lv in SCALE["levels"]
    ]


def test_scale_cannot_drop_used_level(client: TestClient, keys: Headers, business: Any) -> None:
    event = {
        "customer_id": "c-1",
        "experience": "no_offer",
        "result": "upgraded",
        "occurred_at": "2026-10-01T10:00:00Z",
    }
    assert client.post("/v1/events", json=event, headers=keys["service"]).status_code == 201
    body = {"levels": [{"label": "churned"}, {"label": "retained"}], "default_result": "churned"}
    response = client.put("/v1/outcome-scale", json=body, headers=keys["marketer"])
    assert response.status_code == 409
    assert "upgraded" in response.json()["error"]["message"]


def test_attributes_round_trip(client: TestClient, keys: Headers, business: Any) -> None:
    body = client.get("/v1/attributes", headers=keys["agent"]).json()
    by_name = {a["name"]: a for a in body["attributes"]}
    assert by_name["tenure_months"]["segment_levels"] == ["<12", "12-36", "36+"]
    assert by_name["signup_date"]["bins"] == ["2025-01-01"]
    assert by_name["fraud_flag"]["segment_levels"] == ["true", "false"]
    assert len(by_name) == len(ATTRIBUTES["attributes"])


BAD_SPECS = [
    ({"name": "x", "type": "categorical"}, "attributes.0", "a categorical attribute needs levels"),
    (
        {"name": "x", "type": "numeric", "bins": [5, 3]},
        "attributes.0",
        "bins must be strictly ascending",
    ),
    (
        {"name": "x", "type": "numeric", "levels": ["a"]},
        "attributes.0",
        "levels apply to categorical attributes, not numeric",
    ),
    ({"name": "x", "type": "colour"}, "attributes.0.type", "Input should be 'categorical'"),
    ({"name": "1x", "type": "boolean"}, "attributes.0.name", "String should match pattern"),
    (
        {"name": "x", "type": "numeric", "bins": [1], "labels": ["a"]},
        "attributes.0",
        "1 bins make 2 labels, not 1",
    ),
    (
        {"name": "x", "type": "categorical", "levels": ["a", "unknown"]},
        "attributes.0",
        "'unknown' is reserved for a missing value",
    ),
    (
        {"name": "x", "type": "date", "bins": ["2026-13-01"]},
        "attributes.0.bins",
        "month must be in 1..12",
    ),
]


@pytest.mark.parametrize(("spec", "field", "message"), BAD_SPECS)
def test_bad_attribute_specs(
    client: TestClient, keys: Headers, spec: Any, field: str, message: str
) -> None:
    response = client.put("/v1/attributes", json={"attributes": [spec]}, headers=keys["marketer"])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]
    assert client.get("/v1/attributes", headers=keys["agent"]).json() == {"attributes": []}


def test_experience_crud(client: TestClient, keys: Headers, business: Any) -> None:
    listed = client.get("/v1/experiences", headers=keys["agent"]).json()["data"]
    assert [e["key"] for e in listed] == ["callback_senior", "discount_10", "no_offer"]
    discount = client.get("/v1/experiences/discount_10", headers=keys["agent"]).json()
    assert discount["cost_attribute"] == "monthly_spend"
    assert discount["cost_on"] == ["retained", "upgraded"]
    patched = client.patch(
        "/v1/experiences/discount_10",
        json={"cost_factor": 0.25, "eligibility": 'plan != "basic"'},
        headers=keys["marketer"],
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["cost_factor"] == 0.25
    off = client.post("/v1/experiences/discount_10:deactivate", headers=keys["marketer"])
    assert off.json()["active"] is False
    active = client.get("/v1/experiences?active=true", headers=keys["agent"]).json()["data"]
    assert "discount_10" not in [e["key"] for e in active]
    on = client.post("/v1/experiences/discount_10:activate", headers=keys["marketer"])
    assert on.json()["active"] is True


BAD_EXPERIENCES = [
    ({"key": "no_offer", "name": "again"}, 409, "key", "experience 'no_offer' exists already"),
    (
        {"key": "x", "name": "x", "cost_on": ["won"]},
        422,
        "cost_on",
        "cost_on names levels the outcome scale does not have: won; levels: churned, retained, "
        "upgraded",
    ),
    (
        {"key": "x", "name": "x", "cost_attribute": "plan"},
        422,
        "cost_attribute",
        "cost_attribute 'plan' is not a declared numeric attribute",
    ),
    (
        {"key": "x", "name": "x", "eligibility": 'colour == "red"'},
        422,
        "eligibility",
        "unknown attribute 'colour'",
    ),
    ({"key": "x", "name": "x", "eligibility": "plan =="}, 422, "eligibility", "column"),
    ({"key": "x", "name": "x", "cost": "a lot"}, 422, "cost", "Input should be a valid number"),
    ({"key": "x", "name": "x", "cost": 1e300}, 422, "cost", "less than or equal to"),
    ({"key": "", "name": "x"}, 422, "key", "at least 1 character"),
    ({"name": "x"}, 422, "key", "Field required"),
    ({"key": "x y", "name": "x"}, 422, "key", "String should match pattern"),
]


@pytest.mark.parametrize(("body", "status", "field", "message"), BAD_EXPERIENCES)
def test_bad_experiences(
    client: TestClient,
    keys: Headers,
    business: Any,
    body: Any,
    status: int,
    field: str,
    message: str,
) -> None:
    response = client.post("/v1/experiences", json=body, headers=keys["marketer"])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]
    assert len(client.get("/v1/experiences", headers=keys["agent"]).json()["data"]) == 3


def test_rule_errors_give_the_column(client: TestClient, keys: Headers, business: Any) -> None:
    body = {"key": "x", "name": "x", "eligibility": 'plan == "basic")'}
    error = client.post("/v1/experiences", json=body, headers=keys["marketer"]).json()["error"]
    assert error["column"] == 16
    assert "\n" not in error["message"]
    assert error["message"].startswith("unexpected ')' at column 16 in rule: plan ==")


def test_unknown_experience_is_404(client: TestClient, keys: Headers, business: Any) -> None:
    response = client.get("/v1/experiences/nope", headers=keys["agent"])
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "not_found",
        "message": "no experience 'nope'",
        "field": "key",
    }


def test_segmentation(client: TestClient, keys: Headers, business: Any) -> None:
    response = client.put(
        "/v1/segmentation", json={"attributes": ["plan", "tenure_months"]}, headers=keys["marketer"]
    )
    assert response.status_code == 200
    assert client.get("/v1/segmentation", headers=keys["agent"]).json()["attributes"] == [
        "plan",
        "tenure_months",
    ]
    auto = client.put("/v1/segmentation", json={"auto": True}, headers=keys["marketer"])
    assert auto.status_code == 200 and auto.json()["auto"] is True


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"attributes": ["colour"]}, "attributes.0", "unknown attribute 'colour'"),
        ({"attributes": ["plan"], "auto": True}, "body", "give either"),
        ({}, "body", "give either"),
        ({"attributes": ["plan", "plan"]}, "body", "attributes must not repeat"),
    ],
)
def test_bad_segmentation(
    client: TestClient, keys: Headers, business: Any, body: Any, field: str, message: str
) -> None:
    response = client.put("/v1/segmentation", json=body, headers=keys["marketer"])
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert message in response.json()["error"]["message"]


def test_attributes_change_keeps_segmentation_valid(
    client: TestClient, keys: Headers, business: Any
) -> None:
    client.put("/v1/segmentation", json={"attributes": ["plan"]}, headers=keys["marketer"])
    response = client.put("/v1/attributes", json={"attributes": []}, headers=keys["marketer"])
    assert response.status_code == 409
    assert (
        "segmentation uses attributes this change drops: plan"
        in (response.json()["error"]["message"])
    )


def test_customers_upsert_read_and_page(client: TestClient, keys: Headers, business: Any) -> None:
    for i in range(7):
        response = client.put(
            f"/v1/customers/c-{i}",
            json={"name": f"Name {i}", "attributes": {"plan": "plus", "tenure_months": i}},
            headers=keys["service"],
        )
        assert response.status_code == 201
    again = client.put(
        "/v1/customers/c-1", json={"attributes": {"plan": "premium"}}, headers=keys["service"]
    )
    assert again.status_code == 200
    assert again.json()["attributes"] == {"plan": "premium"}
    assert again.json()["name"] == "Name 1"
    seen, cursor = [], None
    while True:
        url = "/v1/customers?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=keys["agent"]).json()
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"c-{i}" for i in range(7)]
    found = client.get("/v1/customers?q=Name%203", headers=keys["agent"]).json()["data"]
    assert [c["id"] for c in found] == ["c-3"]


BAD_CUSTOMERS = [
    (
        {"attributes": {"plan": "gold"}},
        "attributes.plan",
        "'gold' is not a level of plan; valid levels: basic, plus, premium",
    ),
    ({"attributes": {"colour": "red"}}, "attributes.colour", "unknown attribute 'colour'"),
    (
        {"attributes": {"tenure_months": "long"}},
        "attributes.tenure_months",
        "tenure_months must be a number, got 'long'",
    ),
    (
        {"attributes": {"fraud_flag": "maybe"}},
        "attributes.fraud_flag",
        "fraud_flag must be true or false, got 'maybe'",
    ),
    (
        {"attributes": {"signup_date": "yesterday"}},
        "attributes.signup_date",
        "signup_date must be an ISO date",
    ),
    ({"attributes": {"tenure_months": float("inf")}}, "body", ""),
    ({"attributes": [1]}, "attributes", "Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_CUSTOMERS)
def test_bad_customers(
    client: TestClient, keys: Headers, business: Any, body: Any, field: str, message: str
) -> None:
    if body["attributes"] == {"tenure_months": float("inf")}:
        content = '{"attributes": {"tenure_months": Infinity}}'
        response = client.put(
            "/v1/customers/c-1",
            content=content,
            headers={**keys["service"], "content-type": "application/json"},
        )
        assert response.status_code == 422
        return
    response = client.put("/v1/customers/c-1", json=body, headers=keys["service"])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert message in response.json()["error"]["message"]
    assert client.get("/v1/customers/c-1", headers=keys["agent"]).status_code == 404


def test_bad_cursor(client: TestClient, keys: Headers) -> None:
    response = client.get("/v1/customers?cursor=not-a-cursor!", headers=keys["agent"])
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "cursor"


def test_oversized_body_is_413(client: TestClient, keys: Headers, runtime: Any) -> None:
    big = "x" * (runtime.settings.max_body_bytes + 1)
    response = client.put(
        "/v1/customers/c-1",
        content=big,
        headers={**keys["service"], "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_audit_trail_records_catalog_changes(
    client: TestClient, keys: Headers, business: Any, runtime: Any
) -> None:
    from sqlmodel import select

    from engine.models import AuditEvent

    with runtime.session() as session:
        events = session.exec(select(AuditEvent)).all()
    entities = {(e.entity, e.action) for e in events}
    assert ("experience", "create") in entities
    assert ("outcome_scale", "update") in entities
    assert all(e.actor == "marketer:test-marketer" for e in events if e.entity == "experience")
