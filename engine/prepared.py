"""Statements compiled once and run on a pooled DBAPI cursor: the hot path of a decision.

SQLAlchemy's Connection spends about 0.1 ms of Python per statement (events, the compiled cache,
parameter and result processing); a decision runs two statements, which made them a third of its
cost. ``Prepared`` keeps what SQLAlchemy compiled for the engine's dialect (the SQL, the parameter
order, the bind processors of the parameters' types and the result processors of the selected
columns), so values are stored and read exactly as through SQLAlchemy. ``cursor`` hands out a
DBAPI cursor from the engine's pool with the transaction semantics the caller asks for, and turns
driver errors into SQLAlchemy's (IntegrityError, OperationalError, ...) so that callers and the
API's error mapping see the usual exceptions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement, Select
from sqlalchemy.sql.compiler import SQLCompiler

from engine.db import SQLITE_BUSY_TIMEOUT_MS

Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class Prepared:
    """One statement as compiled for one dialect."""

    sql: str
    names: tuple[str, ...]
    """Parameter names, in placeholder order for positional paramstyles."""
    positional: bool
    defaults: Mapping[str, Any]
    """Values bound in the statement itself (literals such as ``id = 1``)."""
    binders: tuple[tuple[str, Processor], ...]
    columns: tuple[Any, ...]
    """Types of the selected columns (empty for statements that return no rows)."""
    dialect: Any
    _readers: dict[tuple[Any, ...], tuple[Processor | None, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def compile(
        cls, statement: ClauseElement, engine: Engine, column_keys: Sequence[str] | None = None
    ) -> Prepared:
        dialect = engine.dialect
        compiled = statement.compile(
            dialect=dialect, column_keys=list(column_keys) if column_keys else None
        )
        assert isinstance(compiled, SQLCompiler)
        binders = []
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                binders.append((name, processor))
        columns: tuple[Any, ...] = ()
        if isinstance(statement, Select):
            columns = tuple(c.type.dialect_impl(dialect) for c in statement.selected_columns)
        positional = bool(compiled.positional)
        names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
        return cls(
            sql=str(compiled),
            names=names,
            positional=positional,
            defaults={k: v for k, v in compiled.params.items() if v is not None},
            binders=tuple(binders),
            columns=columns,
            dialect=dialect,
        )

    @classmethod
    def of(cls, statement: ClauseElement, engine: Engine) -> Prepared:
        """``statement`` compiled for ``engine``'s dialect once per process (statements passed
        here are module-level constants, so the cache holds a few entries)."""
        key = (id(statement), engine.dialect.name)
        found = _COMPILED.get(key)
        if found is None:
            found = _COMPILED[key] = cls.compile(statement, engine)
        return found

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The DBAPI parameters for ``values`` (missing names take the statement's literals)."""
        merged = {**self.defaults, **values} if self.defaults else dict(values)
        for name, processor in self.binders:
            merged[name] = processor(merged.get(name))
        if self.positional:
            return tuple(merged.get(name) for name in self.names)
        return merged

    def fetch(self, cursor: Any) -> list[tuple[Any, ...]]:
        """The rows of the executed statement as SQLAlchemy would return them (result processors
        of the columns' types, chosen by the driver's type codes as SQLAlchemy does)."""
        rows = cursor.fetchall()
        codes = tuple(d[1] for d in cursor.description or ())
        readers = self._readers.get(codes)
        if readers is None:
            readers = self._readers[codes] = tuple(
                kind.result_processor(self.dialect, code)
                for kind, code in zip(self.columns, codes, strict=True)
            )
        if not any(readers):
            return [tuple(row) for row in rows]
        return [
            tuple(v if r is None else r(v) for v, r in zip(row, readers, strict=True))
            for row in rows
        ]


_COMPILED: dict[tuple[int, str], Prepared] = {}


