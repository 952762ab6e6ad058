"""`nextbest verify`: statistics recomputed from the log, drift reported per cell and repaired."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import delete, update
from sqlmodel import select
from typer.testing import CliRunner

from cli import app
from engine.integrity import verify
from engine.models import CellStat
from engine.runtime import Runtime
from tests.test_api_triples import assert_stats_equal_replay, event

Headers = dict[str, dict[str, str]]


def _key(cell: CellStat) -> tuple[str, str, int, str]:
    return (cell.segment, cell.experience_key, cell.exposure_bucket, cell.level)


def _match(cell: CellStat) -> list[Any]:
    return [
        CellStat.segment == cell.segment,  # type: ignore[arg-type]
        CellStat.experience_key == cell.experience_key,  # type: ignore[arg-type]
        CellStat.exposure_bucket == cell.exposure_bucket,  # type: ignore[arg-type]
        CellStat.level == cell.level,  # type: ignore[arg-type]
    ]


def _logged(client: TestClient, keys: Headers, n: int = 60) -> None:
    response = client.post(
        "/v1/events:batch", json={"events": [event(i) for i in range(n)]}, headers=keys["service"]
    )
    assert response.status_code == 201, response.text


def test_verify_finds_no_drift_on_a_clean_log(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime
) -> None:
    _logged(client, keys)
    with runtime.session() as session:
        report = verify(session=session)
    assert report.ok
    assert report.results == 60
    assert report.cells_stored == report.cells_replayed > 0


def test_verify_reports_corrupted_cells_with_counts_and_repairs_them(
    client: TestClient, keys: Headers, business: Any, runtime: Runtime, database_url: str
) -> None:
    _logged(client, keys)
    with runtime.session() as session:
        cells = sorted(session.exec(select(CellStat)), key=_key)
        doubled, deleted = cells[0], cells[1]
        session.expunge_all()
        session.execute(update(CellStat).where(*_match(doubled)).values(weight=doubled.weight * 2))
        session.execute(delete(CellStat).where(*_match(deleted)))
        session.commit()

    runner = CliRunner()
    found = runner.invoke(app, ["verify", "--db", database_url, "--json"])
    assert found.exit_code == 1, found.output
    report = json.loads(found.output)
    assert report["drifted_cells"] == 2
    by_cell = {(d["segment"], d["experience"], d["level"]): d for d in report["drift"]}
    first = by_cell[(doubled.segment, doubled.experience_key, doubled.level)]
    assert first["stored"]["weight"] == doubled.weight * 2
    assert first["replayed"]["weight"] == doubled.weight
    assert first["stored_count"] == 2 * first["replayed_count"] > 0
    second = by_cell[(deleted.segment, deleted.experience_key, deleted.level)]
    assert second["stored_count"] == 0 and second["replayed_count"] > 0

    repaired = runner.invoke(app, ["verify", "--db", database_url, "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert "2 drifted" in repaired.output and "repaired 2 cells" in repaired.output
    assert_stats_equal_replay(runtime)
    again = runner.invoke(app, ["verify", "--db", database_url])
    assert again.exit_code == 0 and "0 drifted" in again.output
