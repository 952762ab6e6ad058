"""Triple logging over HTTP: single events, all-or-nothing batches, statistics equal a replay."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import func, select

from engine import stats
from engine.catalog import load_catalog
from engine.models import Customer, Outcome
from engine.runtime import Runtime

Headers = dict[str, dict[str, str]]


def event(i: int = 0, **changes: Any) -> dict[str, Any]:
    base = {
        "customer_id": f"c-{i % 7}",
        "experience": ["no_offer", "discount_10", "callback_senior"][i % 3],
        "result": ["churned", "retained", "upgraded"][i % 3 if i % 5 else 1],
        "occurred_at": f"2026-10-{1 + i % 28:02d}T10:00:00Z",
        "attributes": {"plan": ["basic", "plus", "premium"][i % 3], "tenure_months": i % 50},
    }
    if i % 4 == 0:
        base["value"] = 90.0 + i
    return {**base, **changes}


def count(runtime: Runtime, model: Any) -> int:
    with runtime.session() as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def assert_stats_equal_replay(runtime: Runtime) -> None:
    with runtime.session() as session:
        catalog = load_catalog(session)
        assert (
            stats.drift(stats.stored_cells(session), stats.replay(session, catalog=catalog)) == []
        )


def test_event_is_stored_with_exposure_and_customer(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    first = client.post("/v1/events", json=event(0), headers=keys["service"])
    assert first.status_code == 201, first.text
    assert first.json()["exposure"] == 0
    second = client.post(
        "/v1/events", json=event(0, occurred_at="2026-10-02T10:00:00Z"), headers=keys["service"]
    )
    assert second.json()["exposure"] == 1
    customer = client.get("/v1/customers/c-0", headers=keys["agent"]).json()
    assert customer["attributes"] == {"plan": "basic", "tenure_months": 0.0}
    assert_stats_equal_replay(runtime)


def test_event_idempotency(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    body = event(1, idempotency_key="crm-1")
    first = client.post("/v1/events", json=body, headers=keys["service"])
    again = client.post("/v1/events", json=body, headers=keys["service"])
    assert first.json() == again.json()
    conflict = client.post(
        "/v1/events", json={**body, "result": "churned"}, headers=keys["service"]
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"]["field"] == "idempotency_key"
    assert count(runtime, Outcome) == 1


BAD_EVENTS = [
    (
        {"experience": "free_lunch"},
        "experience",
        "unknown experience 'free_lunch'; experiences: callback_senior, discount_10, no_offer",
    ),
    ({"result": "R11"}, "result", "unknown result 'R11'; levels: churned, retained, upgraded"),
    ({"occurred_at": "2026-10-01T10:00:00"}, "occurred_at", "needs a time zone"),
    ({"occurred_at": "last tuesday"}, "occurred_at", "Input should be a valid datetime"),
    ({"occurred_at": "2999-01-01T00:00:00Z"}, "occurred_at", "is in the future"),
    ({"attributes": {"plan": "gold"}}, "attributes.plan", "'gold' is not a level of plan"),
    ({"attributes": {"shoe_size": 9}}, "attributes.shoe_size", "unknown attribute 'shoe_size'"),
    ({"value": "lots"}, "value", "Input should be a valid number"),
    ({"customer_id": ""}, "customer_id", "at least 1 character"),
    ({"customer_id": "a b"}, "customer_id", "String should match pattern"),
    ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD_EVENTS)
def test_bad_event(
    client: TestClient,
    keys: Headers,
    business: Any,
    runtime: Runtime,
    change: Any,
    field: str,
    message: str,
) -> None:
    response = client.post("/v1/events", json=event(2, **change), headers=keys["service"])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]
    if "valid" in error:
        assert isinstance(error["valid"], list)
    assert count(runtime, Outcome) == 0
    assert count(runtime, Customer) == 0


def test_batch_stores_all(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    events = [event(i) for i in range(500)]
    response = client.post("/v1/events:batch", json={"events": events}, headers=keys["service"])
    assert response.status_code == 201, response.text
    assert response.json()["stored"] == 500
    assert count(runtime, Outcome) == 500
    with runtime.session() as session:
        exposures = session.exec(
            select(Outcome.exposure)
            .where(Outcome.customer_id == "c-0", Outcome.experience_key == "no_offer")
            .order_by(Outcome.id)  # type: ignore[arg-type]
        ).all()
    assert list(exposures) == list(range(len(exposures)))
    assert_stats_equal_replay(runtime)


def test_batch_is_all_or_nothing_with_row_errors(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    events = [event(i) for i in range(100)]
    events[17]["result"] = "R11"
    events[60]["attributes"] = {"plan": "gold"}
    events[61] = "not an object"  # type: ignore[call-overload]
    response = client.post("/v1/events:batch", json={"events": events}, headers=keys["service"])
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "events.17.result"
    assert error["message"].startswith("3 of 100 events are invalid and nothing was stored")
    assert [(d["row"], d["field"]) for d in error["details"]] == [
        (17, "events.17.result"),
        (60, "events.60.attributes.plan"),
        (61, "events.61"),
    ]
    assert count(runtime, Outcome) == 0
    assert count(runtime, Customer) == 0


def test_batch_limits(client: TestClient, keys: Headers, business: Any, runtime: Runtime) -> None:
    limit = runtime.settings.max_batch_rows
    response = client.post(
        "/v1/events:batch", json={"events": [event(0)] * (limit + 1)}, headers=keys["service"]
    )
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "events"
    empty = client.post("/v1/events:batch", json={"events": []}, headers=keys["service"])
    assert empty.status_code == 422


def test_batch_of_ten_thousand(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    events = [event(i, customer_id=f"c-{i % 900}") for i in range(10_000)]
    response = client.post("/v1/events:batch", json={"events": events}, headers=keys["service"])
    assert response.status_code == 201
    assert count(runtime, Outcome) == 10_000
    assert count(runtime, Customer) == 900
    assert_stats_equal_replay(runtime)


def test_attribute_rebinning_replays_cells(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    client.post(
        "/v1/events:batch", json={"events": [event(i) for i in range(60)]}, headers=keys["service"]
    )
    specs = business["attributes"]["attributes"]
    rebinned = [dict(s, bins=[6, 24]) if s["name"] == "tenure_months" else s for s in specs]
    response = client.put("/v1/attributes", json={"attributes": rebinned}, headers=keys["marketer"])
    assert response.status_code == 200
    with runtime.session() as session:
        segments = {key[0] for key in stats.stored_cells(session)}
    assert any("tenure_months=6-24" in s for s in segments)
    assert_stats_equal_replay(runtime)


def test_event_replay_says_so(client: TestClient, keys: Headers, business: Any) -> None:
    body = event(1, idempotency_key="crm-9")
    assert client.post("/v1/events", json=body, headers=keys["service"]).status_code == 201
    again = client.post("/v1/events", json=body, headers=keys["service"])
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
