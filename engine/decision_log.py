"""The decision log: a decision is committed before its answer goes out, and the decisions that one
worker makes at the same time share one transaction (group commit).

A transaction per decision costs a commit per decision: a WAL flush on PostgreSQL, and on SQLite
the database-wide write lock, which worker processes would otherwise pass back and forth (a writer
that finds it taken sleeps a millisecond or more). Here the first thread to log a decision writes
it at once; decisions logged while that transaction is open queue up, and the first of them then
writes the whole queue in one transaction. A caller returns only after the transaction holding its
decision has committed, so nothing is answered before it is stored. A batch that fails on a row
(an integrity error) is retried one decision per transaction, so that a bad row fails its own
request only; one that fails because the database is busy or unreachable fails as a whole.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Insert, Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from engine import prepared
from engine.models import Customer, Decision

DECISIONS: Table = Decision.__table__  # type: ignore[attr-defined]
CUSTOMERS: Table = Customer.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DecisionWrite:
    """What one decision stores: its row, and first its customer's row when the decision creates
    the customer or changes its attributes (inserted, or updated on conflict)."""

    decision: dict[str, Any]
    customer: dict[str, Any] | None = None


class _Ticket:
    __slots__ = ("done", "error", "lead", "write")

    def __init__(self, write: DecisionWrite) -> None:
        self.write = write
        self.done = threading.Event()
        self.lead = False
        self.error: BaseException | None = None


class DecisionLog:
    """Group commit of one worker's decisions (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._upsert = _customer_upsert(engine)
        self._insert_decision = prepared.Prepared.compile(
            insert(DECISIONS), engine, [c.name for c in DECISIONS.columns]
        )
        self._lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._writing = False
        self.transactions = 0
        self.decisions = 0

    def log(self, write: DecisionWrite) -> None:
        """Store ``write``; returns once committed, raises what storing it raised."""
        ticket = _Ticket(write)
        with self._lock:
            self._queue.append(ticket)
            lead = not self._writing
            self._writing = True
        if not lead:
            ticket.done.wait()
        if lead or ticket.lead:
            self._write_queue()
        if ticket.error is not None:
            raise ticket.error

    def _write_queue(self) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._write(batch)
        except BaseException as error:  # interrupted: no caller may take its row for stored
            for ticket in batch:
                ticket.error = ticket.error or error
            raise
        finally:
            with self._lock:
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._writing = False
                else:
                    successor.lead = True
            for ticket in batch:
                ticket.done.set()
            if successor is not None:
                successor.done.set()

    def _write(self, batch: Sequence[_Ticket]) -> None:
        try:
            self._insert([t.write for t in batch])
        except Exception as error:
            if len(batch) == 1 or isinstance(error, OperationalError):
                # The database is busy or gone: trying each row again would only wait again.
                for ticket in batch:
                    ticket.error = error
                return
            for ticket in batch:
                try:
                    self._insert([ticket.write])
                except Exception as single:
                    ticket.error = single

    def _insert(self, writes: Sequence[DecisionWrite]) -> None:
        # A later decision in the batch carries the newer attributes; ids in order so that
        # concurrent transactions lock customer rows in the same order.
        customers = {w.customer["id"]: w.customer for w in writes if w.customer is not None}
        with prepared.cursor(self.engine, write=True) as cursor:
            if customers:
                cursor.executemany(
                    self._upsert.sql,
                    [self._upsert.parameters(customers[i]) for i in sorted(customers)],
                )
            cursor.executemany(
                self._insert_decision.sql,
                [self._insert_decision.parameters(w.decision) for w in writes],
            )
        self.transactions += 1
        self.decisions += len(writes)


def _customer_upsert(engine: Engine) -> prepared.Prepared:
    """INSERT a customer, or on conflict replace its attributes (SQLite and PostgreSQL)."""
    module: Any = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = module.insert(CUSTOMERS)
    upsert: Insert = statement.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "attributes": statement.excluded.attributes,
            "updated_at": statement.excluded.updated_at,
        },
    )
    return prepared.Prepared.compile(upsert, engine, CUSTOMER_COLUMNS)


CUSTOMER_COLUMNS = ("id", "name", "attributes", "created_at", "updated_at")


__all__ = ["DecisionLog", "DecisionWrite"]
