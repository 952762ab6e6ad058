"""CSV import and export of triples and customers, streaming in constant memory.

An import reads the file twice. The first pass validates every row and hashes the file; a bad row
stops the import before anything is written (naming the line and the field), unless ``skip_bad``
sends rejected rows to a side file with the reason. The second pass stores the good rows, one
transaction per batch, and records in ``import_runs`` how many rows are committed, so that running
the same file again after a crash resumes where it stopped and never stores a row twice.

Events CSV columns: customer_id, experience, result, occurred_at, and optionally value, cost,
idempotency_key; every other column is a customer attribute (empty cell: missing).
Customers CSV columns: customer_id, optionally name; every other column is an attribute.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import marshal
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Literal, TextIO

from sqlalchemy import Engine, Table
from sqlmodel import Session, col, select

from engine.attributes import BOOLEAN_TEXT, AttributeSpec
from engine.catalog import Catalog, load_catalog
from engine.customers import clean_attributes
from engine.db import dialect_insert, keyset_pages
from engine.errors import InvalidInput
from engine.models import Customer, ImportRun, Outcome, utcnow
from engine.runtime import few_collections
from engine.triples import (
    FUTURE_TOLERANCE,
    parse_event,
    spooled_triple,
    store_rows,
)

ImportKind = Literal["events", "customers"]
EVENT_COLUMNS = (
    "customer_id",
    "experience",
    "result",
    "occurred_at",
    "value",
    "cost",
    "idempotency_key",
)
CUSTOMER_COLUMNS = ("customer_id", "name")
REQUIRED = {
    "events": ("customer_id", "experience", "result", "occurred_at"),
    "customers": ("customer_id",),
}


class ImportFailed(InvalidInput):
    """A row (or the header) of the file is invalid; ``line`` is 1-based, the header is line 1."""

    def __init__(self, message: str, *, line: int, field: str | None) -> None:
        super().__init__(f"line {line}: {message}", field=field)
        self.line = line


@dataclass
class ImportSummary:
    kind: ImportKind
    path: str
    rows_read: int = 0
    rows_stored: int = 0
    rows_rejected: int = 0
    rows_resumed: int = 0
    already_imported: bool = False
    rejected_path: str | None = None
    seconds: float = 0.0
    batches: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "errors"}


Progress = Callable[[int], object]


def _lines(handle: TextIO, progress: Progress | None) -> Iterator[str]:
    for line in handle:
        if progress is not None:
            progress(len(line))
        yield line


def _rows(path: Path, progress: Progress | None = None) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) pairs, the header first; line numbers count physical lines."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(_lines(handle, progress), strict=True)
        try:
            for cells in reader:
                yield reader.line_num, cells
        except csv.Error as error:
            raise ImportFailed(
                f"malformed CSV: {error}", line=reader.line_num, field=None
            ) from None


def _as_dict(header: Sequence[str], cells: Sequence[str]) -> dict[Any, Any]:
    """The row as csv.DictReader gives it: extra cells under None, missing ones as None."""
    row: dict[Any, Any] = dict(zip(header, cells, strict=False))
    if len(cells) > len(header):
        row[None] = list(cells[len(header) :])
    for name in header[len(cells) :]:
        row[name] = None
    return row


def _check_header(kind: ImportKind, header: Sequence[str], catalog: Catalog) -> None:
    fixed = EVENT_COLUMNS if kind == "events" else CUSTOMER_COLUMNS
    missing = [c for c in REQUIRED[kind] if c not in header]
    if missing:
        raise ImportFailed(
            f"missing column {missing[0]!r}; required: {', '.join(REQUIRED[kind])}",
            line=1,
            field=missing[0],
        )
    for name in header:
        if name not in fixed and name not in catalog.specs:
            raise ImportFailed(
                f"column {name!r} is neither a field ({', '.join(fixed)}) nor a declared "
                f"attribute ({', '.join(sorted(catalog.specs)) or 'none declared'})",
                line=1,
                field=name,
            )
    repeated = sorted({n for n in header if list(header).count(n) > 1})
    if repeated:
        raise ImportFailed(f"column {repeated[0]!r} appears twice", line=1, field=repeated[0])


def _parse_row(kind: ImportKind, catalog: Catalog, row: dict[str, Any], now: dt.datetime) -> Any:
    if None in row:
        raise InvalidInput("the row has more cells than the header", field=None)
    if any(v is None for v in row.values()):
        raise InvalidInput("the row has fewer cells than the header", field=None)
    fixed = EVENT_COLUMNS if kind == "events" else CUSTOMER_COLUMNS
    attributes = {k: v for k, v in row.items() if k not in fixed and v != ""}
    if kind == "events":
        raw = {k: row[k] for k in EVENT_COLUMNS if row.get(k) not in (None, "")}
        raw["attributes"] = attributes
        return parse_event(catalog, raw, now=now)
    customer_id = row.get("customer_id") or ""
    if (
        not customer_id
        or len(customer_id) > 128
        or any(c.isspace() or c == "/" for c in customer_id)
    ):
        raise InvalidInput(
            "customer_id must be 1 to 128 characters without spaces or '/'", field="customer_id"
        )
    return (customer_id, row.get("name") or None, clean_attributes(catalog, attributes))


def _parse_customer_cells(
    catalog: Catalog, header: Sequence[str], now: dt.datetime, cells: list[str]
) -> Any:
    return _parse_row("customers", catalog, _as_dict(header, cells), now)


_SLOW = object()
"""What a fast converter returns for a cell it does not accept: parse_event then decides."""

_CUSTOMER_ID = re.compile(r"[^\s/]{1,128}")


class _EventParser:
    """Parses the cells of an events row into the spooled form of a Triple.

    Most rows of a large file are plainly valid, and a per-column converter checks them several
    times faster than building the row's dict and running parse_event. A row the fast path does
    not accept in full goes through parse_event, which accepts it or names the bad field, so
    both paths give the same answers.
    """

    def __init__(self, catalog: Catalog, header: Sequence[str], now: dt.datetime) -> None:
        self._catalog = catalog
        self._header = list(header)
        self._now = now
        self._latest = now + FUTURE_TOLERANCE
        where = {name: i for i, name in enumerate(header)}
        # A field the header lacks reads the empty cell appended after the row's cells.
        self._fields = itemgetter(*(where.get(name, len(header)) for name in EVENT_COLUMNS))
        self._experiences = frozenset(catalog.experiences)
        self._results = frozenset(catalog.scale.labels if catalog.scale else ())
        self._attributes = tuple(
            (i, name, _converter(catalog.specs[name]))
            for i, name in enumerate(header)
            if name not in EVENT_COLUMNS
        )
        # The cells of the attributes, then the appended empty cell twice: always a tuple.
        indices = [i for i, _, _ in self._attributes]
        self._attribute_cells = itemgetter(*indices, len(header), len(header))
        self._seen: dict[tuple[str, ...], dict[str, Any]] = {}

    def __call__(self, cells: list[str]) -> tuple[Any, ...]:
        if len(cells) == len(self._header):
            cells.append("")  # what the fields the header lacks read (self._fields)
            fast = self._fast(cells)
            cells.pop()
            if fast is not None:
                return fast
        triple = _parse_row("events", self._catalog, _as_dict(self._header, cells), self._now)
        return spooled_triple(triple)

    def _fast(self, cells: list[str]) -> tuple[Any, ...] | None:
        customer_id, experience, result, occurred, value, cost, key = self._fields(cells)
        if (
            _CUSTOMER_ID.fullmatch(customer_id) is None
            or experience not in self._experiences
            or result not in self._results
            or len(key) > 200
        ):
            return None
        moment = _fast_time(occurred)
        money = _fast_money(value), _fast_money(cost)
        if moment is None or moment > self._latest or _SLOW in money:
            return None
        attributes = self._converted(cells)
        if attributes is None:
            return None
        # A TripleRow: request_hash is left to store_rows, which computes it for keyed rows.
        when = moment.replace(tzinfo=None).isoformat(" ", "microseconds")  # triples.time_text
        fields = (customer_id, experience, result, when, *money, attributes, key or None)
        return (*fields, None, "event", None, None)

    def _converted(self, cells: list[str]) -> dict[str, Any] | None:
        """The row's attributes (None: a cell for parse_event to judge). A customer's rows carry
        the same cells: they share one dict, which the spool then writes once per batch."""
        raw = self._attribute_cells(cells)
        found = self._seen.get(raw)
        if found is not None:
            return found
        attributes: dict[str, Any] = {}
        for (_, name, convert), text in zip(self._attributes, raw, strict=False):
            if text:
                clean = convert(text)
                if clean is _SLOW:
                    return None
                attributes[name] = clean
        if len(self._seen) >= SHARED_ATTRIBUTES:
            self._seen.clear()
        self._seen[raw] = attributes
        return attributes


SHARED_ATTRIBUTES = 100_000
"""Distinct attribute rows an import remembers (to share their dicts) before starting over."""


def _fast_time(text: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _fast_money(text: str) -> Any:
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return _SLOW
    return number if -1e12 <= number <= 1e12 else _SLOW


def _converter(spec: AttributeSpec) -> Callable[[str], Any]:
    """CSV text -> stored JSON value for the values coerce_value plainly accepts; else _SLOW."""
    if spec.type == "categorical":
        levels = frozenset(spec.levels)
        return lambda text: text if text in levels else _SLOW
    if spec.type == "boolean":
        return lambda text: BOOLEAN_TEXT.get(text, _SLOW)
    if spec.type == "numeric":
        return _fast_number
    return _fast_date


def _fast_number(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return _SLOW
    return number if math.isfinite(number) else _SLOW


def _fast_date(text: str) -> Any:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        return _SLOW


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


BATCH_SIZE = 20_000
"""Rows per transaction. Each commit writes every page its batch touched to the write-ahead log,
and a batch touches pages of the cell and exposure tables all over: fewer, larger batches write
them fewer times (100k rows on SQLite: 5,000-row batches took about 30% more CPU time). A batch
holds SQLite's write lock for about a second."""


