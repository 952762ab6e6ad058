"""Decay of evidence: the half-life is configurable, the epoch re-bases, counts stay exact."""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from api import create_app
from engine import stats
from engine.catalog import REBASE_AFTER_HALF_LIVES, engine_state, load_catalog
from engine.models import AuditEvent, CellStat, Outcome, utcnow
from engine.runtime import Runtime
from engine.settle import maintain
from tests.engine.test_settle import age
from tests.test_api_decisions import decide
from tests.test_api_triples import assert_stats_equal_replay

Headers = dict[str, dict[str, str]]


def post_history(client: TestClient, keys: Headers, days_ago: list[float]) -> None:
    now = utcnow()
    events = [
        {
            "customer_id": f"c-{i % 7}",
            "experience": ["no_offer", "discount_10"][i % 2],
            "result": ["churned", "retained", "upgraded"][i % 3],
            "occurred_at": (now - dt.timedelta(days=d)).isoformat(),
            "attributes": {"plan": "plus", "monthly_spend": 40 + i},
        }
        for i, d in enumerate(days_ago)
    ]
    response = client.post("/v1/events:batch", json={"events": events}, headers=keys["service"])
    assert response.status_code == 201, response.text


def decayed_total(runtime: Runtime, now: dt.datetime) -> float:
    with runtime.session() as session:
        table = stats.load_cell_table(session, catalog=load_catalog(session), now=now)
    return float(table.counts.sum())


def test_put_decay_rebuilds_the_cells_with_the_new_half_life(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    ages = [0.0, 10.0, 30.0, 60.0, 90.0, 180.0]
    post_history(client, keys, ages)
    now = utcnow()
    assert decayed_total(runtime, now) == pytest.approx(sum(0.5 ** (a / 90) for a in ages))
    response = client.put("/v1/decay", json={"half_life_days": 30}, headers=keys["marketer"])
    assert response.status_code == 200, response.text
    assert response.json()["half_life_days"] == 30
    assert client.get("/v1/decay", headers=keys["agent"]).json()["half_life_days"] == 30
    assert decayed_total(runtime, now) == pytest.approx(sum(0.5 ** (a / 30) for a in ages))
    assert_stats_equal_replay(runtime)
    with runtime.session() as session:
        audit = session.exec(select(AuditEvent).where(AuditEvent.entity == "decay")).one()
    assert audit.before["half_life_days"] == 90 and audit.after["half_life_days"] == 30


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"half_life_days": 0}, "half_life_days"),
        ({"half_life_days": -3}, "half_life_days"),
        ({"half_life_days": "soon"}, "half_life_days"),
        ({"half_life_days": 1e9}, "half_life_days"),
        ({}, "half_life_days"),
        ({"half_life_days": 30, "epoch": "2020-01-01"}, "epoch"),
    ],
)
def test_put_decay_rejects_bad_input_and_changes_nothing(
    body: dict[str, Any], field: str, client: TestClient, keys: Headers, business: Any
) -> None:
    response = client.put("/v1/decay", json=body, headers=keys["marketer"])
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert client.get("/v1/decay", headers=keys["marketer"]).json()["half_life_days"] == 90


def test_rebase_moves_the_epoch_without_changing_decayed_counts(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    post_history(client, keys, [1.0, 5.0, 20.0])
    with runtime.session() as session:
        epoch = engine_state(session).epoch
    # Far enough ahead that the weights have grown past the re-base threshold.
    later = epoch + dt.timedelta(days=90 * (REBASE_AFTER_HALF_LIVES + 1))
    before = decayed_total(runtime, later)
    assert maintain(runtime.engine, now=utcnow()).rebased is False
    assert maintain(runtime.engine, now=later).rebased is True
    with runtime.session() as session:
        assert engine_state(session).epoch == later.replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        weights = [row.weight for row in session.exec(select(CellStat))]
    assert max(weights) < 1.0  # re-scaled: the evidence is old at the new epoch
    assert decayed_total(runtime, later) == pytest.approx(before, rel=1e-12)
    assert math.isfinite(before) and before > 0
    assert_stats_equal_replay(runtime)


def test_workers_settle_overdue_decisions_in_the_background(
    runtime: Runtime, keys: Headers, business: Any
) -> None:
    runtime.settings.maintenance_seconds = 0.05
    with TestClient(create_app(runtime=runtime)) as client:
        old = decide(client, keys).json()
        age(runtime, old["decision_id"], 31)
        deadline = utcnow() + dt.timedelta(seconds=20)
        settled = None
        while settled is None and utcnow() < deadline:
            with runtime.session() as session:
                settled = session.exec(
                    select(Outcome).where(Outcome.decision_id == old["decision_id"])
                ).first()
            time.sleep(0.05)
    assert settled is not None
    assert (settled.source, settled.result) == ("settled", "churned")
