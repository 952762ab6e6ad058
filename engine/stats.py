"""Cell statistics: decay-scaled counts written by atomic increments, read as numpy arrays.

Write side: every result adds ``2^((t - epoch) / half_life)`` to the weight of its cell (finest
segment x experience x exposure bucket x level) in the same transaction that stores the result, as
``INSERT ... ON CONFLICT DO UPDATE SET weight = weight + excluded.weight``. Additions commute, so
concurrent writers never lose an update and the table always equals a replay of the log.

Read side: ``CellTable`` holds every row as flat arrays; the decayed count of a cell at time ``now``
is ``weight * 2^(-(now - epoch) / half_life)``.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Insert, Table, delete, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from engine.catalog import Catalog
from engine.db import insert_columns, keyset_pages
from engine.models import CellStat, Outcome

if TYPE_CHECKING:
    import numpy as np

EXPOSURE_BUCKETS = 3
"""Buckets of earlier exposures of the same experience: 0, 1, 2 or more."""

CellKey = tuple[str, str, int, str]
"""(finest segment, experience key, exposure bucket, level label)."""


def exposure_bucket(earlier: int) -> int:
    return min(earlier, EXPOSURE_BUCKETS - 1)


def scaled_weight(occurred_at: dt.datetime, *, epoch: dt.datetime, half_life_days: float) -> float:
    """2^((t - epoch) / half_life): the weight a result at ``occurred_at`` adds to its cell."""
    days = (occurred_at - epoch).total_seconds() / 86400.0
    return float(2.0 ** (days / half_life_days))


def decay_factor(now: dt.datetime, *, epoch: dt.datetime, half_life_days: float) -> float:
    """Multiply stored weights by this to get decayed counts at ``now``."""
    days = (now - epoch).total_seconds() / 86400.0
    return float(2.0 ** (-days / half_life_days))


class TripleFacts(NamedTuple):
    """What a stored result contributes to the statistics (a tuple: imports make millions)."""

    segment: str
    experience_key: str
    exposure: int
    level: str
    occurred_at: dt.datetime
    value: float | None
    cost: float | None


Fact = tuple[str, str, int, str, dt.datetime, float | None, float | None]
"""The fields of TripleFacts as a plain tuple (what zipping a batch's columns gives)."""


def increments(
    facts: Iterable[Fact], *, epoch: dt.datetime, half_life_days: float
) -> dict[CellKey, list[float]]:
    """Per-cell sums [weight, value_weight, value_sum, cost_weight, cost_sum] of ``facts``
    (TripleFacts, or plain tuples of its fields).

    The weight of each fact is ``scaled_weight`` (inlined: imports sum millions); ``epoch`` and
    the facts' times are both aware or both naive UTC.
    """
    sums: dict[CellKey, list[float]] = {}
    top = EXPOSURE_BUCKETS - 1
    for segment, experience_key, exposure, level, occurred_at, value, cost in facts:
        w = float(2.0 ** ((occurred_at - epoch).total_seconds() / 86400.0 / half_life_days))
        key = (segment, experience_key, exposure if exposure < top else top, level)
        cell = sums.get(key)
        if cell is None:
            cell = sums[key] = [0.0, 0.0, 0.0, 0.0, 0.0]
        cell[0] += w
        if value is not None:
            cell[1] += w
            cell[2] += w * value
        if cost is not None:
            cell[3] += w
            cell[4] += w * cost
    return sums


_SUMS = ("weight", "value_weight", "value_sum", "cost_weight", "cost_sum")


@functools.cache
def _cell_upsert(dialect_name: str) -> Insert:
    """``INSERT ... ON CONFLICT DO UPDATE SET weight = weight + excluded.weight, ...``: the atomic
    add, built once (insert_columns compiles each statement object once)."""
    table: Table = CellStat.__table__  # type: ignore[attr-defined]
    statement = (postgresql.insert if dialect_name == "postgresql" else sqlite.insert)(table)
    return statement.on_conflict_do_update(
        index_elements=["segment", "experience_key", "exposure_bucket", "level"],
        set_={name: table.c[name] + statement.excluded[name] for name in _SUMS},
    )


def apply_increments(session: Session, sums: Mapping[CellKey, list[float]]) -> None:
    """Atomically add ``sums`` to the stored cells (one upsert statement, executemany)."""
    if not sums:
        return
    # A fixed order keeps concurrent writers taking row locks in the same order (no deadlock).
    keys = sorted(sums)
    segments, experiences, buckets, levels = zip(*keys, strict=True)
    numbers = zip(*(sums[key] for key in keys), strict=True)
    columns: dict[str, Sequence[Any]] = {
        "segment": segments,
        "experience_key": experiences,
        "exposure_bucket": buckets,
        "level": levels,
        **dict(zip(_SUMS, numbers, strict=True)),
    }
    insert_columns(session, _cell_upsert(session.get_bind().dialect.name), columns)


def facts_from_outcomes(catalog: Catalog, outcomes: Iterable[Outcome]) -> Iterable[TripleFacts]:
    for outcome in outcomes:
        yield TripleFacts(
            segment=catalog.finest_segment(outcome.attributes),
            experience_key=outcome.experience_key,
            exposure=outcome.exposure,
            level=outcome.result,
            occurred_at=outcome.occurred_at,
            value=outcome.value,
            cost=outcome.cost,
        )


def replay(
    session: Session, *, catalog: Catalog, chunk: int = 20_000
) -> dict[CellKey, list[float]]:
    """Recompute every cell from the stored log, streamed in id order in constant memory.

    Results an isolated experiment holds back count only once it has released them."""
    total: dict[CellKey, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0.0])
    released = released_experiments(session)
    for batch in keyset_pages(session, Outcome, "id", chunk):
        part = increments(
            facts_from_outcomes(
                catalog, (o for o in batch if o.held_for is None or o.held_for in released)
            ),
            epoch=catalog.epoch,
            half_life_days=catalog.half_life_days,
        )
        for key, values in part.items():
            cell = total[key]
            for i, v in enumerate(values):
                cell[i] += v
    return dict(total)


