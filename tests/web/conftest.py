"""The consoles served in-process (TestClient) over a small demo business, seeded once per
test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api import create_app
from engine.config import Settings
from engine.demo import seed_demo
from engine.runtime import Runtime
from tests.conftest import truncate_all


@pytest.fixture(scope="module")
def demo(sql_engine: Engine) -> Engine:
    """A small demo business, seeded once for this module (tests here add to it, never rely on
    what another test added)."""
    truncate_all(sql_engine)
    seed_demo(engine=sql_engine, n_customers=200, n_triples=2000, decisions=60, agent_decisions=60)
    return sql_engine


@pytest.fixture
def runtime(demo: Engine, database_url: str) -> Runtime:
    return Runtime(Settings(database_url=database_url, seed=3, maintenance_seconds=0), engine=demo)


@pytest.fixture
def web(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime=runtime)) as client:
        yield client