def import_csv(
    *,
    engine: Engine,
    path: Path,
    kind: ImportKind,
    batch_size: int = BATCH_SIZE,
    skip_bad: bool = False,
    progress: Callable[[str, int], Progress] | None = None,
) -> ImportSummary:
    """Import ``path`` (see the module docstring); ``progress(phase, bytes)`` makes a callback."""
    # An import allocates millions of short-lived tuples and dicts, none in reference cycles,
    # while the parser's and the catalog's memos keep hundreds of thousands of objects alive:
    # every default collection would walk those again (a fifth of a 100k-row import's CPU).
    with few_collections(young=50_000, oldest=100):
        return _import_csv(
            engine=engine,
            path=path,
            kind=kind,
            batch_size=batch_size,
            skip_bad=skip_bad,
            progress=progress,
        )


def _import_csv(
    *,
    engine: Engine,
    path: Path,
    kind: ImportKind,
    batch_size: int,
    skip_bad: bool,
    progress: Callable[[str, int], Progress] | None,
) -> ImportSummary:
    started = dt.datetime.now(dt.UTC)
    summary = ImportSummary(kind=kind, path=str(path))
    size = os.path.getsize(path)
    with Session(engine, expire_on_commit=False) as session:
        catalog = load_catalog(session)
        session.commit()
    sha = file_sha256(path)
    with Session(engine) as session:
        run = session.exec(
            select(ImportRun).where(col(ImportRun.kind) == kind, col(ImportRun.sha256) == sha)
        ).first()
        if run is not None and run.finished:
            summary.already_imported = True
            summary.rows_stored = 0
            summary.rows_resumed = run.rows_committed
            return summary
        resume_after = run.rows_committed if run is not None else 0

    rejected_path = Path(f"{path}.rejected.csv")
    with tempfile.TemporaryFile(prefix="nextbest-import-") as spool:
        bad_lines = _validate(
            kind,
            catalog,
            path,
            summary,
            skip_bad,
            rejected_path,
            progress("validate", size) if progress else None,
            spool=spool,
            batch_size=batch_size,
        )
        summary.rejected_path = str(rejected_path) if bad_lines else None
        good = summary.rows_read - len(bad_lines)
        tick = progress("import", good) if progress else None
        spool.seek(0)
        good_seen = 0
        for chunk in _spooled(spool):
            start = good_seen
            good_seen += len(chunk)
            batch = chunk[max(resume_after - start, 0) :]
            if batch:
                _store_batch(engine, kind, catalog, batch, sha, path, good_seen)
                summary.batches += 1
            if tick is not None:
                tick(len(chunk))
    with Session(engine) as session:
        run = _run(session, kind, sha, path)
        run.finished, run.finished_at = True, utcnow()
        run.rows_rejected = len(bad_lines)
        session.add(run)
        session.commit()
    summary.rows_resumed = min(resume_after, good_seen)
    summary.rows_stored = good_seen - summary.rows_resumed
    summary.seconds = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 3)
    return summary


