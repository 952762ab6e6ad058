"""The role matrix, generated from the route table: a new route under /v1 cannot escape it.

Keys: hashed, shown once, never logged; a per-key rate limit answers 429 with Retry-After."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlmodel import select
from typer.testing import CliRunner

from api import Allow, create_app
from cli import app as cli_app
from engine.config import Settings
from engine.models import ApiKey
from engine.ratelimit import RateLimiter
from engine.runtime import Runtime
from tests.conftest import ROLE_KEYS

PUBLIC = {"/healthz", "/livez", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _allowed_roles(route: APIRoute) -> tuple[str, ...] | None:
    for dependency in route.dependant.dependencies:
        for sub in [dependency, *dependency.dependencies]:
            if isinstance(sub.call, Allow):
                return sub.call.roles
    return None


def _routes() -> list[tuple[str, str, tuple[str, ...]]]:
    """Every method of every /v1 route with the roles its Allow dependency admits (pages outside
    /v1 authenticate their own way and are tested where they are built)."""
    app = create_app(Settings(database_url="sqlite://"))
    table = []
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/v1/"):
            continue
        roles = _allowed_roles(route)
        assert roles is not None, f"{route.path} has no Allow dependency"
        for method in sorted(route.methods):
            table.append((method, route.path, roles))
    return table


ROUTES = _routes()


def test_every_route_is_guarded() -> None:
    assert len(ROUTES) >= 20


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path).replace("{key_id}", "1")


@pytest.mark.parametrize(("method", "path", "roles"), ROUTES)
def test_role_matrix(
    client: TestClient,
    keys: dict[str, dict[str, str]],
    method: str,
    path: str,
    roles: tuple[str, ...],
) -> None:
    url = _concrete(path).replace("/v1/keys/x1", "/v1/keys/1")
    no_key = client.request(method, url, json={})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "unauthenticated"
    bad_key = client.request(method, url, json={}, headers={"Authorization": "Bearer nb_x_y"})
    assert bad_key.status_code == 401
    for role, headers in keys.items():
        response = client.request(method, url, json={}, headers=headers)
        if role == "admin" or role in roles:
            assert response.status_code != 403, (role, method, path)
            assert response.status_code < 500, (role, method, path, response.text)
        else:
            assert response.status_code == 403, (role, method, path, response.status_code)
            assert response.json()["error"]["code"] == "forbidden"


def test_keys_are_hashed_and_shown_once(
    client: TestClient, keys: dict[str, dict[str, str]], runtime: Runtime
) -> None:
    created = client.post(
        "/v1/keys", json={"name": "crm", "role": "service"}, headers=keys["admin"]
    )
    assert created.status_code == 201
    secret = created.json()["key"]
    with runtime.session() as session:
        rows = session.exec(select(ApiKey)).all()
    assert all(secret not in (r.key_hash, r.prefix, r.name) for r in rows)
    listed = client.get("/v1/keys", headers=keys["admin"]).json()
    assert all("key" not in k for k in listed)
    assert (
        client.get("/v1/experiences", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 200
    )
    key_id = created.json()["id"]
    assert client.post(f"/v1/keys/{key_id}:revoke", headers=keys["admin"]).status_code == 200
    revoked = client.get("/v1/experiences", headers={"Authorization": f"Bearer {secret}"})
    assert revoked.status_code == 401


def test_bootstrap_admin_key(runtime: Runtime, settings: Settings) -> None:
    bootstrapped = Runtime(
        settings.model_copy(update={"bootstrap_admin_key": "nb_boot_s3cret"}), engine=runtime.engine
    )
    with TestClient(create_app(runtime=bootstrapped)) as client:
        response = client.get("/v1/keys", headers={"Authorization": "Bearer nb_boot_s3cret"})
    assert response.status_code == 200
    assert [k["name"] for k in response.json()] == ["bootstrap-admin"]


def test_bad_key_role(client: TestClient, keys: dict[str, dict[str, Any]]) -> None:
    response = client.post("/v1/keys", json={"name": "x", "role": "god"}, headers=keys["admin"])
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "role"


def test_a_worker_trusts_a_checked_key_for_auth_cache_seconds(
    client: TestClient, keys: dict[str, dict[str, str]], runtime: Runtime, settings: Settings
) -> None:
    runtime.keys.ttl_seconds = 60.0
    created = client.post("/v1/keys", json={"name": "crm", "role": "agent"}, headers=keys["admin"])
    secret = {"Authorization": f"Bearer {created.json()['key']}"}
    assert client.get("/v1/experiences", headers=secret).status_code == 200
    # Revoked through another worker: this one keeps the key until its entry expires.
    other = Runtime(settings, engine=runtime.engine)
    with TestClient(create_app(runtime=other)) as other_client:
        revoked = other_client.post(
            f"/v1/keys/{created.json()['id']}:revoke", headers=keys["admin"]
        )
        assert revoked.status_code == 200
        assert other_client.get("/v1/experiences", headers=secret).status_code == 401
    assert client.get("/v1/experiences", headers=secret).status_code == 200
    runtime.keys.ttl_seconds = 0.0
    runtime.keys.clear()
    assert client.get("/v1/experiences", headers=secret).status_code == 401


def test_unknown_keys_are_not_remembered(
    client: TestClient, keys: dict[str, dict[str, str]], runtime: Runtime
) -> None:
    wrong = {"Authorization": "Bearer nb_testagt_not-the-secret"}
    for _ in range(3):
        assert client.get("/v1/experiences", headers=wrong).status_code == 401
    assert runtime.keys.get("nb_testagt_not-the-secret") is None


def test_keys_never_reach_the_logs(
    client: TestClient,
    keys: dict[str, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
    database_url: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    created = client.post("/v1/keys", json={"name": "crm", "role": "agent"}, headers=keys["admin"])
    secret = created.json()["key"]
    made = CliRunner().invoke(
        cli_app, ["keys", "create", "--role", "agent", "--name", "ivr", "--db", database_url]
    )
    cli_secret = made.stdout.splitlines()[0]
    for key in (secret, cli_secret, ROLE_KEYS["admin"]):
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/experiences", headers=headers).status_code == 200
        assert client.get("/v1/keys", headers=headers).status_code in (200, 403)
    client.get("/v1/experiences", headers={"Authorization": f"Bearer {secret}x"})
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert caplog.records  # the capture saw the requests' logging
    for key in (secret, cli_secret, ROLE_KEYS["admin"]):
        assert key not in logged
        assert key.split("_", 2)[2] not in logged


def test_rate_limit_per_key(runtime: Runtime, keys: dict[str, dict[str, str]]) -> None:
    limited = Runtime(
        runtime.settings.model_copy(update={"rate_limit_per_minute": 5}), engine=runtime.engine
    )
    with TestClient(create_app(runtime=limited)) as client:
        statuses = [
            client.get("/v1/experiences", headers=keys["agent"]).status_code for _ in range(5)
        ]
        assert statuses == [200] * 5
        refused = client.get("/v1/experiences", headers=keys["agent"])
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert "5 requests a minute" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 12
        # Buckets are per key: another key still has its burst.
        assert client.get("/v1/experiences", headers=keys["marketer"]).status_code == 200


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, clock=lambda: now[0])
    assert [limiter.take(1) for _ in range(60)] == [0.0] * 60
    assert limiter.take(1) == pytest.approx(1.0)
    now[0] += 0.5
    assert limiter.take(1) == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take(1) == 0.0
    now[0] += 3600
    assert sum(limiter.take(1) == 0.0 for _ in range(100)) == 60  # the burst is capped
    assert RateLimiter(per_minute=0).take(1) == 0.0
