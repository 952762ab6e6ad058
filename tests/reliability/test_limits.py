"""Every input limit in one table: each is answered 413 or 422 with the field at fault named.

The limits: request body size and batch rows (settings), number of attributes, string lengths,
and the rule language's expression length and nesting depth (rules.language).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import create_app
from engine.runtime import Runtime
from tests.conftest import ATTRIBUTES, EXPERIENCES, PG_URL, SCALE

Headers = dict[str, dict[str, str]]
MAX_BODY = 64 * 1024
MAX_ROWS = 5


@pytest.fixture
def limited(runtime: Runtime, keys: Headers) -> Iterator[TestClient]:
    """The app with a small body limit and batch size; a business to validate against."""
    small = Runtime(
        runtime.settings.model_copy(
            update={"max_body_bytes": MAX_BODY, "max_batch_rows": MAX_ROWS}
        ),
        engine=runtime.engine,
    )
    with TestClient(create_app(runtime=small)) as client:
        marketer = keys["marketer"]
        assert client.put("/v1/attributes", json=ATTRIBUTES, headers=marketer).status_code == 200
        assert client.put("/v1/outcome-scale", json=SCALE, headers=marketer).status_code == 200
        for experience in EXPERIENCES:
            assert client.post("/v1/experiences", json=experience, headers=marketer).is_success
        yield client


EVENT = {
    "customer_id": "c-1",
    "experience": "no_offer",
    "result": "retained",
    "occurred_at": "2026-10-01T10:00:00Z",
}
NESTED = "(" * 40 + 'plan == "basic"' + ")" * 40
NOTS = "not " * 40 + "fraud_flag"
LONG_RULE = " or ".join(['plan == "basic"'] * 200)  # 3,600 characters
MANY_ATTRIBUTES = {f"a{i}": 1 for i in range(101)}

# (case, method, path, role, json body or None, query params or None, status, field, in message)
CASES: list[tuple[str, str, str, str, Any, Any, int, str, str]] = [
    (
        "body size",
        "PUT",
        "/v1/customers/c-1",
        "service",
        {"attributes": {"plan": "x" * MAX_BODY}},
        None,
        413,
        "body",
        f"{MAX_BODY} bytes",
    ),
    (
        "batch rows",
        "POST",
        "/v1/events:batch",
        "service",
        {"events": [EVENT] * (MAX_ROWS + 1)},
        None,
        413,
        "events",
        f"at most {MAX_ROWS} events",
    ),
    (
        "empty batch",
        "POST",
        "/v1/events:batch",
        "service",
        {"events": []},
        None,
        422,
        "events",
        "at least 1",
    ),
    (
        "attributes of a customer",
        "PUT",
        "/v1/customers/c-1",
        "service",
        {"attributes": MANY_ATTRIBUTES},
        None,
        422,
        "attributes",
        "at most 100",
    ),
    (
        "attributes of a decision",
        "POST",
        "/v1/decisions",
        "agent",
        {"customer_id": "c-1", "attributes": MANY_ATTRIBUTES},
        None,
        422,
        "attributes",
        "at most 100",
    ),
    (
        "attributes of an event",
        "POST",
        "/v1/events",
        "service",
        {**EVENT, "attributes": MANY_ATTRIBUTES},
        None,
        422,
        "attributes",
        "at most 100",
    ),
    (
        "attribute specs",
        "PUT",
        "/v1/attributes",
        "marketer",
        {"attributes": [{"name": f"a{i}", "type": "boolean"} for i in range(101)]},
        None,
        422,
        "attributes",
        "at most 100",
    ),
    (
        "levels of a categorical",
        "PUT",
        "/v1/attributes",
        "marketer",
        {
            "attributes": [
                {"name": "a", "type": "categorical", "levels": [f"l{i}" for i in range(201)]}
            ]
        },
        None,
        422,
        "attributes.0.levels",
        "at most 200",
    ),
    (
        "levels of the scale",
        "PUT",
        "/v1/outcome-scale",
        "marketer",
        {"levels": [{"label": f"r{i}", "value": i} for i in range(21)], "default_result": "r0"},
        None,
        422,
        "levels",
        "at most 20",
    ),
    (
        "customer id length",
        "POST",
        "/v1/decisions",
        "agent",
        {"customer_id": "c" * 129},
        None,
        422,
        "customer_id",
        "at most 128",
    ),
    (
        "customer id in the path",
        "PUT",
        "/v1/customers/" + "c" * 129,
        "service",
        {"attributes": {}},
        None,
        422,
        "customer_id",
        "at most 128",
    ),
    (
        "customer name length",
        "PUT",
        "/v1/customers/c-1",
        "service",
        {"name": "n" * 201},
        None,
        422,
        "name",
        "at most 200",
    ),
    (
        "experience key length",
        "POST",
        "/v1/experiences",
        "marketer",
        {"key": "k" * 65, "name": "x"},
        None,
        422,
        "key",
        "at most 64",
    ),
    (
        "idempotency key length",
        "POST",
        "/v1/events",
        "service",
        {**EVENT, "idempotency_key": "i" * 201},
        None,
        422,
        "idempotency_key",
        "at most 200",
    ),
    (
        "override note length",
        "POST",
        "/v1/decisions/d-1/override",
        "agent",
        {"experience": "no_offer", "note": "n" * 2001},
        None,
        422,
        "note",
        "at most 2000",
    ),
    (
        "key name length",
        "POST",
        "/v1/keys",
        "admin",
        {"name": "n" * 201, "role": "agent"},
        None,
        422,
        "name",
        "at most 200",
    ),
    (
        "eligibility length",
        "POST",
        "/v1/experiences",
        "marketer",
        {"key": "k1", "name": "x", "eligibility": LONG_RULE},
        None,
        422,
        "eligibility",
        "at most 2000",
    ),
    (
        "guardrail condition length",
        "POST",
        "/v1/guardrails",
        "marketer",
        {"kind": "forbid", "name": "x", "condition": LONG_RULE},
        None,
        422,
        "condition",
        "at most 2000",
    ),
    (
        "where length",
        "GET",
        "/v1/worklist",
        "marketer",
        None,
        {"where": LONG_RULE},
        422,
        "where",
        "at most 2000",
    ),
    (
        "eligibility nesting",
        "POST",
        "/v1/experiences",
        "marketer",
        {"key": "k1", "name": "x", "eligibility": NESTED},
        None,
        422,
        "eligibility",
        "nested more than 32",
    ),
    (
        "eligibility of an update",
        "PATCH",
        "/v1/experiences/no_offer",
        "marketer",
        {"eligibility": NOTS},
        None,
        422,
        "eligibility",
        "nested more than 32",
    ),
    (
        "guardrail nesting",
        "POST",
        "/v1/guardrails",
        "marketer",
        {"kind": "forbid", "name": "x", "experience": "discount_10", "condition": NESTED},
        None,
        422,
        "condition",
        "nested more than 32",
    ),
    (
        "where nesting",
        "GET",
        "/v1/worklist",
        "marketer",
        None,
        {"where": NESTED},
        422,
        "where",
        "nested more than 32",
    ),
    (
        "policy-value where nesting",
        "GET",
        "/v1/insights/policy-value",
        "marketer",
        None,
        {"where": NOTS},
        422,
        "where",
        "nested more than 32",
    ),
    (
        "repeated policies",
        "GET",
        "/v1/insights/policy-value",
        "marketer",
        None,
        {"policy": ["current"] * 51},
        422,
        "policy",
        "at most 50",
    ),
    (
        "top_k",
        "POST",
        "/v1/decisions",
        "agent",
        {"customer_id": "c-1", "top_k": 51},
        None,
        422,
        "top_k",
        "less than or equal to 50",
    ),
    (
        "NUL in text",
        "POST",
        "/v1/events",
        "service",
        {**EVENT, "attributes": {"plan": "basic\x00"}},
        None,
        422,
        "body",
        "attributes.plan: text cannot contain NUL",
    ),
    (
        "NUL in a customer id",
        "PUT",
        "/v1/customers/c%00",
        "service",
        {"attributes": {}},
        None,
        422,
        "customer_id",
        "should match pattern",
    ),
    ("page size", "GET", "/v1/customers", "agent", None, {"limit": 501}, 422, "limit", "500"),
    ("audit page size", "GET", "/v1/audit", "admin", None, {"limit": 501}, 422, "limit", "500"),
]


@pytest.mark.parametrize(
    ("method", "path", "role", "body", "params", "status", "field", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_limit(
    limited: TestClient,
    keys: Headers,
    method: str,
    path: str,
    role: str,
    body: Any,
    params: Any,
    status: int,
    field: str,
    message: str,
) -> None:
    response = limited.request(method, path, json=body, params=params, headers=keys[role])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert message in error["message"], error
    assert error["code"] == ("too_large" if status == 413 else "invalid")


def test_a_streamed_body_over_the_limit_is_413(limited: TestClient, keys: Headers) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"attributes": {"plan": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}}'

    response = limited.put(
        "/v1/customers/c-1",
        content=chunks(),
        headers={**keys["service"], "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "body"


def test_deeply_nested_json_is_a_clear_4xx(limited: TestClient, keys: Headers) -> None:
    deep = '{"customer_id": "c-1", "attributes": {"plan": ' + "[" * 20_000 + "]" * 20_000 + "}}"
    response = limited.post(
        "/v1/decisions",
        content=deep,
        headers={**keys["agent"], "Content-Type": "application/json"},
    )
    assert response.status_code in (413, 422), response.text
    assert response.json()["error"]["field"] is not None


def test_a_nul_in_a_path_is_a_4xx_on_every_database(limited: TestClient, keys: Headers) -> None:
    response = limited.get("/v1/experiences/k%00", headers=keys["agent"])
    # SQLite stores NUL in text (no such experience: 404); PostgreSQL refuses it (422 on the path).
    assert response.status_code == (422 if PG_URL else 404), response.text
    if PG_URL:
        assert response.json()["error"]["field"] == "path"