def _spooled(spool: BinaryIO) -> Iterator[list[Any]]:
    """The validated batches back from the spool: TripleRows for events, tuples for customers."""
    while header := spool.read(8):
        yield marshal.loads(spool.read(int.from_bytes(header, "little")))


def _spool(spool: BinaryIO, rows: list[Any]) -> None:
    """Append a batch to the spool, its length first (marshal.load reading a file object asks
    it for every value separately: several times slower than loads of the batch's bytes)."""
    data = marshal.dumps(rows)
    spool.write(len(data).to_bytes(8, "little"))
    spool.write(data)


def _validate(
    kind: ImportKind,
    catalog: Catalog,
    path: Path,
    summary: ImportSummary,
    skip_bad: bool,
    rejected_path: Path,
    tick: Progress | None,
    *,
    spool: BinaryIO,
    batch_size: int,
) -> set[int]:
    """First pass: every row parses, or (``skip_bad``) the bad ones go to the side file.

    The parsed rows go to ``spool`` (a private temporary file) in batches, so the second pass
    stores them without parsing the CSV again, in constant memory.
    """
    now = utcnow()
    bad: set[int] = set()
    parsed: list[Any] = []
    side: Any = None
    writer: Any = None
    try:
        rows = _rows(path, tick)
        header: list[str] = []
        for line, cells in rows:
            if line == 1 and not header:
                header = cells
                _check_header(kind, header, catalog)
                parse = (
                    _EventParser(catalog, header, now)
                    if kind == "events"
                    else partial(_parse_customer_cells, catalog, header, now)
                )
                continue
            summary.rows_read += 1
            try:
                parsed.append(parse(cells))
                if len(parsed) >= batch_size:
                    _spool(spool, parsed)
                    parsed = []
            except ImportFailed:
                raise
            except InvalidInput as error:
                where = f" (column {error.field})" if error.field else ""
                if not skip_bad:
                    raise ImportFailed(
                        f"{error.message}{where}; nothing was imported",
                        line=line,
                        field=error.field,
                    ) from None
                if writer is None:
                    side = rejected_path.open("w", newline="", encoding="utf-8")
                    writer = csv.writer(side)
                    writer.writerow(["line", "field", "reason", *header])
                writer.writerow([line, error.field or "", error.message, *cells])
                bad.add(line)
        if parsed:
            _spool(spool, parsed)
        if not header:
            _check_header(kind, [], catalog)
    finally:
        if side is not None:
            side.close()
    summary.rows_rejected = len(bad)
    return bad


