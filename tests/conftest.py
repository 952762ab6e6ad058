"""Fixtures: a real database (SQLite file, or PostgreSQL when NEXTBEST_TEST_DATABASE_URL is set).

On PostgreSQL the suite creates its own database and drops it at the end, because the server
outlives the run. Each test starts from empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, make_url, text
from sqlmodel import SQLModel

from api import create_app
from engine import auth
from engine.config import Settings
from engine.db import make_engine, migrate
from engine.runtime import Runtime

PG_URL = os.environ.get("NEXTBEST_TEST_DATABASE_URL")


@contextmanager
def scratch_database(directory: Path, prefix: str) -> Iterator[str]:
    """A new empty database: a SQLite file in ``directory``, or on the PostgreSQL server of
    NEXTBEST_TEST_DATABASE_URL a database of its own, dropped on exit (the server outlives the
    run)."""
    if not PG_URL:
        yield f"sqlite:///{directory / f'{prefix}.db'}"
        return
    server = make_url(PG_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with scratch_database(tmp_path_factory.mktemp("db"), "nextbest_test") as url:
        yield url


@pytest.fixture(scope="session")
def sql_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def truncate_all(engine: Engine) -> None:
    tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def db(sql_engine: Engine) -> Engine:
    truncate_all(sql_engine)
    return sql_engine


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, seed=7, stats_refresh_seconds=0.0)


@pytest.fixture
def runtime(db: Engine, settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(settings, engine=db)
    yield runtime
    runtime.close(release_engine=False)  # its threads (decision log, rules); the engine is shared


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime)) as test_client:
        yield test_client


ROLE_KEYS = {
    "admin": "nb_testadm_admin-secret",
    "marketer": "nb_testmkt_marketer-secret",
    "agent": "nb_testagt_agent-secret",
    "service": "nb_testsvc_service-secret",
}


@pytest.fixture
def keys(runtime: Runtime) -> dict[str, dict[str, str]]:
    """Authorization headers per role."""
    with runtime.session() as session:
        for role, key in ROLE_KEYS.items():
            auth.ensure_key(session=session, key=key, role=role, name=f"test-{role}")  # type: ignore[arg-type]
        session.commit()
    return {role: {"Authorization": f"Bearer {key}"} for role, key in ROLE_KEYS.items()}


SCALE = {
    "levels": [
        {"label": "churned", "value": 0},
        {"label": "retained", "value": 100},
        {"label": "upgraded", "value": 160},
    ],
    "attribution_days": 30,
    "default_result": "churned",
}
ATTRIBUTES = {
    "attributes": [
        {"name": "plan", "type": "categorical", "levels": ["basic", "plus", "premium"]},
        {"name": "tenure_months", "type": "numeric", "bins": [12, 36]},
        {"name": "monthly_spend", "type": "numeric", "bins": [30, 80]},
        {"name": "fraud_flag", "type": "boolean"},
        {"name": "signup_date", "type": "date", "bins": ["2025-01-01"]},
    ]
}
EXPERIENCES = [
    {"key": "no_offer", "name": "No offer", "cost": 0, "is_control": True},
    {
        "key": "discount_10",
        "name": "10% discount",
        "cost_attribute": "monthly_spend",
        "cost_factor": 0.3,
        "cost_on": ["retained", "upgraded"],
    },
    {"key": "callback_senior", "name": "Senior callback", "cost": 12},
]


@pytest.fixture
def business(client: TestClient, keys: dict[str, dict[str, str]]) -> dict[str, Any]:
    """A small business: outcome scale, attribute specs and three experiences."""
    marketer = keys["marketer"]
    assert client.put("/v1/attributes", json=ATTRIBUTES, headers=marketer).status_code == 200
    assert client.put("/v1/outcome-scale", json=SCALE, headers=marketer).status_code == 200
    for experience in EXPERIENCES:
        response = client.post("/v1/experiences", json=experience, headers=marketer)
        assert response.status_code == 201, response.text
    return {"scale": SCALE, "attributes": ATTRIBUTES, "experiences": EXPERIENCES}


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
