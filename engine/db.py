"""The database: engine creation (SQLite pragmas, PostgreSQL pool), sessions and migrations.

engine/ owns the session; every other package receives one. SQLite runs in WAL mode with foreign
keys on and a busy timeout so that a CLI import and the server can share one file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, Connection, Engine, Insert, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, col, select

from engine.models import DateTime as _AwareDateTime

MIGRATIONS = Path(__file__).with_name("migrations")
log = logging.getLogger("nextbest.db")


def make_engine(url: str, *, pool_size: int | None = None) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a 30 s busy timeout.

    pool_size: a fixed pool of that many connections (no overflow, 10 s wait), instead of the
    default 20 + 20 (SQLite) or 10 + 20 (PostgreSQL)."""
    fixed = {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": 10} if pool_size else None
    if url.startswith("sqlite"):
        in_memory = url in ("sqlite://", "sqlite:///:memory:")
        pool: dict[str, Any] = (
            {"poolclass": StaticPool}
            if in_memory
            else fixed or {"pool_size": 20, "max_overflow": 20}
        )
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **pool,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; we issue BEGIN IMMEDIATE ourselves so
        # that a writer takes the lock up front instead of failing on upgrade (SQLITE_BUSY).
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(url, **(fixed or {"pool_size": 10, "max_overflow": 20}))
    event.listen(engine, "checkin", _checked_in)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for another one's write lock before failing as busy."""

PING_AFTER_IDLE_SECONDS = 1.0
"""A pooled PostgreSQL connection idle for longer is pinged before use (a stale one is replaced)."""


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pre-ping, but only for connections that sat in the pool: one that was in use a moment ago
    is alive, and a ping is a round trip (two per decision at a thousand decisions per second).
    Raising DisconnectionError makes the pool replace the connection and try again."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
        return
    try:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute("SELECT 1")
        dbapi_connection.autocommit = autocommit
    except Exception as error:
        raise DisconnectionError(str(error)) from error


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(
        "PRAGMA cache_size=-65536"
    )  # 64 MiB: index inserts of large imports stay in memory
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    options = connection.get_execution_options()
    if options.get(READ_ONLY):
        return
    connection.exec_driver_sql("BEGIN" if options.get(SNAPSHOT) else "BEGIN IMMEDIATE")


READ_ONLY = "nextbest_read_only"
"""Execution option of ``read_connection``: on SQLite, no BEGIN (each statement reads the latest
committed data, without the write lock)."""

SNAPSHOT = "nextbest_snapshot"
"""Execution option of ``read_session``: on SQLite, a deferred BEGIN (the statements see one
snapshot, and the write lock is taken only if the transaction writes)."""


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for requests and reloads that read: one transaction, so its statements see one
    consistent state, but on SQLite it does not take the write lock up front (sessions that may
    write begin IMMEDIATE, so they queue behind the writers; a read must not). It is rolled back
    at the end. On PostgreSQL it is an ordinary session."""
    with engine.connect() as connection:
        if is_sqlite(engine):
            connection = connection.execution_options(**{SNAPSHOT: True})
        with Session(bind=connection, expire_on_commit=False) as session:
            yield session


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that need no transaction around them.

    Each statement runs on its own and sees the latest committed data. On SQLite this takes no
    write lock (transactions here begin IMMEDIATE), so reads never queue behind writers; on
    PostgreSQL it saves the BEGIN and ROLLBACK round trips.
    """
    with engine.connect() as connection:
        if is_sqlite(engine):
            yield connection.execution_options(**{READ_ONLY: True})
        else:
            yield connection.execution_options(isolation_level="AUTOCOMMIT")


def dialect_insert(session: Session) -> Any:
    """The INSERT construct with ON CONFLICT support for the session's database."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def execute_many(session: Session, statement: Insert, rows: list[dict[str, Any]]) -> None:
    """Run an INSERT (or upsert) for many rows whose keys are the table's column names."""
    if rows:
        names = list(rows[0])
        insert_columns(session, statement, {name: [row[name] for row in rows] for name in names})


def insert_columns(
    session: Session, statement: Insert, columns: Mapping[str, Sequence[Any]]
) -> None:
    """Run an INSERT (or upsert) for rows given column by column: ``columns`` maps the table's
    column names to their values, all of the same length. Timestamps are aware datetimes, naive
    ones meaning UTC, or the text SQLite stores for them (``2026-10-01 08:30:00.000000``, UTC).

    On SQLite, SQLAlchemy's per-row parameter handling costs more than the insert itself on large
    batches, so the statement is compiled once (and kept: build statements once and pass the same
    object) and run by the DBAPI cursor's executemany. Each value is stored as its column type
    stores it: timestamps and JSON as ``_sqlite_column`` encodes them (tests/engine/test_db.py
    holds that equal to SQLAlchemy's binding), other types through their bind processor.
    """
    names = list(columns)
    size = len(columns[names[0]]) if names else 0
    if not size:
        return
    dialect = session.get_bind().dialect
    table = statement.table
    if dialect.name != "sqlite":
        for name in names:
            if isinstance(table.c[name].type, _AwareDateTime):
                columns = {**columns, name: [_aware(v) for v in columns[name]]}
        rows = zip(*columns.values(), strict=True)
        session.execute(statement, [dict(zip(names, row, strict=True)) for row in rows])
        return
    sql, order = _compiled(statement, dialect, tuple(names))
    encoded = [_sqlite_column(table.c[name].type, dialect, columns[name]) for name in order]
    session.connection().exec_driver_sql(sql, list(zip(*encoded, strict=True)))


_COMPILED: dict[tuple[int, str, tuple[str, ...]], tuple[Insert, str, list[str]]] = {}


def _compiled(statement: Insert, dialect: Any, names: tuple[str, ...]) -> tuple[str, list[str]]:
    """The SQL text of ``statement`` for ``names`` and its parameters in order, compiled once per
    statement object (compiling costs milliseconds: as much as storing one outcome)."""
    key = (id(statement), dialect.name, names)
    found = _COMPILED.get(key)
    if found is None or found[0] is not statement:
        if len(_COMPILED) >= 256:
            _COMPILED.clear()
        compiled = statement.compile(dialect=dialect, column_keys=list(names))
        found = (statement, str(compiled), list(compiled.positiontup or ()))
        _COMPILED[key] = found
    return found[1], found[2]


def _sqlite_column(column_type: Any, dialect: Any, values: Sequence[Any]) -> Sequence[Any]:
    """``values`` as SQLite stores them in a column of ``column_type``.

    Timestamps and JSON are encoded once per object: an import's rows share their attribute
    dicts, and every row of a batch its recorded_at; timestamps given as stored text stay.
    """
    first = values[0]
    if isinstance(column_type, _AwareDateTime):
        if isinstance(first, str) and all(type(value) is str for value in values):
            return values
        if values.count(first) == len(values):  # one moment for all
            return [_sqlite_time(first)] * len(values)
        return list(map(_Memo(_sqlite_time), values))
    if isinstance(column_type, JSON):
        return list(map(_Memo(json.dumps), values))
    bind = column_type.bind_processor(dialect)
    return values if bind is None else list(map(bind, values))


def _aware(value: Any) -> Any:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


def _sqlite_time(value: dt.datetime | str | None) -> str | None:
    """A timestamp as SQLAlchemy stores it on SQLite (``2026-10-01 08:30:00.000000``, UTC)."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


class _Memo:
    """``encode`` once per object. Keyed by id, so it lives only while the values do."""

    def __init__(self, encode: Callable[[Any], Any]) -> None:
        self._encode = encode
        self._done: dict[int, Any] = {}

    def __call__(self, value: Any) -> Any:
        found = self._done.get(id(value))
        if found is None:
            found = self._done[id(value)] = self._encode(value)
        return found


EXPOSURE_CHUNK = 1024
"""Most pairs per statement in add_exposures (3 parameters each, far under SQLite's 32,766)."""


def add_exposures(
    session: Session, additions: Sequence[tuple[tuple[str, str], int]]
) -> dict[tuple[str, str], int]:
    """Atomically add ``((customer_id, experience_key), n)`` to the exposure counts and return
    the counts after the additions.

    One multi-row ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` per chunk: the database
    answers the new counts itself, in one statement, on SQLite (3.35+) as on PostgreSQL. The
    pairs must be distinct; give them sorted so that concurrent writers lock rows in one order.
    Chunks come in power-of-two sizes, so that few statement texts exist: the drivers keep
    prepared statements by text, and one per batch size would grow their caches without end.
    """
    marker = "?" if session.get_bind().dialect.name == "sqlite" else "%s"
    connection = session.connection()
    after: dict[tuple[str, str], int] = {}
    start = 0
    while start < len(additions):
        size = min(EXPOSURE_CHUNK, 1 << ((len(additions) - start).bit_length() - 1))
        chunk = additions[start : start + size]
        start += size
        values = ", ".join([f"({marker}, {marker}, {marker})"] * len(chunk))
        sql = (
            f"INSERT INTO exposures (customer_id, experience_key, count) VALUES {values} "
            "ON CONFLICT (customer_id, experience_key) DO UPDATE "
            "SET count = exposures.count + excluded.count "
            "RETURNING customer_id, experience_key, count"
        )
        flat = tuple(chain.from_iterable((c, e, n) for (c, e), n in chunk))
        for cid, exp, count in connection.exec_driver_sql(sql, flat).fetchall():
            after[(cid, exp)] = count
    return after


Row = TypeVar("Row", bound=SQLModel)


def keyset_pages(session: Session, model: type[Row], key: str, chunk: int) -> Iterator[list[Row]]:
    """Every row of ``model`` in ``key`` order, ``chunk`` at a time, in constant memory: each page
    starts after the last key of the one before (keyset paging), and a page is expunged from the
    session once the caller asks for the next one."""
    column = col(getattr(model, key))
    last: Any = None
    while True:
        statement = select(model).order_by(column).limit(chunk)
        if last is not None:
            statement = statement.where(column > last)
        rows = list(session.exec(statement))
        if not rows:
            return
        yield rows
        last = getattr(rows[-1], key)
        session.expunge_all()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class WalCheckpointer:
    """Checkpoints an SQLite write-ahead log from a background thread, so no request pays for it.

    By default the connection whose commit takes the WAL past 1000 pages copies it back into the
    database file (with an fsync) inside that commit: one decision in every hundred or two took
    milliseconds longer. ``start`` turns that off for the engine's connections
    (``wal_autocheckpoint=0``) and checkpoints every ``interval`` seconds instead, PASSIVE, so
    that it never waits for nor blocks readers and writers. Other processes (an import) keep
    their own automatic checkpoints.
    """

    def __init__(self, engine: Engine, interval: float = 0.25) -> None:
        self.engine = engine
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Call before the engine's first connection: the setting applies to new connections."""
        event.listen(self.engine, "connect", _no_autocheckpoint)
        self._thread = threading.Thread(
            target=self._run, name="nextbest-wal-checkpoint", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        event.remove(self.engine, "connect", _no_autocheckpoint)

    def checkpoint(self) -> None:
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cursor.close()
        finally:
            connection.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.checkpoint()
            except Exception:  # busy or closing: the next round tries again
                log.warning("WAL checkpoint failed", exc_info=True)
        with contextlib.suppress(Exception):
            self.checkpoint()


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (start-up does this; it is idempotent)."""
    with engine.begin() as connection:
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