def _run(session: Session, kind: str, sha: str, path: Path) -> ImportRun:
    run = session.exec(
        select(ImportRun).where(col(ImportRun.kind) == kind, col(ImportRun.sha256) == sha)
    ).first()
    return run or ImportRun(kind=kind, sha256=sha, filename=str(path)[:500])


def _store_batch(
    engine: Engine,
    kind: ImportKind,
    catalog: Catalog,
    batch: list[Any],
    sha: str,
    path: Path,
    committed: int,
) -> None:
    """One transaction: the rows and the import's progress commit together or not at all."""
    with Session(engine, expire_on_commit=False) as session:
        if kind == "events":
            store_rows(session, catalog=catalog, rows=batch)
        elif batch:
            _upsert_customers(session, batch)
        run = _run(session, kind, sha, path)
        run.rows_committed = committed
        session.add(run)
        session.commit()


def _upsert_customers(
    session: Session, batch: list[tuple[str, str | None, dict[str, Any]]]
) -> None:
    table: Table = Customer.__table__  # type: ignore[attr-defined]
    now = utcnow()
    latest = {cid: (name, attrs) for cid, name, attrs in batch}  # a later row wins
    statement = dialect_insert(session)(table)
    statement = statement.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "attributes": statement.excluded.attributes,
            "name": statement.excluded.name,
            "updated_at": statement.excluded.updated_at,
        },
    )
    session.execute(
        statement,
        [
            {"id": cid, "name": name, "attributes": attrs, "created_at": now, "updated_at": now}
            for cid, (name, attrs) in sorted(latest.items())
        ],
    )


def export_events(*, engine: Engine, out: TextIO, chunk: int = 5000) -> int:
    """Write every stored result as an events CSV that ``import_csv`` reads back. Returns rows."""
    with Session(engine) as session:
        catalog = load_catalog(session)
        names = sorted(catalog.specs)
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*EVENT_COLUMNS, *names])
        written = 0
        for rows in keyset_pages(session, Outcome, "id", chunk):
            for row in rows:
                occurred = (
                    row.occurred_at
                    if row.occurred_at.tzinfo
                    else row.occurred_at.replace(tzinfo=dt.UTC)
                )
                writer.writerow(
                    [
                        row.customer_id,
                        row.experience_key,
                        row.result,
                        occurred.isoformat().replace("+00:00", "Z"),
                        "" if row.value is None else repr(row.value),
                        "" if row.cost is None else repr(row.cost),
                        row.idempotency_key or "",
                        *(_cell(row.attributes.get(n)) for n in names),
                    ]
                )
            written += len(rows)
    return written


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


__all__ = ["ImportFailed", "ImportSummary", "export_events", "import_csv"]