@contextmanager
def cursor(engine: Engine, *, write: bool, wait: bool = True) -> Iterator[Any]:
    """A DBAPI cursor on a connection from ``engine``'s pool.

    write=False: every statement on its own, seeing the latest committed data (SQLite: no BEGIN,
    so no write lock; PostgreSQL: autocommit, no BEGIN/ROLLBACK round trips). write=True: one
    transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: in pipeline mode, so results are not
    available before the block ends), committed when the block ends, rolled back on error.
    A connection that failed with a disconnect is invalidated instead of going back to the pool.
    wait=False (SQLite writes): raise LockTaken at once, having done nothing, when another
    connection holds the database's write lock, instead of waiting for it.
    """
    sqlite = engine.dialect.name == "sqlite"
    connection = engine.raw_connection()
    driver: Any = connection.driver_connection
    current = None
    try:
        with ExitStack() as stack:
            if not sqlite and not write:
                driver.autocommit = True
            if not sqlite and write:
                # Pipeline mode: BEGIN, the statements and COMMIT travel in one round trip.
                stack.enter_context(driver.pipeline())
            current = connection.cursor()
            if write and sqlite:
                _begin_immediate(current, wait=wait)
            yield current
            if write:
                if sqlite:
                    current.execute("COMMIT")
                else:
                    driver.commit()
    except engine.dialect.loaded_dbapi.Error as error:
        _rollback(connection, sqlite=sqlite, write=write)
        if engine.dialect.is_disconnect(error, driver, current):
            connection.invalidate(error)
        raise DBAPIError.instance(
            None, None, error, engine.dialect.loaded_dbapi.Error, dialect=engine.dialect
        ) from error
    except BaseException:
        _rollback(connection, sqlite=sqlite, write=write)
        raise
    finally:
        if current is not None:
            current.close()
        if not sqlite and not write and connection.is_valid:
            driver.autocommit = False
        connection.close()


Query = tuple[Prepared, Sequence[Any] | dict[str, Any]]
"""A prepared statement and its DBAPI parameters (Prepared.parameters)."""


def read_all(engine: Engine, queries: Sequence[Query]) -> list[list[tuple[Any, ...]]]:
    """The rows of each query, read outside any transaction as ``cursor(write=False)`` reads.

    PostgreSQL: all of them in one round trip (a pipeline with one sync, a cursor per query);
    SQLite: one after another on one cursor (a local file has no round trip to save)."""
    with cursor(engine, write=False) as first:
        if engine.dialect.name == "sqlite":
            out = []
            for statement, parameters in queries:
                first.execute(statement.sql, parameters)
                out.append(statement.fetch(first))
            return out
        driver = first.connection
        cursors = [first, *(driver.cursor() for _ in queries[1:])]
        try:
            with driver.pipeline():
                for current, (statement, parameters) in zip(cursors, queries, strict=True):
                    current.execute(statement.sql, parameters)
            return [
                statement.fetch(current)
                for current, (statement, _) in zip(cursors, queries, strict=True)
            ]
        finally:
            for extra in cursors[1:]:
                extra.close()


class LockTaken(Exception):
    """``cursor(write=True, wait=False)`` found SQLite's write lock taken by another connection."""


_SQLITE_BUSY = 5


def _begin_immediate(current: Any, *, wait: bool) -> None:
    """BEGIN IMMEDIATE (take the write lock now); without waiting for it when ``wait`` is False."""
    if wait:
        current.execute("BEGIN IMMEDIATE")
        return
    current.execute("PRAGMA busy_timeout=0")
    try:
        current.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode == _SQLITE_BUSY:
            raise LockTaken(str(error)) from None
        raise
    finally:
        current.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def _rollback(connection: Any, *, sqlite: bool, write: bool) -> None:
    if not write or not connection.is_valid:
        return
    if sqlite and not connection.driver_connection.in_transaction:
        return
    try:
        if sqlite:
            connection.driver_connection.execute("ROLLBACK")
        else:
            connection.driver_connection.rollback()
    except Exception:  # the connection is going away anyway; the first error is the one to raise
        connection.invalidate()


__all__ = ["LockTaken", "Prepared", "Query", "cursor", "read_all"]
