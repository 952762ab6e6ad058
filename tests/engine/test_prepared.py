"""Statements run on raw DBAPI cursors store and read what SQLAlchemy would, and fail with
SQLAlchemy's exceptions."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, bindparam, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from engine import prepared
from engine.db import PING_AFTER_IDLE_SECONDS, WalCheckpointer, make_engine
from engine.models import CellStat, Customer

CUSTOMERS = Customer.__table__  # type: ignore[attr-defined]
COLUMNS = ("id", "name", "attributes", "created_at", "updated_at")
WHEN = dt.datetime(2026, 11, 2, 9, 30, 15, 123456, tzinfo=dt.UTC)


def row(customer_id: str) -> dict[str, object]:
    return {
        "id": customer_id,
        "name": None,
        "attributes": {"plan": "basic", "tenure_months": 7.0, "paperless": True},
        "created_at": WHEN,
        "updated_at": WHEN.astimezone(dt.timezone(dt.timedelta(hours=2))),
    }


def test_insert_and_read_round_trip(db: Engine) -> None:
    add = prepared.Prepared.compile(insert(CUSTOMERS), db, COLUMNS)
    with prepared.cursor(db, write=True) as cursor:
        cursor.executemany(add.sql, [add.parameters(row("c-1")), add.parameters(row("c-2"))])
    query = select(
        CUSTOMERS.c.attributes, CUSTOMERS.c.updated_at, CUSTOMERS.c.id, CellStat.weight
    ).where(CUSTOMERS.c.id == bindparam("customer_id"))
    query = query.outerjoin_from(CUSTOMERS, CellStat, CellStat.segment == CUSTOMERS.c.id)
    read = prepared.Prepared.compile(query, db)
    with prepared.cursor(db, write=False) as cursor:
        cursor.execute(read.sql, read.parameters({"customer_id": "c-2"}))
        rows = read.fetch(cursor)
    with db.connect() as connection:
        through_sqlalchemy = connection.execute(query, {"customer_id": "c-2"}).all()
    assert rows == [tuple(r) for r in through_sqlalchemy]
    assert rows[0][0] == row("c-2")["attributes"]
    assert rows[0][1] == WHEN


def test_read_all_answers_each_query_as_a_read_of_its_own(db: Engine) -> None:
    """Several reads in one round trip (a pipeline on PostgreSQL) give each its own rows, and a
    failing one raises SQLAlchemy's error and leaves the pooled connection usable."""
    add = prepared.Prepared.compile(insert(CUSTOMERS), db, COLUMNS)
    with prepared.cursor(db, write=True) as cursor:
        cursor.executemany(add.sql, [add.parameters(row(f"c-{i}")) for i in range(3)])
    by_id = prepared.Prepared.compile(
        select(CUSTOMERS.c.id, CUSTOMERS.c.created_at).where(
            CUSTOMERS.c.id == bindparam("customer_id")
        ),
        db,
    )
    ids = ["c-2", "c-9", "c-0"]
    queries = [(by_id, by_id.parameters({"customer_id": i})) for i in ids]
    assert prepared.read_all(db, queries) == [[("c-2", WHEN)], [], [("c-0", WHEN)]]
    assert prepared.read_all(db, queries[:1]) == [[("c-2", WHEN)]]
    broken = prepared.Prepared.compile(text("SELECT no_such_column FROM customers"), db)
    with pytest.raises(DBAPIError):
        prepared.read_all(db, [queries[0], (broken, broken.parameters({}))])
    assert prepared.read_all(db, queries) == [[("c-2", WHEN)], [], [("c-0", WHEN)]]


def test_a_failed_transaction_rolls_back_and_raises_sqlalchemy_errors(db: Engine) -> None:
    add = prepared.Prepared.compile(insert(CUSTOMERS), db, COLUMNS)

    def twice() -> None:
        with prepared.cursor(db, write=True) as cursor:
            cursor.execute(add.sql, add.parameters(row("c-1")))
            cursor.execute(add.sql, add.parameters(row("c-1")))

    with pytest.raises(IntegrityError):
        twice()
    with db.connect() as connection:
        assert connection.execute(select(CUSTOMERS.c.id)).all() == []
    with prepared.cursor(db, write=True) as cursor:  # the connection went back clean
        cursor.execute(add.sql, add.parameters(row("c-1")))
    with db.connect() as connection:
        assert connection.execute(select(CUSTOMERS.c.id)).scalars().all() == ["c-1"]


def test_wal_checkpointer(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/wal.db")
    checkpointer = WalCheckpointer(engine, interval=0.01)
    checkpointer.start()
    try:
        with engine.connect() as connection:
            setting = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert setting == 0
        checkpointer.checkpoint()
    finally:
        checkpointer.stop()
        engine.dispose()
    fresh = make_engine(f"sqlite:///{tmp_path}/wal.db")
    with fresh.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    fresh.dispose()


def test_an_idle_postgresql_connection_is_pinged_and_replaced_when_dead(db: Engine) -> None:
    if db.dialect.name != "postgresql":
        pytest.skip("PostgreSQL pool behaviour")
    engine = make_engine(db.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with db.connect() as admin:
        admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
    time.sleep(PING_AFTER_IDLE_SECONDS + 0.1)
    with prepared.cursor(engine, write=False) as cursor:  # pinged, found dead, replaced
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid
    engine.dispose()
