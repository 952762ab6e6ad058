"""Triple logging: validate customer-experience-result triples and store them with their statistics.

One code path serves ``POST /v1/events``, ``POST /v1/events:batch``, the CSV import and the
outcomes of decisions: customers are created or read, exposure counts are taken by atomic
increments, the results are inserted and the cell statistics are incremented, all in the caller's
transaction, so a batch is stored whole or not at all.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Insert, Table
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, func, insert, select

from engine import metrics, stats
from engine.catalog import Catalog, current_catalog
from engine.customers import clean_attributes
from engine.db import add_exposures, insert_columns
from engine.errors import Conflict, InvalidInput
from engine.models import Customer, Outcome, utcnow

EVENT_FIELDS = (
    "customer_id",
    "experience",
    "result",
    "occurred_at",
    "value",
    "cost",
    "attributes",
    "idempotency_key",
)
FUTURE_TOLERANCE = dt.timedelta(days=1)
CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Triple:
    """A validated result ready to store."""

    customer_id: str
    experience_key: str
    result: str
    occurred_at: dt.datetime
    value: float | None
    cost: float | None
    attributes: Mapping[str, Any]
    idempotency_key: str | None = None
    decision_id: str | None = None
    source: str = "event"
    request_hash: str | None = None
    held_for: str | None = None
    """An isolated experiment's key: stored, but kept out of the cells until it concludes."""


TripleRow = tuple[Any, ...]
"""A triple as a plain tuple: the fields of Triple in order, ``occurred_at`` as the text SQLite
stores (``time_text``: naive UTC, ``2026-10-01 08:30:00.000000``).

Imports spool millions of them and ``store_rows`` stores them without building a Triple for
each: builtin types only, so the spool is marshal (four times faster than pickling datetimes),
and the time goes into SQLite as it is.
"""


def time_text(moment: dt.datetime) -> str:
    """An aware time as the text a TripleRow holds (naive UTC, microseconds always given)."""
    if moment.tzinfo is not dt.UTC:
        moment = moment.astimezone(dt.UTC)
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def spooled_triple(triple: Triple) -> TripleRow:
    """The triple as a TripleRow; ``unspooled_triple`` rebuilds it."""
    return (
        triple.customer_id,
        triple.experience_key,
        triple.result,
        time_text(triple.occurred_at),
        triple.value,
        triple.cost,
        triple.attributes,
        triple.idempotency_key,
        triple.decision_id,
        triple.source,
        triple.request_hash,
        triple.held_for,
    )


def unspooled_triple(fields: TripleRow) -> Triple:
    return Triple(fields[0], fields[1], fields[2], _aware_time(fields[3]), *fields[4:])


def _aware_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


# Positions in a TripleRow.
_CUSTOMER, _EXPERIENCE, _ATTRIBUTES, _KEY, _SOURCE, _HASH, _HELD_FOR = 0, 1, 6, 7, 9, 10, 11


@dataclass(frozen=True)
class StoredTriple:
    """A stored result as the API reports it (a light record: batches store thousands)."""

    id: int
    decision_id: str | None
    customer_id: str
    experience_key: str
    result: str
    value: float | None
    cost: float | None
    occurred_at: dt.datetime
    recorded_at: dt.datetime
    exposure: int
    idempotency_key: str | None
    replayed: bool = False
    """True when an idempotency key matched a result stored before: nothing new was stored."""

    @classmethod
    def of(cls, row: Outcome, *, replayed: bool = False) -> StoredTriple:
        fields = {
            name: getattr(row, name) for name in cls.__dataclass_fields__ if name != "replayed"
        }
        return cls(**fields, replayed=replayed)


def parse_event(catalog: Catalog, raw: Mapping[str, Any], *, now: dt.datetime) -> Triple:
    """Validate one raw event (JSON object or CSV row); errors name the field."""
    unknown = sorted(set(raw) - set(EVENT_FIELDS))
    if unknown:
        raise InvalidInput(
            f"unknown field {unknown[0]!r}; fields: {', '.join(EVENT_FIELDS)}", field=unknown[0]
        )
    customer_id = _text(raw, "customer_id", 128)
    if any(c.isspace() or c == "/" for c in customer_id):
        raise InvalidInput("customer_id must not contain spaces or '/'", field="customer_id")
    experience = _text(raw, "experience", 64)
    catalog.experience(experience)
    result = _text(raw, "result", 64)
    catalog.result_index(result)
    occurred_at = parse_time(raw.get("occurred_at"), field="occurred_at")
    if occurred_at > now + FUTURE_TOLERANCE:
        raise InvalidInput(
            f"occurred_at {occurred_at.isoformat()} is in the future", field="occurred_at"
        )
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise InvalidInput("attributes must be an object", field="attributes")
    key = raw.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200):
        raise InvalidInput(
            "idempotency_key must be a string of 1 to 200 characters", field="idempotency_key"
        )
    return Triple(
        customer_id=customer_id,
        experience_key=experience,
        result=result,
        occurred_at=occurred_at,
        value=_money(raw, "value"),
        cost=_money(raw, "cost"),
        attributes=clean_attributes(catalog, attributes),
        idempotency_key=key or None,
    )


