"""Decisions whose outcome never arrives settle to the default result after the window."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import select
from typer.testing import CliRunner

from cli import app
from engine.models import Decision, Outcome
from engine.runtime import Runtime
from tests.test_api_decisions import decide
from tests.test_api_triples import assert_stats_equal_replay

Headers = dict[str, dict[str, str]]


def age(runtime: Runtime, decision_id: str, days: float) -> None:
    """Move a decision's time back (the test's stand-in for waiting ``days``)."""
    with runtime.session() as session:
        decision = session.get(Decision, decision_id)
        assert decision is not None
        session.execute(
            update(Decision)
            .where(Decision.id == decision_id)  # type: ignore[arg-type]
            .values(created_at=decision.created_at - dt.timedelta(days=days))
        )
        session.commit()


def test_settle_records_the_default_result_once(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime, database_url: str
) -> None:
    old = decide(client, keys).json()
    overridden = decide(client, keys).json()
    fresh = decide(client, keys).json()
    answered = decide(client, keys).json()
    client.post(
        f"/v1/decisions/{overridden['decision_id']}/override",
        json={"experience": "callback_senior", "note": "asked for a call"},
        headers=keys["agent"],
    )
    client.post(
        "/v1/outcomes",
        json={"decision_id": answered["decision_id"], "result": "upgraded"},
        headers=keys["agent"],
    )
    for decision in (old, overridden, answered):
        age(runtime, decision["decision_id"], 31)  # the scale's window is 30 days
    result = CliRunner().invoke(app, ["settle", "--db", database_url])
    assert result.exit_code == 0, result.output
    assert "settled 2 decisions" in result.stdout
    with runtime.session() as session:
        outcomes = {o.decision_id: o for o in session.exec(select(Outcome))}
    assert outcomes[old["decision_id"]].result == "churned"
    assert outcomes[old["decision_id"]].source == "settled"
    assert outcomes[overridden["decision_id"]].experience_key == "callback_senior"
    assert outcomes[answered["decision_id"]].result == "upgraded"
    assert fresh["decision_id"] not in outcomes
    again = CliRunner().invoke(app, ["settle", "--db", database_url])
    assert "settled 0 decisions" in again.stdout
    late = client.post(
        "/v1/outcomes",
        json={"decision_id": old["decision_id"], "result": "retained"},
        headers=keys["agent"],
    )
    assert late.status_code == 409
    assert_stats_equal_replay(runtime)
