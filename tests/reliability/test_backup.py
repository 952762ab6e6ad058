"""`nextbest backup` / `nextbest restore`: SQLite's online backup API, safe while writes go on."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, func, select
from typer.testing import CliRunner

from cli import app
from engine.db import make_engine
from engine.integrity import verify
from engine.models import Outcome
from tests.conftest import PG_URL
from tests.test_api_triples import event

Headers = dict[str, dict[str, str]]


def _results(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Outcome)).one())


@pytest.mark.skipif(bool(PG_URL), reason="SQLite backups; PostgreSQL uses pg_dump")
def test_backup_while_writing_then_restore(
    client: TestClient, keys: Headers, business: Any, database_url: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    stop = threading.Event()
    posted: list[int] = []

    def write() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            response = client.post(
                "/v1/events", json=event(i, customer_id=f"w-{i}"), headers=keys["service"]
            )
            assert response.status_code == 201
            posted.append(i)
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(posted) < 20:
            threading.Event().wait(0.01)
        backed = runner.invoke(app, ["backup", str(tmp_path / "b.db"), "--db", database_url])
    finally:
        stop.set()
        writer.join()
    assert backed.exit_code == 0, backed.output
    assert "integrity ok" in backed.output
    assert sqlite3.connect(tmp_path / "b.db").execute("PRAGMA integrity_check").fetchone() == (
        "ok",
    )

    refused = runner.invoke(app, ["backup", str(tmp_path / "b.db"), "--db", database_url])
    assert refused.exit_code == 1 and "--force" in refused.output

    target = f"sqlite:///{tmp_path / 'restored.db'}"
    restored = runner.invoke(app, ["restore", str(tmp_path / "b.db"), "--db", target])
    assert restored.exit_code == 0, restored.output
    engine = make_engine(target)
    try:
        copied = _results(engine)
        assert 20 <= copied <= len(posted)
        with Session(engine) as session:
            assert verify(session=session).ok  # the copy is one consistent state
    finally:
        engine.dispose()

    again = runner.invoke(app, ["restore", str(tmp_path / "b.db"), "--db", target])
    assert again.exit_code == 1 and "--force" in again.output
    forced = runner.invoke(app, ["restore", str(tmp_path / "b.db"), "--db", target, "--force"])
    assert forced.exit_code == 0, forced.output


@pytest.mark.skipif(bool(PG_URL), reason="SQLite backups")
def test_restore_refuses_a_damaged_or_foreign_file(tmp_path: Path) -> None:
    runner = CliRunner()
    target = f"sqlite:///{tmp_path / 'target.db'}"
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\x13" * 5000)
    result = runner.invoke(app, ["restore", str(damaged), "--db", target])
    assert result.exit_code == 1
    assert "integrity" in result.output or "not a database" in result.output
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE t (x)")
    result = runner.invoke(app, ["restore", str(foreign), "--db", target])
    assert result.exit_code == 1 and "not a nextbest database" in result.output
    assert not (tmp_path / "target.db").exists()


def test_postgresql_is_explained_not_wrapped(tmp_path: Path) -> None:
    runner = CliRunner()
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    for command in ("backup", "restore"):
        result = runner.invoke(app, [command, str(tmp_path / "x.dump"), "--db", url])
        assert result.exit_code == 2
        assert "pg_dump" in result.output and "pg_restore" in result.output