def _text(raw: Mapping[str, Any], name: str, max_length: int) -> str:
    value = raw.get(name)
    if value is None or value == "":
        raise InvalidInput(f"{name} is required", field=name)
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {value!r}", field=name)
    if len(value) > max_length:
        raise InvalidInput(f"{name} is longer than {max_length} characters", field=name)
    return value


def _money(raw: Mapping[str, Any], name: str) -> float | None:
    value = raw.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not -1e12 <= number <= 1e12:
        raise InvalidInput(f"{name} must be a finite number, got {value!r}", field=name)
    return number


def parse_time(value: Any, *, field: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(
                f"{field} must be an ISO 8601 time such as 2026-10-01T10:00:00Z, got {value!r}",
                field=field,
            ) from None
    else:
        raise InvalidInput(f"{field} is required (ISO 8601 with a time zone)", field=field)
    if moment.tzinfo is None:
        raise InvalidInput(f"{field} needs a time zone, e.g. 2026-10-01T10:00:00Z", field=field)
    return moment.astimezone(dt.UTC)


def request_hash(triple: Triple) -> str:
    body = [
        triple.customer_id,
        triple.experience_key,
        triple.result,
        triple.occurred_at.isoformat(),
        triple.value,
        triple.cost,
        sorted(triple.attributes.items()),
        triple.decision_id,
    ]
    return hashlib.sha256(json.dumps(body, default=str).encode()).hexdigest()[:32]


def store_triples(
    session: Session, *, catalog: Catalog, triples: Sequence[Triple], report: bool = True
) -> list[StoredTriple]:
    """Store ``triples`` with their exposures and cell statistics in the caller's transaction.

    Triples whose idempotency key is stored already with the same content are not stored again
    (the stored outcome is returned in their place); a key stored with other content is a 409.
    With ``report=False`` (bulk imports) the new ids are not read back and the list is empty.
    """
    rows = [
        spooled_triple(
            replace(t, request_hash=request_hash(t))
            if t.idempotency_key is not None and t.request_hash is None
            else t
        )
        for t in triples
    ]
    return store_rows(session, catalog=catalog, rows=rows, report=report)


def store_rows(
    session: Session, *, catalog: Catalog, rows: Sequence[TripleRow], report: bool = False
) -> list[StoredTriple]:
    """``store_triples`` for triples as TripleRows (what an import spools), in one transaction.

    Per batch, not per row: the known customers are read and the new ones inserted, the exposure
    counts of the batch's (customer, experience) pairs are added atomically, the results are
    inserted with one executemany, and the cells they change get one atomic add each.
    """
    if not rows:
        return []
    catalog = current_catalog(session, catalog)
    if any(row[_KEY] is not None and row[_HASH] is None for row in rows):
        rows = [
            (*row[:_HASH], request_hash(unspooled_triple(row)), *row[_HASH + 1 :])
            if row[_KEY] is not None and row[_HASH] is None
            else row
            for row in rows
        ]
    replayed = _replayed(session, rows)
    fresh = _dedupe_keys([r for r in rows if r[_KEY] not in replayed] if replayed else rows)
    stored: list[StoredTriple] = []
    if fresh:
        # Column by column: zip and map run over a batch's columns without a Python-level loop.
        columns: dict[str, Sequence[Any]] = dict(
            zip(_OUTCOME_COLUMNS, zip(*fresh, strict=True), strict=True)
        )
        customer_ids, experience_keys = columns["customer_id"], columns["experience_key"]
        snapshots = _customers(session, catalog, customer_ids, columns["attributes"])
        exposures = _exposures(session, customer_ids, experience_keys)
        now = utcnow()
        columns.update(attributes=snapshots, exposure=exposures, recorded_at=[now] * len(fresh))
        ids = _insert_outcomes(session, columns, report=report)
        _add_to_cells(session, catalog, columns)
        for source, n in Counter(columns["source"]).items():
            metrics.count_triples(source, n)
        if report:
            stored = [
                StoredTriple(
                    id=i,
                    decision_id=decision_id,
                    customer_id=customer_id,
                    experience_key=experience_key,
                    result=result,
                    value=value,
                    cost=cost,
                    occurred_at=_aware_time(occurred_at),
                    recorded_at=now,
                    exposure=exposure,
                    idempotency_key=key,
                )
                for i, exposure, (
                    customer_id,
                    experience_key,
                    result,
                    occurred_at,
                    value,
                    cost,
                    _,
                    key,
                    decision_id,
                    *_,
                ) in zip(ids, exposures, fresh, strict=True)
            ]
    if not report:
        return []
    results: list[StoredTriple] = []
    by_key = {key: StoredTriple.of(row, replayed=True) for key, row in replayed.items()}
    fresh_rows = iter(stored)
    for row in rows:
        key = row[_KEY]
        if key is not None and key in by_key:
            results.append(by_key[key])
            continue
        result = next(fresh_rows)
        results.append(result)
        if key is not None:
            by_key[key] = result
    return results


_OUTCOME_COLUMNS = (
    "customer_id",
    "experience_key",
    "result",
    "occurred_at",
    "value",
    "cost",
    "attributes",
    "idempotency_key",
    "decision_id",
    "source",
    "request_hash",
    "held_for",
)
"""The columns of the outcomes table that a TripleRow fills, in its order."""


@functools.cache
def _outcome_insert(returning: bool) -> Insert:
    """The INSERT of results, built once (insert_columns compiles each statement object once)."""
    table: Table = Outcome.__table__  # type: ignore[attr-defined]
    if returning:
        return insert(table).returning(table.c.id, sort_by_parameter_order=True)
    return insert(table)


def _insert_outcomes(
    session: Session, columns: dict[str, Sequence[Any]], *, report: bool
) -> Sequence[int]:
    """Insert result rows given column by column and return their ids in row order (none
    without ``report``).

    PostgreSQL batches INSERT ... RETURNING. SQLite would run RETURNING one row at a time, so it
    inserts with executemany and reads the new ids back: the transaction holds the database's
    write lock from BEGIN IMMEDIATE (engine.db), so the ids after the previous maximum are ours.
    """
    table: Table = Outcome.__table__  # type: ignore[attr-defined]
    if not report:
        insert_columns(session, _outcome_insert(False), columns)
        return []
    size = len(columns["customer_id"])
    if session.get_bind().dialect.name == "postgresql":
        aware = {**columns, "occurred_at": list(map(_aware_time, columns["occurred_at"]))}
        values = [dict(zip(aware, row, strict=True)) for row in zip(*aware.values(), strict=True)]
        return session.execute(_outcome_insert(True), values).scalars().all()
    before = session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    insert_columns(session, _outcome_insert(False), columns)
    ids = session.execute(select(table.c.id).where(table.c.id > before).order_by(table.c.id))
    found = ids.scalars().all()
    if len(found) != size:
        raise RuntimeError("SQLite ids were not assigned in one block; is BEGIN IMMEDIATE off?")
    return found


def _add_to_cells(session: Session, catalog: Catalog, columns: dict[str, Sequence[Any]]) -> None:
    """Add the results to their cells (those an isolated experiment holds back wait)."""
    segment_of: dict[int, str] = {}  # by snapshot: an import's rows share their attribute dicts
    segments = []
    for snapshot in columns["attributes"]:
        segment = segment_of.get(id(snapshot))
        if segment is None:
            segment = segment_of[id(snapshot)] = catalog.finest_segment(snapshot)
        segments.append(segment)
    facts: Iterable[stats.Fact] = zip(
        segments,
        columns["experience_key"],
        columns["exposure"],
        columns["result"],
        map(dt.datetime.fromisoformat, columns["occurred_at"]),  # naive UTC, as is this epoch
        columns["value"],
        columns["cost"],
        strict=True,
    )
    held = columns["held_for"]
    if any(h is not None for h in held):
        facts = (fact for fact, h in zip(facts, held, strict=True) if h is None)
    epoch = catalog.epoch.astimezone(dt.UTC).replace(tzinfo=None)
    sums = stats.increments(facts, epoch=epoch, half_life_days=catalog.half_life_days)
    stats.apply_increments(session, sums)


def _replayed(session: Session, rows: Sequence[TripleRow]) -> dict[str, Outcome]:
    keys = [row[_KEY] for row in rows if row[_KEY]]
    if not keys:
        return {}
    existing: dict[str, Outcome] = {}
    for part in _chunks(keys):
        for found in session.exec(select(Outcome).where(col(Outcome.idempotency_key).in_(part))):
            assert found.idempotency_key is not None
            existing[found.idempotency_key] = found
    for row in rows:
        stored = existing.get(row[_KEY] or "")
        if stored is not None and stored.request_hash != row[_HASH]:
            raise Conflict(
                f"idempotency_key {row[_KEY]!r} was used before with a different body",
                field="idempotency_key",
            )
    return existing


def _dedupe_keys(rows: Sequence[TripleRow]) -> list[TripleRow]:
    seen: dict[str, str | None] = {}
    out = []
    for row in rows:
        key = row[_KEY]
        if key is None:
            out.append(row)
            continue
        if key in seen:
            if seen[key] != row[_HASH]:
                raise Conflict(
                    f"idempotency_key {key!r} repeats with a different body",
                    field="idempotency_key",
                )
            continue
        seen[key] = row[_HASH]
        out.append(row)
    return out


@functools.cache
def _customer_insert(dialect_name: str) -> Insert:
    table: Table = Customer.__table__  # type: ignore[attr-defined]
    statement = (postgresql.insert if dialect_name == "postgresql" else sqlite.insert)(table)
    return statement.on_conflict_do_nothing(index_elements=["id"])


def _customers(
    session: Session,
    catalog: Catalog,
    customer_ids: Sequence[str],
    attributes: Sequence[Mapping[str, Any]],
) -> list[Mapping[str, Any]]:
    """Attribute snapshots: the stored profile with the triple's attributes over it.

    Unknown customers are created with the attributes of their first triple.
    """
    ids = list(dict.fromkeys(customer_ids))
    # A triple that carries every declared attribute is its own snapshot: for its customer only
    # existence matters, and reading ids skips decoding the stored profile.
    declared = len(catalog.specs)
    partial = {
        cid for cid, given in zip(customer_ids, attributes, strict=True) if len(given) < declared
    }
    profiles: dict[str, Mapping[str, Any]] = {}
    table: Table = Customer.__table__  # type: ignore[attr-defined]
    connection = session.connection()  # Core rows: the ORM's result loading costs more here
    for part in _chunks(ids):
        wanted = [c for c in part if c in partial]
        if wanted:
            for cid, stored in connection.execute(
                sa_select(table.c.id, table.c.attributes).where(table.c.id.in_(wanted))
            ).all():
                profiles[cid] = stored
        known = [c for c in part if c not in partial] if partial else part
        if known:
            for (cid,) in connection.execute(sa_select(table.c.id).where(table.c.id.in_(known))):
                profiles[cid] = {}
    new: dict[str, Mapping[str, Any]] = {}
    for cid, given in zip(customer_ids, attributes, strict=True):
        if cid not in profiles and cid not in new:
            new[cid] = given
    if new:
        now = utcnow()
        insert_columns(
            session,
            _customer_insert(session.get_bind().dialect.name),
            {
                "id": list(new),
                "name": [None] * len(new),
                "attributes": list(new.values()),
                "created_at": [now] * len(new),
                "updated_at": [now] * len(new),
            },
        )
        profiles.update(new)
    if not partial:
        return list(attributes)
    return [
        {**profiles[cid], **given} if cid in partial else given
        for cid, given in zip(customer_ids, attributes, strict=True)
    ]


def _exposures(
    session: Session, customer_ids: Sequence[str], experience_keys: Sequence[str]
) -> list[int]:
    """Earlier exposures of each triple's customer to its experience, counted atomically."""
    pairs = list(zip(customer_ids, experience_keys, strict=True))
    counts = Counter(pairs)
    # Sorting the pairs (not the items): tuples of strings take the sort's fast comparisons.
    after = add_exposures(session, [(pair, counts[pair]) for pair in sorted(counts)])
    running = {pair: after[pair] - k for pair, k in counts.items()}
    earlier = []
    for pair in pairs:
        n = running[pair]
        earlier.append(n)
        running[pair] = n + 1
    return earlier


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parse_batch(
    catalog: Catalog, raws: Sequence[Any], *, now: dt.datetime, max_errors: int = 100
) -> list[Triple]:
    """Validate every row; if any is bad, raise one error listing each bad row and its field."""
    triples: list[Triple] = []
    errors: list[dict[str, Any]] = []
    bad = 0
    for i, raw in enumerate(raws):
        try:
            if not isinstance(raw, Mapping):
                raise InvalidInput("each event must be an object", field=None)
            triples.append(parse_event(catalog, raw, now=now))
        except InvalidInput as error:
            bad += 1
            if len(errors) < max_errors:
                field = f"events.{i}.{error.field}" if error.field else f"events.{i}"
                errors.append({"row": i, "field": field, "message": error.message})
    if errors:
        first = errors[0]
        raise InvalidInput(
            f"{bad} of {len(raws)} events are invalid and nothing was stored; "
            f"first: row {first['row']}: {first['message']}",
            field=first["field"],
            details=errors,
        )
    return triples
