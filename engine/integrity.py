"""Verify that the cell statistics equal a replay of the result log, and repair them if not.

The statistics are a cache of the log: every stored result adds its decay-scaled weight to one
cell in the same transaction (engine.stats). They can only drift from the log through something
outside the service (a hand-edited row, a restored backup of one table, a bug). ``verify``
recomputes every cell from the log and lists the cells that differ, with their decayed counts so a
person can judge the size of the difference; ``repair=True`` replaces the cells by the replay.

While it runs it holds the lock every writer of statistics takes (an exclusive lock on the engine
state row on PostgreSQL; BEGIN IMMEDIATE on SQLite), so the log and the cells it compares are one
consistent state even on a live service: writers of results wait for it, decisions do not.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, func, select

from engine import stats
from engine.catalog import engine_state, load_catalog
from engine.models import EngineState, Outcome, utcnow

FIELDS = ("weight", "value_weight", "value_sum", "cost_weight", "cost_sum")


@dataclass(frozen=True)
class CellDrift:
    """One cell whose stored statistics differ from the replay; counts are decayed to ``as_of``."""

    segment: str
    experience: str
    exposure_bucket: int
    level: str
    stored_count: float
    replayed_count: float
    stored: dict[str, float]
    replayed: dict[str, float]


@dataclass(frozen=True)
class VerifyReport:
    results: int
    cells_stored: int
    cells_replayed: int
    as_of: dt.datetime
    drift: list[CellDrift] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.drift

    def as_dict(self) -> dict[str, Any]:
        return {
            "results": self.results,
            "cells_stored": self.cells_stored,
            "cells_replayed": self.cells_replayed,
            "as_of": self.as_of.isoformat(),
            "drifted_cells": len(self.drift),
            "repaired": self.repaired,
            "drift": [cell.__dict__ for cell in self.drift],
        }


def lock_statistics(session: Session) -> None:
    """Hold every writer of statistics until this transaction ends.

    Writers take a share lock on the engine state row (catalog.current_catalog) before they add to
    a cell; an exclusive row lock waits for those in flight and keeps new ones out. On SQLite the
    session's BEGIN IMMEDIATE is that lock already, taken by any statement.
    """
    engine_state(session)
    statement = select(EngineState.catalog_version).where(col(EngineState.id) == 1)
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update()
    session.exec(statement).first()


def verify(
    *, session: Session, repair: bool = False, now: dt.datetime | None = None
) -> VerifyReport:
    """Compare every stored cell with a replay of the log; with ``repair``, rebuild the cells.

    The caller commits (a repair) or rolls back. Cells are compared with a relative tolerance of
    1e-9: the replay adds the same float weights in another order than the live increments did.
    """
    lock_statistics(session)
    catalog = load_catalog(session)
    as_of = now or utcnow()
    factor = stats.decay_factor(as_of, epoch=catalog.epoch, half_life_days=catalog.half_life_days)
    replayed = stats.replay(session, catalog=catalog)
    stored = stats.stored_cells(session)
    cells = []
    for difference in stats.drift(stored, replayed):
        segment, experience, bucket, level = difference["cell"]
        a, b = difference["stored"], difference["replayed"]
        cells.append(
            CellDrift(
                segment=segment,
                experience=experience,
                exposure_bucket=int(bucket),
                level=level,
                stored_count=a[0] * factor,
                replayed_count=b[0] * factor,
                stored=dict(zip(FIELDS, a, strict=True)),
                replayed=dict(zip(FIELDS, b, strict=True)),
            )
        )
    results = session.exec(select(func.count()).select_from(Outcome)).one()
    if repair and cells:
        stats.rebuild_cells(session=session, catalog=catalog)
    return VerifyReport(
        results=int(results),
        cells_stored=len(stored),
        cells_replayed=len(replayed),
        as_of=as_of,
        drift=cells,
        repaired=repair and bool(cells),
    )


__all__ = ["CellDrift", "VerifyReport", "lock_statistics", "verify"]
