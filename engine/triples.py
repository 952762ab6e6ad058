"""Triple logging: validate customer-experience-result triples and store them with their statistics.

One code path serves ``POST /v1/events``, ``POST /v1/events:batch``, the CSV import and the
outcomes of decisions: customers are created or read, exposure counts are taken by atomic
increments, the results are inserted and the cell statistics are incremented, all in the caller's
transaction, so a batch is stored whole or not at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Table
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, insert, select

from engine import metrics, stats
from engine.catalog import Catalog, current_catalog
from engine.customers import clean_attributes
from engine.db import add_exposures, dialect_insert, execute_many
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


def spooled_triple(triple: Triple) -> tuple[Any, ...]:
    """The triple as an import's spool holds it: its fields in order, ``occurred_at`` as naive
    UTC. Plain tuples with naive times unpickle several times faster than the objects or aware
    times; ``unspooled_triple`` rebuilds the triple."""
    fields = [getattr(triple, name) for name in Triple.__dataclass_fields__]
    fields[3] = triple.occurred_at.replace(tzinfo=None)
    return tuple(fields)


def unspooled_triple(fields: tuple[Any, ...]) -> Triple:
    return Triple(fields[0], fields[1], fields[2], fields[3].replace(tzinfo=dt.UTC), *fields[4:])


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
    if not triples:
        return []
    catalog = current_catalog(session, catalog)
    triples = [
        replace(t, request_hash=request_hash(t))
        if t.idempotency_key is not None and t.request_hash is None
        else t
        for t in triples
    ]
    replayed = _replayed(session, triples)
    fresh = [t for t in triples if t.idempotency_key not in replayed]
    fresh = _dedupe_keys(fresh)
    snapshots = _customers(session, catalog, fresh) if fresh else []
    exposures = _exposures(session, fresh) if fresh else []
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "decision_id": t.decision_id,
            "customer_id": t.customer_id,
            "experience_key": t.experience_key,
            "result": t.result,
            "value": t.value,
            "cost": t.cost,
            "occurred_at": t.occurred_at,
            "recorded_at": now,
            "attributes": snapshots[i],
            "exposure": exposures[i],
            "source": t.source,
            "idempotency_key": t.idempotency_key,
            "request_hash": t.request_hash,
            "held_for": t.held_for,
        }
        for i, t in enumerate(fresh)
    ]
    stored: list[StoredTriple] = []
    if rows:
        if report:
            ids = _insert_outcomes(session, rows)
            stored = [
                StoredTriple(id=i, **{k: row[k] for k in _STORED_FIELDS})
                for i, row in zip(ids, rows, strict=True)
            ]
        else:
            execute_many(session, insert(Outcome.__table__), rows)  # type: ignore[attr-defined]
        facts = (
            stats.TripleFacts(
                segment=catalog.finest_segment(row["attributes"]),
                experience_key=row["experience_key"],
                exposure=row["exposure"],
                level=row["result"],
                occurred_at=row["occurred_at"],
                value=row["value"],
                cost=row["cost"],
            )
            for row in rows
            if row["held_for"] is None
        )
        stats.apply_increments(
            session,
            stats.increments(facts, epoch=catalog.epoch, half_life_days=catalog.half_life_days),
        )
        for source, n in Counter(row["source"] for row in rows).items():
            metrics.count_triples(source, n)
    if not report:
        return []
    results: list[StoredTriple] = []
    by_key = {key: StoredTriple.of(row, replayed=True) for key, row in replayed.items()}
    fresh_rows = iter(stored)
    for t in triples:
        if t.idempotency_key is not None and t.idempotency_key in by_key:
            results.append(by_key[t.idempotency_key])
            continue
        row = next(fresh_rows)
        results.append(row)
        if t.idempotency_key is not None:
            by_key[t.idempotency_key] = row
    return results


def _insert_outcomes(session: Session, rows: list[dict[str, Any]]) -> Sequence[int]:
    """Insert result rows and return their ids in row order.

    PostgreSQL batches INSERT ... RETURNING. SQLite would run RETURNING one row at a time, so it
    inserts with executemany and reads the new ids back: the transaction holds the database's
    write lock from BEGIN IMMEDIATE (engine.db), so the ids after the previous maximum are ours.
    """
    table: Table = Outcome.__table__  # type: ignore[attr-defined]
    if session.get_bind().dialect.name == "postgresql":
        returning = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        return session.execute(returning, rows).scalars().all()
    before = session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    execute_many(session, insert(table), rows)
    ids = session.execute(select(table.c.id).where(table.c.id > before).order_by(table.c.id))
    found = ids.scalars().all()
    if len(found) != len(rows):
        raise RuntimeError("SQLite ids were not assigned in one block; is BEGIN IMMEDIATE off?")
    return found


_STORED_FIELDS = tuple(f for f in StoredTriple.__dataclass_fields__ if f not in ("id", "replayed"))


def _replayed(session: Session, triples: Sequence[Triple]) -> dict[str, Outcome]:
    keys = [t.idempotency_key for t in triples if t.idempotency_key]
    if not keys:
        return {}
    existing: dict[str, Outcome] = {}
    for part in _chunks(keys):
        for row in session.exec(select(Outcome).where(col(Outcome.idempotency_key).in_(part))):
            assert row.idempotency_key is not None
            existing[row.idempotency_key] = row
    for t in triples:
        found = existing.get(t.idempotency_key or "")
        if found is not None and found.request_hash != t.request_hash:
            raise Conflict(
                f"idempotency_key {t.idempotency_key!r} was used before with a different body",
                field="idempotency_key",
            )
    return existing


def _dedupe_keys(triples: list[Triple]) -> list[Triple]:
    seen: dict[str, str | None] = {}
    out = []
    for t in triples:
        if t.idempotency_key is None:
            out.append(t)
            continue
        if t.idempotency_key in seen:
            if seen[t.idempotency_key] != t.request_hash:
                raise Conflict(
                    f"idempotency_key {t.idempotency_key!r} repeats with a different body",
                    field="idempotency_key",
                )
            continue
        seen[t.idempotency_key] = t.request_hash
        out.append(t)
    return out


def _customers(
    session: Session, catalog: Catalog, triples: Sequence[Triple]
) -> list[Mapping[str, Any]]:
    """Attribute snapshots: the stored profile with the triple's attributes over it.

    Unknown customers are created with the attributes of their first triple.
    """
    ids = list(dict.fromkeys(t.customer_id for t in triples))
    # A triple that carries every declared attribute is its own snapshot: for its customer only
    # existence matters, and reading ids skips decoding the stored profile.
    declared = len(catalog.specs)
    partial = {t.customer_id for t in triples if len(t.attributes) < declared}
    profiles: dict[str, dict[str, Any]] = {}
    table: Table = Customer.__table__  # type: ignore[attr-defined]
    connection = session.connection()  # Core rows: the ORM's result loading costs more here
    for part in _chunks(ids):
        for cid, attributes in connection.execute(
            sa_select(table.c.id, table.c.attributes).where(
                table.c.id.in_([c for c in part if c in partial])
            )
        ).all():
            profiles[cid] = attributes
        for cid in (
            connection.execute(
                sa_select(table.c.id).where(table.c.id.in_([c for c in part if c not in partial]))
            )
            .scalars()
            .all()
        ):
            profiles[cid] = {}
    new: dict[str, dict[str, Any]] = {}
    for t in triples:
        if t.customer_id not in profiles and t.customer_id not in new:
            new[t.customer_id] = dict(t.attributes)
    if new:
        now = utcnow()
        execute_many(
            session,
            dialect_insert(session)(table).on_conflict_do_nothing(index_elements=["id"]),
            [
                {"id": cid, "name": None, "attributes": attrs, "created_at": now, "updated_at": now}
                for cid, attrs in new.items()
            ],
        )
        profiles.update(new)
    return [
        {**profiles[t.customer_id], **t.attributes} if t.customer_id in partial else t.attributes
        for t in triples
    ]


def _exposures(session: Session, triples: Sequence[Triple]) -> list[int]:
    """Earlier exposures of each triple's customer to its experience, counted atomically."""
    pairs = Counter((t.customer_id, t.experience_key) for t in triples)
    after = add_exposures(session, sorted(pairs.items()))
    running = {pair: after[pair] - k for pair, k in pairs.items()}
    earlier = []
    for t in triples:
        pair = (t.customer_id, t.experience_key)
        earlier.append(running[pair])
        running[pair] += 1
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
