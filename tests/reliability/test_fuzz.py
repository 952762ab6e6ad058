"""Schemathesis over the app's own OpenAPI schema: every operation, generated requests, in process.

Generic over the schema: whatever operation the app declares (experiments, consoles, ...) is
fuzzed without a change here. With an admin key so that requests reach the services; each answer
must be no 5xx and conform to the schema (status declared, body of the declared shape, content
type). A smaller pass without a key and with a key of too small a role expects 401 and 403.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.checks import response_headers_conformance

from engine.runtime import Runtime
from tests.test_api_decisions import decide
from tests.test_api_triples import event

Headers = dict[str, dict[str, str]]
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 10}
"""Most examples per operation and mode (fewer where Hypothesis runs out of distinct ones)."""
MINIMUM_REQUESTS = 1000
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def fuzz_app(client: TestClient, keys: Headers, business: Any, runtime: Runtime) -> FastAPI:
    """A business with results, an active rule set, a guardrail and a decision: requests that
    name real things reach deep into the services, and the rest exercise the 4xx paths."""
    batch = {"events": [event(i) for i in range(120)]}
    assert client.post("/v1/events:batch", json=batch, headers=keys["service"]).status_code == 201
    version = client.post("/v1/rulesets:compile", headers=keys["marketer"]).json()["version"]
    assert client.post(f"/v1/rulesets/{version}:activate", headers=keys["marketer"]).is_success
    rail = {"kind": "cooldown", "name": "calm", "period_days": 7}
    assert client.post("/v1/guardrails", json=rail, headers=keys["marketer"]).is_success
    assert decide(client, keys).status_code == 201
    app: FastAPI = client.app  # type: ignore[assignment]
    return app


def _run(
    schema: Any,
    mode: GenerationMode,
    examples: int,
    headers: dict[str, str],
    judge: Callable[[Any, Any], None],
    failures: dict[str, str],
) -> Counter[str]:
    statuses: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            try:
                response = case.call(headers=headers)
            except Exception as error:  # the in-process client re-raises what became a 500
                statuses["5xx"] += 1
                failures.setdefault(f"{case.method} {case.path}: 500", repr(error))
                return
            statuses[f"{response.status_code // 100}xx"] += 1
            judge(case, response)

        try:
            fuzz()
        except Unsatisfiable:  # negative mode on an operation with nothing to make invalid
            assert mode is GenerationMode.NEGATIVE, operation.label
    return statuses


def test_every_operation_answers_within_its_schema(fuzz_app: FastAPI, keys: Headers) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    admin = keys["admin"]

    failures: dict[str, str] = {}

    def conforms(case: Any, response: Any) -> None:
        try:
            case.validate_response(response, checks=CHECKS, headers=admin)
        except (Exception, BaseExceptionGroup) as error:  # report every failure, not the first
            failures.setdefault(f"{case.method} {case.path}: {type(error).__name__}", str(error))

    total: Counter[str] = Counter()
    for mode, examples in EXAMPLES.items():
        total += _run(schema, mode, examples, admin, conforms, failures)
    requests = sum(total.values())
    print(json.dumps({"fuzz": {"requests": requests, **total, "failures": len(failures)}}))
    assert not failures, "\n\n".join(f"{k}\n{v[:1500]}" for k, v in failures.items())
    assert requests >= MINIMUM_REQUESTS
    assert total["5xx"] == 0


def test_without_a_key_or_with_a_smaller_role(fuzz_app: FastAPI, keys: Headers) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)

    def unauthenticated(case: Any, response: Any) -> None:
        if case.path.startswith("/v1/"):
            assert response.status_code == 401, (case.method, case.path, response.text)

    failures: dict[str, str] = {}
    _run(schema, GenerationMode.POSITIVE, 2, {}, unauthenticated, failures)
    wrong = {"Authorization": "Bearer nb_nope_wrong"}
    _run(schema, GenerationMode.POSITIVE, 2, wrong, unauthenticated, failures)

    def admin_only(case: Any, response: Any) -> None:
        if case.path.startswith(("/v1/keys", "/v1/audit")):
            assert response.status_code == 403, (case.method, case.path, response.text)
        else:
            assert response.status_code < 500

    _run(schema, GenerationMode.POSITIVE, 2, keys["marketer"], admin_only, failures)
    assert not failures, failures
