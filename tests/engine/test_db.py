"""engine.db: insert_columns stores on SQLite exactly what SQLAlchemy's own binding stores."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import Table, insert, text
from sqlmodel import Session, SQLModel

from engine.db import insert_columns, make_engine
from engine.models import Customer

CUSTOMERS: Table = Customer.__table__  # type: ignore[attr-defined]
MOMENT = dt.datetime(2026, 10, 1, 8, 30, 0, 120, tzinfo=dt.UTC)
ATTRIBUTES = {"plan": "plus", "tenure_months": 14.0, "fraud_flag": False, "note": "café"}


@pytest.mark.parametrize(
    "given",
    [
        MOMENT,
        MOMENT.astimezone(dt.timezone(dt.timedelta(hours=2))),
        MOMENT.replace(tzinfo=None),  # naive: UTC
        "2026-10-01 08:30:00.000120",  # the stored text itself
        MOMENT.replace(microsecond=0),
    ],
)
def test_insert_columns_stores_what_sqlalchemy_stores(given: Any) -> None:
    engine = make_engine("sqlite://")
    SQLModel.metadata.create_all(engine, tables=[CUSTOMERS])
    aware = (
        dt.datetime.fromisoformat(given).replace(tzinfo=dt.UTC)
        if isinstance(given, str)
        else given
        if given.tzinfo
        else given.replace(tzinfo=dt.UTC)
    )
    shared = dict(ATTRIBUTES)
    with Session(engine) as session:
        session.execute(
            insert(CUSTOMERS),
            [
                {
                    "id": "a",
                    "name": None,
                    "attributes": shared,
                    "created_at": aware,
                    "updated_at": aware,
                },
                {
                    "id": "b",
                    "name": "B",
                    "attributes": {},
                    "created_at": aware,
                    "updated_at": aware,
                },
            ],
        )
        insert_columns(
            session,
            insert(CUSTOMERS),
            {
                "id": ["c", "d"],
                "name": [None, "B"],
                "attributes": [shared, {}],
                "created_at": [given, given],
                "updated_at": [given, given],
            },
        )
        stored = session.execute(
            text("SELECT id, name, attributes, created_at, updated_at FROM customers ORDER BY id")
        ).all()
    assert [tuple(row[1:]) for row in stored[:2]] == [tuple(row[1:]) for row in stored[2:]]
    assert stored[0][3] == MOMENT.replace(microsecond=aware.microsecond).strftime(
        "%Y-%m-%d %H:%M:%S.%f"
    )