def released_experiments(session: Session) -> set[str]:
    """Isolated experiments whose held-back results train the cells (they are concluded)."""
    from experiments.models import Experiment  # engine owns the cells; experiments owns this

    rows = session.exec(select(Experiment.key).where(col(Experiment.released_at).is_not(None)))
    return set(rows)


def stored_cells(session: Session) -> dict[CellKey, list[float]]:
    return {
        (row.segment, row.experience_key, row.exposure_bucket, row.level): [
            row.weight,
            row.value_weight,
            row.value_sum,
            row.cost_weight,
            row.cost_sum,
        ]
        for row in session.exec(select(CellStat))
    }


def rebuild_cells(*, session: Session, catalog: Catalog) -> int:
    """Replace the stored cells by a replay of the log (after a change of binning)."""
    sums = replay(session, catalog=catalog)
    session.execute(delete(CellStat))
    apply_increments(session, sums)
    return len(sums)


def scale_cells(session: Session, factor: float) -> None:
    """Multiply every stored weight and sum by ``factor`` (a re-base of the epoch)."""
    table: Table = CellStat.__table__  # type: ignore[attr-defined]
    names = ("weight", "value_weight", "value_sum", "cost_weight", "cost_sum")
    session.execute(update(table).values({name: table.c[name] * factor for name in names}))


def drift(
    stored: Mapping[CellKey, list[float]],
    replayed: Mapping[CellKey, list[float]],
    *,
    rtol: float = 1e-9,
) -> list[dict[str, Any]]:
    """Cells where the stored statistics differ from a replay (beyond float summation order)."""
    import numpy as np  # here, not at the top: `nextbest import` starts faster without numpy

    differences = []
    for key in sorted(set(stored) | set(replayed)):
        a = stored.get(key, [0.0] * 5)
        b = replayed.get(key, [0.0] * 5)
        if not np.allclose(a, b, rtol=rtol, atol=1e-9):
            differences.append({"cell": list(key), "stored": a, "replayed": b})
    return differences


# Read side -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellTable:
    """Every stored cell as flat arrays, all of shape (n_rows,), decayed to ``as_of``.

    counts: decayed result counts; value_weights / value_sums and cost_weights / cost_sums: decayed
    weights and weighted sums of realised values and costs.
    """

    segments: np.ndarray
    experiences: np.ndarray
    buckets: np.ndarray
    levels: np.ndarray
    counts: np.ndarray
    value_weights: np.ndarray
    value_sums: np.ndarray
    cost_weights: np.ndarray
    cost_sums: np.ndarray
    as_of: dt.datetime

    @property
    def size(self) -> int:
        return int(self.counts.shape[0])


def load_cell_table(session: Session, *, catalog: Catalog, now: dt.datetime) -> CellTable:
    import numpy as np  # see drift

    names = (
        "segment",
        "experience_key",
        "exposure_bucket",
        "level",
        "weight",
        "value_weight",
        "value_sum",
        "cost_weight",
        "cost_sum",
    )
    rows = session.execute(sa_select(*(col(getattr(CellStat, n)) for n in names))).all()
    factor = decay_factor(now, epoch=catalog.epoch, half_life_days=catalog.half_life_days)
    columns = list(zip(*rows, strict=True)) if rows else [()] * 9
    numbers = [np.asarray(c, dtype=np.float64) * factor for c in columns[4:]]
    return CellTable(
        segments=np.asarray(columns[0], dtype=object),
        experiences=np.asarray(columns[1], dtype=object),
        buckets=np.asarray(columns[2], dtype=np.int64),
        levels=np.asarray(columns[3], dtype=object),
        counts=numbers[0],
        value_weights=numbers[1],
        value_sums=numbers[2],
        cost_weights=numbers[3],
        cost_sums=numbers[4],
        as_of=now,
    )
